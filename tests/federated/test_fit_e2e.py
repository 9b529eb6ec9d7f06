"""The real ``fit`` command, killed with SIGKILL mid-run and resumed with ``--resume auto``, ends exactly where an
uninterrupted run of the same config ends: same per-task test losses and metrics, same groups, same metrics.csv.

Each test starts the uninterrupted reference and the runs to be killed side by side (most of a process's
time is importing torch), kills each as soon as its metrics.csv shows enough finished rounds (so during a
later round, after a checkpoint exists), then reruns its command line with ``--resume auto``.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mas_lightning.tasks import letters

pytestmark = pytest.mark.slow  # subprocesses: deselect with -m 'not slow' for a quick inner loop

TIMING_KEYS = ("wall_s", "client_compute_s", "energy_j", "session_wall_s")
"""Summary fields that measure this machine's time and energy, not the result: they differ between runs."""


def fit_command(out: Path, name: str, *extra: str) -> list[str]:
    """A tiny federated run: 4 synthetic clients at 32 px, 3 tasks, 2 clients x 2 local steps per round."""
    return [
        sys.executable, "-m", "mas_lightning", "fit",
        "--data", '{"class_path": "mas_lightning.data.synthetic.SyntheticData", "init_args": {"clients": 4}}',
        "--tasks", "dnt", "--rounds", "5", "--engine.clients_per_round", "2", "--engine.batch_size", "4",
        "--engine.local_steps", "2", "--model.decoder_width", "8", "--accelerator", "cpu",
        f"--out={out}", f"--name={name}", *extra,
    ]  # fmt: skip


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment with one thread per process."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def start(command: list[str], **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(command, env=child_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(process: subprocess.Popen[str], timeout: float = 240) -> str:
    """Wait for a run; fail with its output when it did not succeed."""
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"fit exited with {process.returncode}:\n{output[-4000:]}"
    return output


def kill_after_rounds(process: subprocess.Popen[str], run_dir: Path, rounds: int, timeout: float = 240) -> None:
    """SIGKILL ``process`` as soon as its metrics.csv holds ``rounds`` finished rounds (checkpointed first)."""
    metrics = run_dir / "metrics.csv"
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) - 1 >= rounds:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"the run was not killed mid-run (rc {process.returncode}):\n{output}"
    assert (run_dir / "checkpoints" / "last.pt").is_file() and not (run_dir / "summary.json").exists()


def result(run_dir: Path) -> dict[str, Any]:
    """summary.json without its timing and energy fields."""
    summary = json.loads((run_dir / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k not in TIMING_KEYS}


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv rows without the per-round wall time."""
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(handle)]


def kill_resume_and_compare(tmp_path: Path, kill_after: tuple[int, ...], *extra: str) -> dict[str, Any]:
    """A reference run and one run per kill point side by side, then the resumes; returns the (equal) results."""
    reference = start(fit_command(tmp_path, "reference", *extra))
    victims = {rounds: start(fit_command(tmp_path, f"killed{rounds}", *extra)) for rounds in kill_after}
    for rounds, victim in victims.items():
        kill_after_rounds(victim, tmp_path / f"killed{rounds}", rounds)
    resumes = {rounds: start(fit_command(tmp_path, f"killed{rounds}", *extra, "--resume=auto")) for rounds in victims}
    finish(reference)
    expected, rows = result(tmp_path / "reference"), metric_rows(tmp_path / "reference")
    assert len(rows) == 5
    for rounds, resume in resumes.items():
        output = finish(resume)
        assert "resumed from" in output and f"after {rounds} rounds" in output, output[-2000:]
        assert result(tmp_path / f"killed{rounds}") == expected  # bit-identical: floats compared with ==
        assert metric_rows(tmp_path / f"killed{rounds}") == rows  # no duplicated, lost or changed round row
    return expected


def test_all_in_one_killed_mid_run_resumes_bit_identically(tmp_path: Path) -> None:
    got = kill_resume_and_compare(tmp_path, (2,))
    assert got["groups"] == ["dnt"] and got["samples_trained"] == 5 * 2 * 2 * 4
    assert set(got["test"]) == {"depth_zbuffer", "normal", "edge_texture"}


def test_mas_killed_before_and_after_the_split_resumes_with_the_same_groups(tmp_path: Path) -> None:
    mas = ("--method=mas_lightning.methods.MAS", "--method.split_round=2", "--method.affinity.every=1")
    # Killed during round 1, the merged stage's last (the split is decided from affinity restored from the
    # checkpoint), and during round 3, in the split stage, with the split groups in the checkpoint.
    got = kill_resume_and_compare(tmp_path, (1, 3), *mas)
    merge, split = got["stages"]
    assert merge["split"]["round"] == 2 and merge["affinity"]["rounds_averaged"] == [0, 1]
    groups = [letters(g) for g in merge["split"]["groups"]]
    assert sorted(got["groups"]) == sorted(groups) == sorted(split["groups"])
    rows = metric_rows(tmp_path / "killed3")
    assert [(r["stage"], r["round"]) for r in rows] == [("mas/merge", "0"), ("mas/merge", "1")] + [
        ("mas/split", str(r)) for r in (2, 3, 4)]
    affinity = [json.loads((tmp_path / run / "affinity.json").read_text()) for run in ("reference", "killed1")]
    assert affinity[0] == affinity[1]
