"""W&B (offline, no server) and TensorBoard beside metrics.csv, through the real command line in-process.

A run is stopped after its second round and resumed with ``--resume auto``. W&B's offline ``.wandb`` files
are read back record by record (the leveldb-log framing W&B writes, parsed here; the records are W&B's
protobuf ``Record``): the run's config holds the resolved options, every round and the final test metrics
are in its history, and the resumed session writes to the same run id. TensorBoard keeps one version folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mas_lightning import cli
from mas_lightning.federated.engine import FederatedEngine

ROUNDS = 3


def wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records of a ``.wandb`` file: a 7-byte header, then 32 KiB blocks of chunks, each with a
    7-byte header (checksum, little-endian length, type: 1 whole, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 2):
            pending = chunk
        elif kind in (3, 4):
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def read_run(path: Path) -> dict[str, Any]:
    """The run record, config updates and history rows of one offline session."""
    run: Any = None
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    return {"run": run, "config": config, "history": history}


def fit_args(out: Path, *extra: str) -> list[str]:
    return ["fit", "--data", '{"class_path": "mas_lightning.data.synthetic.SyntheticData", '
            '"init_args": {"clients": 3, "sizes": [8], "resolution": 32}}',
            "--tasks", "dn", "--rounds", str(ROUNDS), "--engine.clients_per_round", "2", "--engine.batch_size", "4",
            "--engine.local_steps", "1", "--engine.eval_every", "1", "--model.decoder_width", "8",
            "--accelerator", "cpu", f"--out={out}",
            "--name=run", "--logger=[wandb, tensorboard]", "--wandb.group=seeds", "--wandb.tags=[tiny, offline]",
            *extra]


def test_wandb_offline_run_holds_config_rounds_and_test_metrics_and_resume_continues_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("WANDB_API_KEY", "WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_ENTITY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_PROJECT", "project-from-env")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "runs" / "run"

    original = FederatedEngine.run_round

    def stop_in_third_round(self: FederatedEngine, state: Any, stage: Any, round_: int) -> None:
        if len(state["metrics"]) == 2:
            raise RuntimeError("stopped for the test")
        original(self, state, stage, round_)

    monkeypatch.setattr(FederatedEngine, "run_round", stop_in_third_round)
    with pytest.raises(RuntimeError, match="stopped for the test"):
        cli.main(fit_args(tmp_path / "runs"))
    monkeypatch.setattr(FederatedEngine, "run_round", original)
    summary = cli.main(fit_args(tmp_path / "runs", "--resume", "auto"))

    sessions = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)
    assert len(sessions) == 2
    first, resumed = (read_run(p) for p in sessions)
    saved_id = json.loads((run_dir / "loggers.json").read_text())["wandb_id"]
    assert first["run"].run_id == resumed["run"].run_id == saved_id  # the resumed session continues the run
    assert first["run"].project == "project-from-env" and first["run"].run_group == "seeds"
    assert list(first["run"].tags) == ["tiny", "offline"] and first["run"].display_name == "run"

    # The config is the resolved one: the options given, and the defaults they were resolved with.
    config = first["config"]
    assert config["rounds"] == ROUNDS and config["tasks"] == "dn" and config["logger"] == ["wandb", "tensorboard"]
    assert config["engine"]["clients_per_round"] == 2 and config["engine"]["eval_batch_size"] == 64  # a default
    assert config["wandb"]["group"] == "seeds" and config["seed"] == 0

    # Every round's metrics, under the run-round counter, across both sessions; then the final test metrics.
    history = first["history"] + resumed["history"]
    rounds = {row["run_round"]: row for row in history if "run_round" in row}
    assert sorted(rounds) == list(range(1, ROUNDS + 1))
    assert all("train/total_loss" in row and "val/total_loss" in row for row in rounds.values())
    assert [row["run_round"] for row in first["history"] if "run_round" in row] == [1, 2]
    final = next(row for row in resumed["history"] if "test/total_loss" in row)
    assert final["test/total_loss"] == pytest.approx(summary["total_test_loss"])
    for task, values in summary["test"].items():
        for name, value in values.items():
            assert final[f"test/{task}/{name}"] == pytest.approx(value), f"test/{task}/{name}"
    assert final["test/depth_zbuffer/abs_rel"] == pytest.approx(summary["main_metric"]["depth_zbuffer"]["value"])


def test_tensorboard_resume_writes_into_the_same_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    original = FederatedEngine.run_round

    def stop_in_second_round(self: FederatedEngine, state: Any, stage: Any, round_: int) -> None:
        if len(state["metrics"]) == 1:
            raise RuntimeError("stopped for the test")
        original(self, state, stage, round_)

    args = [a if not a.startswith("--logger=") else "--logger=tensorboard" for a in fit_args(tmp_path)]
    args = [a for a in args if not a.startswith("--wandb.")]
    monkeypatch.setattr(FederatedEngine, "run_round", stop_in_second_round)
    with pytest.raises(RuntimeError):
        cli.main(args)
    monkeypatch.setattr(FederatedEngine, "run_round", original)
    summary = cli.main([*args, "--resume", "auto"])
    versions = sorted(p.name for p in (tmp_path / "run" / "tensorboard").iterdir())
    assert versions == ["version_0"]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "version_0"))
    events.Reload()
    steps = [event.step for event in events.Scalars("run_round")]
    assert sorted(steps) == list(range(1, ROUNDS + 1))
    assert events.Scalars("test/total_loss")[-1].value == pytest.approx(summary["total_test_loss"], rel=1e-6)
