"""Mistakes users made: each ends with one line on stderr naming the key and the value, exit code 2, and no
traceback or usage block; Ctrl-C ends with one line and the command that resumes the run (exit code 130)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mas_lightning.cli import main
from mas_lightning.data.synthetic import SyntheticData
from mas_lightning.federated.engine import FederatedEngine

SYNTHETIC = ["--data", '{"class_path": "mas_lightning.data.synthetic.SyntheticData", '
                       '"init_args": {"clients": 3, "resolution": 32}}']
TINY = ["--tasks=dn", "--rounds=3", "--engine.clients_per_round=2", "--engine.batch_size=4",
        "--engine.local_steps=1", "--model.init_args.decoder_width=8"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def assert_one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "usage:" not in err
    return lines[0]


def read_only_folder(tmp_path: Path) -> Path:
    """A folder this process really cannot write in: a chmod 555 one, or, for root (which ignores permission
    bits), /sys, read-only in containers."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        try:
            (candidate / "probe").mkdir()
        except OSError:
            return candidate
        (candidate / "probe").rmdir()
    pytest.skip("no read-only folder here (root, and /sys is writable)")


# key=value, the settings, and what the line must name (key and value, and what is accepted).
BAD_SETTINGS: list[tuple[str, Callable[[Path], list[str]], list[str]]] = [
    ("clients_per_round", lambda _: ["--engine.clients_per_round=5"], ["engine.clients_per_round=5", "[1, 3]"]),
    ("negative_lr", lambda _: ["--optimizer=torch.optim.SGD", "--optimizer.init_args.lr=-1"],
     ["optimizer.init_args.lr=-1", ">= 0"]),
    ("precision", lambda _: ["--precision=bogus"], ["precision='bogus'", "32-true"]),
    ("devices", lambda _: ["--devices=0"], ["devices=0", "count >= 1"]),
    ("num_nodes", lambda _: ["--num_nodes=0"], ["num_nodes=0", ">= 1"]),
    ("accelerator", lambda _: ["--accelerator=tpux"], ["accelerator='tpux'", "cpu"]),
    ("strategy", lambda _: ["--strategy=nope"], ["strategy='nope'", "ddp"]),
    ("resume_missing", lambda tmp: [f"--resume={tmp / 'missing.pt'}"], ["resume", "missing.pt", "auto"]),
    ("seed", lambda _: ["--seed=-1"], ["seed=-1", "4294967295"]),
    ("out_is_file", lambda tmp: [f"--out={tmp / 'a_file'}"], ["out=", "a_file", "is a file", "folder"]),
    ("out_read_only", lambda tmp: [f"--out={read_only_folder(tmp)}"], ["out=", "cannot write", "writable"]),
]


@pytest.mark.parametrize(("case", "settings", "needles"), BAD_SETTINGS, ids=[c[0] for c in BAD_SETTINGS])
def test_bad_setting_is_one_line_exit_2(case: str, settings: Callable[[Path], list[str]], needles: list[str],
                                        tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    built: list[bool] = []
    setup = SyntheticData.setup
    monkeypatch.setattr(SyntheticData, "setup", lambda self, tasks: built.append(True) or setup(self, tasks))
    code, _, err = run_cli(["fit", *SYNTHETIC, *TINY, f"--out={tmp_path / 'runs'}", *settings(tmp_path)], capsys)
    line = assert_one_line(err)
    assert code == 2
    for needle in needles:
        assert needle in line
    # Only clients_per_round needs the data; the rest is refused before it is built (and before training).
    assert built == ([True] if case == "clients_per_round" else [])
    assert not list(tmp_path.rglob("last.pt"))


def test_yaml_syntax_error_names_the_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("tasks: dn\nrounds: 3\nengine: {batch_size: 4\nseed: 0\n")  # unclosed flow mapping, line 3
    top = tmp_path / "top.yaml"
    top.write_text("config: base.yaml\nrounds: 2\n")
    for given in (base, top):  # directly, and included by another file
        code, _, err = run_cli(["fit", "-c", str(given)], capsys)
        line = assert_one_line(err)
        assert code == 2
        assert f"{base}, line" in line and "line 3" in line and "<unicode string>" not in line


@pytest.mark.parametrize("args", [["--rounds=abc"], ["--engine.bogus=1"], ["--optimizer.init_args.lr=-1"], []])
def test_parse_errors_print_no_usage_block(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["fit", *args] if args else ["nosuchcommand"], capsys)
    assert code == 2
    line = assert_one_line(err)
    assert "--help" in line  # where to find what is accepted


def test_help_still_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["fit", "--help"], capsys)
    assert code == 0
    assert "usage:" in out and "--engine.clients_per_round" in out


def resume_args(line: str) -> list[str]:
    """The arguments after ``python -m mas_lightning`` of the resume command that ``line`` ends with."""
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[1:3] == ["-m", "mas_lightning"]
    return command[3:]


def test_ctrl_c_in_process_says_where_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    run_round = FederatedEngine.run_round

    def interrupt_second_round(self: FederatedEngine, state: Any, stage: Any, round_: int) -> None:
        if round_ == 1:
            raise KeyboardInterrupt
        run_round(self, state, stage, round_)

    monkeypatch.setattr(FederatedEngine, "run_round", interrupt_second_round)
    args = ["fit", *SYNTHETIC, *TINY, f"--out={tmp_path}", "--name=c"]
    code, _, err = run_cli(args, capsys)
    line = assert_one_line(err)
    assert code == 130
    assert "in stage 0 (all-in-one) after 1 of its rounds" in line
    assert "holds round 0" in line and "(1 round trained)" in line
    assert line.endswith("--resume auto") and resume_args(line) == [*args, "--resume", "auto"]
    monkeypatch.setattr(FederatedEngine, "run_round", run_round)
    summary = main(resume_args(line))
    assert summary["rounds"] == 3
    assert "resumed from" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ctrl_c_subprocess_prints_resume_command_that_resumes(tmp_path: Path) -> None:
    args = ["fit", *SYNTHETIC, "--tasks=dn", "--rounds=4", "--engine.clients_per_round=2", "--engine.batch_size=4",
            "--engine.local_steps=20", "--model.init_args.decoder_width=8", f"--out={tmp_path}", "--name=c"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A shell without job control (nohup, `cmd &` in a script, some CI runners) starts its background children with
    # SIGINT ignored, and Python then installs no Ctrl-C handler: give the child the terminal's default.
    proc = subprocess.Popen([sys.executable, "-m", "mas_lightning", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoint = tmp_path / "c" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 400
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert checkpoint.exists(), "no checkpoint after the first round"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    line = assert_one_line(err)
    assert proc.returncode == 130, err
    assert "interrupted in stage 0 (all-in-one)" in line and "holds round" in line
    assert resume_args(line) == [*args, "--resume", "auto"]
    resumed = subprocess.run(shlex.split(line.split("resume with: ", 1)[1]), capture_output=True, text=True,
                             env=env, timeout=400)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert '"rounds": 4' in (tmp_path / "c" / "summary.json").read_text()


def test_a_full_disk_while_preparing_the_data_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def full(self: SyntheticData, tasks: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "cache" / "building01.pt"))

    monkeypatch.setattr(SyntheticData, "setup", full)
    code, _, err = run_cli(["fit", *SYNTHETIC, *TINY, f"--out={tmp_path}"], capsys)
    line = assert_one_line(err)
    assert code == 1 and "No space left on device" in line and "building01.pt" in line
