"""Command line: ``python -m mas_lightning <command> -c config.yaml --dotted.key=value``.

Each command is a typed function; jsonargparse turns its signature (types, defaults, docstring) into
options, YAML config files (``-c``/``--config``, repeatable, later wins), ``--print_config`` and
dependency injection of classes with ``class_path``/``init_args``. Bad input (unknown key, wrong type,
value rejected by a constructor) ends with one line naming the problem and exit code 2.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser

from mas_lightning.errors import ConfigError, RunError

# name -> "module:function"; imported when the parser is built so each command's signature is its CLI.
RESOLVED_CONFIG = "resolved_config"
"""A command parameter of this name is hidden from the CLI and receives the resolved config as YAML."""

COMMANDS: dict[str, str] = {
    "data": "mas_lightning.commands.preview:data",
    "check-data": "mas_lightning.commands.check_data:check_data",
    "fit": "mas_lightning.commands.fit:fit",
    "central": "mas_lightning.commands.central:central",
    "compare": "mas_lightning.commands.compare:compare",
}


def _load(target: str) -> Callable[..., Any]:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def build_parser(commands: dict[str, str] | None = None) -> ArgumentParser:
    """The parser with one subcommand per entry of ``commands`` (default: :data:`COMMANDS`)."""
    parser = ArgumentParser(prog="python -m mas_lightning", description=__doc__.splitlines()[0])
    subcommands = parser.add_subcommands(dest="command")
    for name, target in (commands or COMMANDS).items():
        function = _load(target)
        help_line = (function.__doc__ or name).strip().splitlines()[0]
        subcommands.add_subcommand(name, command_parser(function), help=help_line)
    return parser


def command_parser(function: Callable[..., Any]) -> ArgumentParser:
    """The parser of one command: ``-c/--config`` plus one option per parameter of ``function``."""
    sub = ArgumentParser(description=(function.__doc__ or "").strip().split("\n\n")[0])
    sub.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config file(s); later ones win.")
    sub.add_function_arguments(function, fail_untyped=True, skip={RESOLVED_CONFIG})
    return sub


def main(argv: Sequence[str] | None = None, commands: dict[str, str] | None = None) -> Any:
    """Parse ``argv``, build the configured objects and run the chosen command; returns its result."""
    commands = commands or COMMANDS
    parser = build_parser(commands)
    cfg = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    name = cfg.command
    try:
        init = parser.instantiate(cfg)
    except (ValueError, TypeError, FileNotFoundError) as error:
        # A constructor rejected a value: one clear line, no traceback, same exit code as a parse error.
        print(f"error: invalid configuration for '{name}': {error}", file=sys.stderr)
        raise SystemExit(2) from None
    kwargs = {k: v for k, v in vars(init[name]).items() if k != "config"}
    function = _load(commands[name])
    if RESOLVED_CONFIG in inspect.signature(function).parameters:
        # Commands that keep a record of their run receive the full resolved config as YAML.
        kwargs[RESOLVED_CONFIG] = command_parser(function).dump(cfg[name])
    try:
        return function(**kwargs)
    except ConfigError as error:
        # Checks that need several values together (tasks vs data, split round vs rounds) fail here.
        print(f"error: invalid configuration for '{name}': {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None
    except RunError as error:
        # The run stopped for a reason the message explains (where, and what to do next): no traceback.
        print(f"error: {name} stopped: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None
