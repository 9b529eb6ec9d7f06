"""``fit`` on two CPU processes (DDP over gloo) gives the one-process results, and only rank 0 writes files.

Fabric's default launcher starts rank 1 by rerunning the command line, so the run goes through the CLI in a
subprocess. The clients of a round are divided among the ranks (3 clients: 2 on rank 0, 1 on rank 1) and the
float64 weighted sums all-reduced; the lookahead affinity is all-reduced too, so both ranks pick the same MAS
split. Which process writes what is recorded by a Python audit hook installed through a ``sitecustomize``
module that only the two-process run sees.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from federated.test_fit_e2e import finish, fit_command, metric_rows, result, start

pytestmark = pytest.mark.slow  # subprocesses: deselect with -m 'not slow' for a quick inner loop

AUDIT = '''
"""Record every file or folder that this process creates, writes, renames or removes under MAS_WATCH."""
import atexit, os, sys

_WATCH, _LOG, _SEEN = os.environ["MAS_WATCH"], os.environ["MAS_WRITE_LOG"], []


def _hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1] or "", args[2] or 0
        if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            _SEEN.append(os.fsdecode(args[0]))
    elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir"):
        _SEEN.append(os.fsdecode(args[1] if event == "os.rename" else args[0]))


def _dump():
    mine = sorted({os.path.abspath(p) for p in _SEEN if os.path.abspath(p).startswith(_WATCH)})
    with open(os.path.join(_LOG, f"{os.getpid()}.txt"), "w") as handle:
        handle.write("\\n".join(mine))


sys.addaudithook(_hook)
atexit.register(_dump)
'''


def test_two_cpu_processes_match_one_and_only_rank_zero_writes(tmp_path: Path) -> None:
    hook, log = tmp_path / "hook", tmp_path / "writes"
    hook.mkdir()
    log.mkdir()
    (hook / "sitecustomize.py").write_text(AUDIT)
    out = tmp_path / "runs"
    mas = ("--method=mas_lightning.methods.MAS", "--method.split_round=2", "--method.affinity.every=1",
           "--engine.clients_per_round=3", "--rounds=4", "--engine.eval_every=1")
    single = start(fit_command(out, "one", *mas))
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    double = start(fit_command(out, "two", *mas, "--devices=2", "--strategy=ddp"),
                   PYTHONPATH=path, MAS_WATCH=str(out / "two"), MAS_WRITE_LOG=str(log))
    output = finish(double)
    finish(single)
    assert "GLOBAL_RANK: 1" in output and output.count("total test loss") == 1

    one, two = result(out / "one"), result(out / "two")
    assert two["groups"] == one["groups"] and two["stages"][0]["split"]["groups"] == one["stages"][0]["split"]["groups"]
    per_round = 3 * 2 * 4  # clients x local steps x batch, for each group's model
    assert two["samples_trained"] == one["samples_trained"] == per_round * (2 + 2 * len(one["groups"]))
    assert two["train_flops"] == pytest.approx(one["train_flops"], rel=1e-9)
    # Each rank measures affinity on its own clients: the FLOPs of those measurements are summed over ranks.
    assert one["affinity_flops"] > 0 and two["affinity_flops"] == pytest.approx(one["affinity_flops"], rel=1e-9)
    assert two["total_test_loss"] == pytest.approx(one["total_test_loss"], rel=1e-4)
    for task, metrics in one["test"].items():
        assert two["test"][task] == pytest.approx(metrics, rel=1e-4, abs=1e-6), task
    val_one, val_two = ([float(r["val/total_loss"]) for r in metric_rows(out / run)] for run in ("one", "two"))
    assert len(val_two) == 4 and val_two == pytest.approx(val_one, rel=1e-4)

    writers = {int(f.stem): f.read_text().split() for f in log.glob("*.txt")}
    assert len(writers) == 2, f"expected the audit logs of both ranks, got {sorted(writers)}"
    assert writers.pop(double.pid), "rank 0 wrote nothing"
    assert writers.popitem()[1] == [], "rank 1 wrote into the run folder"
