"""A run folder holds one run: its identity (fingerprint) guards resumes, a rerun never silently replaces it,
``--overwrite true`` does on request, and one process at a time writes to it (``<run>/.lock``).

One tiny run (synthetic data, 32 px, 2 tasks, 1 round) is trained once for the module; each test works on a
copy of its folder. Refused runs are checked through the command line (exit code, the one ``error:`` line) and
by comparing every file of the folder (bytes and modification time) before and after.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mas_lightning import cli
from mas_lightning.commands import fit as fit_module
from mas_lightning.commands.run_folder import RunLock
from mas_lightning.commands.run_identity import (
    NOT_RECORDED,
    differences,
    identity_from_arguments,
    identity_from_yaml,
)
from mas_lightning.data.synthetic import SyntheticData
from mas_lightning.errors import ConfigError
from mas_lightning.federated.checkpoint import load_checkpoint, save_checkpoint
from mas_lightning.federated.config import FederatedConfig
from mas_lightning.methods import MAS
from mas_lightning.methods.affinity_measurement import AffinityOptions
from mas_lightning.model import MultiTaskModel

CONFIG = """\
data:
  class_path: mas_lightning.data.synthetic.SyntheticData
  init_args: {clients: 3, sizes: [8], resolution: 32}
tasks: dn
rounds: 1
accelerator: cpu
engine: {clients_per_round: 2, batch_size: 4, local_steps: 1, eval_batch_size: 16}
model:
  class_path: mas_lightning.model.MultiTaskModel
  init_args: {decoder_width: 8}
optimizer:
  class_path: torch.optim.SGD
  init_args: {lr: 0.1, momentum: 0.9}
"""
RUN_FILES = ("config.yaml", "checkpoints/last.pt", "summary.json", "metrics.csv")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of one finished tiny run (``<out>/run``), with its config file at ``<out>/run.yaml``."""
    out = tmp_path_factory.mktemp("identity")
    (out / "run.yaml").write_text(CONFIG)
    cli.main(["fit", "-c", str(out / "run.yaml"), f"--out={out}", "--name=run"])
    return out / "run"


@pytest.fixture
def run_dir(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished run's folder for one test (out = ``tmp_path``, name = ``run``)."""
    shutil.copytree(finished, tmp_path / "run")
    (tmp_path / "run.yaml").write_text(CONFIG)
    return tmp_path / "run"


def fit_cli(run_dir: Path, *args: str) -> list[str]:
    return ["fit", "-c", str(run_dir.parent / "run.yaml"), f"--out={run_dir.parent}", f"--name={run_dir.name}",
            *args]


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``argv``, insist on exit code 2, return its one ``error:`` line."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the folder but the lock (bytes, mtime in ns)."""
    return {str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_checkpoint_and_summary_carry_the_identity_without_cosmetic_keys(finished: Path) -> None:
    summary = json.loads((finished / "summary.json").read_text())
    identity = summary["identity"]
    assert identity == load_checkpoint(finished / "checkpoints" / "last.pt")["identity"]
    assert len(identity["fingerprint"]) == 16 and identity["source"] == "cli" and identity["version"]
    config = identity["config"]
    assert config["seed"] == 0 and config["rounds"] == 1 and config["optimizer"]["init_args"]["lr"] == 0.1
    assert not {"out", "name", "resume", "overwrite", "logger"} & set(config)
    # The identity is that of the resolved config the run folder keeps.
    assert identity == identity_from_yaml((finished / "config.yaml").read_text())


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--seed=1"], ["seed: 0 -> 1"]),
        (["--rounds=2"], ["rounds: 1 -> 2"]),
        (["--optimizer.init_args.lr=0.2"], ["optimizer.init_args.lr: 0.1 -> 0.2"]),
        (["--data.init_args.resolution=64"], ["data.init_args.resolution: 32 -> 64"]),
        (["--seed=1", "--rounds=2"], ["rounds: 1 -> 2", "seed: 0 -> 1"]),
    ],
    ids=["seed", "rounds", "lr", "data", "seed+rounds"],
)
def test_resume_under_other_options_is_refused_naming_the_keys(run_dir: Path, change: list[str], named: list[str],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(run_dir)
    line = refused(fit_cli(run_dir, "--resume=auto", *change), capsys)
    assert "was written by another configuration" in line
    for key in named:
        assert key in line, line
    assert line.count("->") == len(named), line  # nothing else is reported as changed
    assert snapshot(run_dir) == before  # config.yaml, checkpoint, summary, metrics untouched


def test_resume_under_the_same_options_goes_on(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `out` spelled differently is cosmetic: not part of the identity.
    summary = cli.main(fit_cli(run_dir, "--resume=auto", f"--out={run_dir.parent}/."))
    assert "resumed from" in capsys.readouterr().out
    assert summary["identity"] == json.loads((run_dir / "summary.json").read_text())["identity"]


def test_rerun_without_resume_is_refused_and_leaves_the_first_run(run_dir: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(run_dir)
    assert set(RUN_FILES) <= set(before)
    line = refused(fit_cli(run_dir, "--seed=7"), capsys)  # another seed: a rewritten config.yaml would show
    assert f"run folder {run_dir} already holds a run" in line
    assert "--resume auto" in line and "--name" in line and "--overwrite true" in line
    assert snapshot(run_dir) == before


def test_overwrite_replaces_the_old_run(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run_dir / "affinity.json").write_text("{}")  # an old run's file that the new run does not write
    line = refused(fit_cli(run_dir, "--overwrite=true", "--resume=auto"), capsys)
    assert "exclude each other" in line
    summary = cli.main(fit_cli(run_dir, "--overwrite=true", "--seed=1"))
    assert summary["seed"] == 1 and summary["identity"]["config"]["seed"] == 1
    assert json.loads((run_dir / "summary.json").read_text())["seed"] == 1
    assert "seed: 1" in (run_dir / "config.yaml").read_text()
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["identity"]["config"]["seed"] == 1
    assert not (run_dir / "affinity.json").exists()
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 2  # header + the new run's one round


def test_checkpoint_without_identity_resumes_with_one_warning(run_dir: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(checkpoint)
    del state["identity"]  # as written before identities existed
    save_checkpoint(state, checkpoint.parent)
    (run_dir / "summary.json").unlink()
    summary = cli.main(fit_cli(run_dir, "--resume=auto"))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "records no run identity" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:") and str(checkpoint) in warnings[0]
    assert summary["identity"]["config"]["seed"] == 0  # the run takes this configuration's identity on


def tiny_fit(out: Path, **overrides: Any) -> dict[str, Any]:
    """``fit`` called from Python, as the method tests do (no resolved config)."""
    arguments: dict[str, Any] = dict(
        data=SyntheticData(clients=3, sizes=(8,), resolution=32), tasks="dn",
        model=functools.partial(MultiTaskModel, decoder_width=8),
        rounds=1, accelerator="cpu", out=out, name="py",
        engine=FederatedConfig(clients_per_round=2, batch_size=4, local_steps=1, eval_batch_size=16))
    return fit_module.fit(**{**arguments, **overrides})


def test_python_calls_are_fingerprinted_from_their_arguments(tmp_path: Path) -> None:
    first = tiny_fit(tmp_path)
    assert first["identity"]["source"] == "python" and first["identity"]["config"]["seed"] == 0
    with pytest.raises(ConfigError, match="already holds a run"):
        tiny_fit(tmp_path)
    with pytest.raises(ConfigError, match=r"\(seed: 0 -> 1\)"):
        tiny_fit(tmp_path, seed=1, resume="auto")
    with pytest.raises(ConfigError, match=r"\(engine.batch_size: 4 -> 8\)"):
        tiny_fit(tmp_path, resume="auto",
                 engine=FederatedConfig(clients_per_round=2, batch_size=8, local_steps=1, eval_batch_size=16))
    with pytest.raises(ConfigError, match=r"\(data.init_args.clients: 3 -> 4\)"):
        tiny_fit(tmp_path, resume="auto", data=SyntheticData(clients=4, sizes=(8,), resolution=32))
    again = tiny_fit(tmp_path, resume="auto")  # new but equal objects: the same run
    assert again["identity"] == first["identity"]


def test_python_and_command_line_describe_a_run_alike() -> None:
    argv = ["fit", "--data=mas_lightning.data.synthetic.SyntheticData", "--data.init_args.clients=3",
            "--data.init_args.resolution=32", "--tasks=dn", "--method=mas_lightning.methods.MAS",
            "--method.init_args.split_round=1", "--method.init_args.affinity.every=3",
            "--model.init_args.decoder_width=8", "--rounds=2", "--engine.batch_size=4", "--accelerator=cpu"]
    parser = cli.build_parser({"fit": "mas_lightning.commands.fit:fit"})
    from_cli = identity_from_yaml(cli.command_parser(fit_module.fit).dump(parser.parse_args(argv)["fit"]))
    defaults = {k: p.default for k, p in inspect.signature(fit_module.fit).parameters.items()}
    arguments = {**defaults, "data": SyntheticData(clients=3, resolution=32), "tasks": ["normal", "depth_zbuffer"],
                 "method": MAS(split_round=1, affinity=AffinityOptions(every=3)),
                 "model": functools.partial(MultiTaskModel, decoder_width=8), "rounds": 2,
                 "engine": FederatedConfig(batch_size=4), "accelerator": "cpu"}
    from_python = identity_from_arguments(arguments)
    # MAS keeps `affinity` where it cannot be read back: not recorded, and so never a difference.
    assert from_python["config"]["method"]["init_args"]["affinity"] == NOT_RECORDED
    assert differences(from_cli, from_python) == [] and differences(from_python, from_cli) == []
    assert differences(from_cli, identity_from_arguments({**arguments, "rounds": 3})) == ["rounds: 2 -> 3"]


def test_a_held_lock_refuses_a_second_writer_and_a_failed_run_releases_it(
        run_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = run_dir.parent / "fresh"
    with RunLock(fresh):
        assert (fresh / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(ConfigError, match=f"in use by process {os.getpid()}"):
            RunLock(fresh).acquire()
        line = refused(fit_cli(fresh), capsys)
        assert f"in use by process {os.getpid()}" in line
        assert not (fresh / "config.yaml").exists()  # refused before writing anything

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("stopped mid-run")

    monkeypatch.setattr(fit_module, "run_method", broken)
    with pytest.raises(RuntimeError, match="stopped mid-run"):
        cli.main(fit_cli(fresh))
    RunLock(fresh).acquire().release()  # the failed run let go of the folder


GATE = '''
"""Hold this process before it writes summary.json (or its temporary file) until MAS_GATE exists (<= 120 s)."""
import os, sys, time


def _hook(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)) and "summary.json" in os.fspath(args[0]):
        if any(c in (args[1] or "") for c in "wax+") or (args[2] or 0) & (os.O_WRONLY | os.O_RDWR):
            deadline = time.monotonic() + 120
            while not os.path.exists(os.environ["MAS_GATE"]) and time.monotonic() < deadline:
                time.sleep(0.05)


sys.addaudithook(_hook)
'''


@pytest.mark.slow  # two fit processes: about 30 s
def test_a_second_process_on_the_same_folder_exits_2_naming_the_first(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(CONFIG)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(GATE)
    gate, run_dir = tmp_path / "gate", tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mas_lightning", *fit_cli(run_dir)]
    path = os.pathsep.join(p for p in (str(hook), env.get("PYTHONPATH", "")) if p)
    first = subprocess.Popen([*command, "--rounds=2"], env={**env, "PYTHONPATH": path, "MAS_GATE": str(gate)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # The first run has trained both rounds and waits at its summary, holding the lock.
        deadline, metrics = time.monotonic() + 240, run_dir / "metrics.csv"
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) == 3):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0][-3000:]
            time.sleep(0.1)
        assert (run_dir / ".lock").read_text().strip() == str(first.pid)
        second = subprocess.run([*command, "--seed=1"], env=env, capture_output=True, text=True,
                                timeout=240)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"run folder {run_dir} is in use by process {first.pid}" in second.stderr
    finally:
        gate.touch()
    output, _ = first.communicate(timeout=240)
    assert first.returncode == 0, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["seed"] == 0 and summary["rounds"] == 2
    assert "seed: 0" in (run_dir / "config.yaml").read_text() and "rounds: 2" in (run_dir / "config.yaml").read_text()
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 3
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["identity"] == summary["identity"]
