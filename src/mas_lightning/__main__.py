"""Entry point of ``python -m mas_lightning`` (and the ``mas-lightning`` script)."""

from __future__ import annotations

from mas_lightning.cli import main as _cli_main


def main() -> None:
    """Run the command line."""
    _cli_main()


if __name__ == "__main__":
    main()
