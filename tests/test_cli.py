"""The command line: bad configs end with one clear line (no usage block) and exit code 2; -c and dotted overrides
work. The mistakes users reported, and Ctrl-C: ``tests/commands/test_user_errors.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mas_lightning.cli import main

SYNTHETIC = ["--data", '{"class_path": "mas_lightning.data.synthetic.SyntheticData", "init_args": {"clients": 3}}']


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return int(exit_info.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--engine.bogus=1"], "bogus"),
        (["--rounds=abc"], "rounds"),
        (["--engine.clients_per_round=1.5"], "clients_per_round=1.5"),
        (["--tasks=sdx"], "unknown task 'x'"),
        (["--method=MAS", "--method.split_round=20", "--rounds=5"], "split_round=20"),
        (["--data=Taskonomy", "--data.root=/nonexistent/taskonomy"], "/nonexistent/taskonomy"),
    ],
)
def test_bad_config_exits_2_naming_the_key(args: list[str], needle: str, capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    code, err = run_cli(["fit", *SYNTHETIC, f"--out={tmp_path}", *args], capsys)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "usage:" not in err  # one line, no usage block before it


def test_config_file_with_short_flag_and_override(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "data:\n  class_path: mas_lightning.data.synthetic.SyntheticData\n  init_args: {clients: 3, resolution: 32}\n"
        "tasks: dn\nrounds: 5\nengine: {clients_per_round: 2, batch_size: 4, local_steps: 1}\n"
        f"model:\n  class_path: mas_lightning.model.MultiTaskModel\n  init_args: {{decoder_width: 8}}\n"
        f"out: {tmp_path}\nname: cli\n"
    )
    summary = main(["fit", "-c", str(config), "--rounds=1"])
    assert summary["rounds"] == 1 and summary["tasks"] == "dn"
    saved = (tmp_path / "cli" / "config.yaml").read_text()
    assert "rounds: 1" in saved and "decoder_width: 8" in saved
    on_disk = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert on_disk["total_test_loss"] == pytest.approx(summary["test_loss"]["depth_zbuffer"]
                                                       + summary["test_loss"]["normal"])
