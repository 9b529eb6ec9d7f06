"""What a run prints off a terminal (one line per round, the split, the final summary) and the per-round
training losses and run-round counter of metrics.csv, on one tiny MAS fit.

The mean client training loss of a round is recomputed here from the weights and batches each client
started its local steps from (recorded by a callback), with a freshly built model: the sample-weighted mean
of the batches' losses, independent of the engine's own accumulation.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from functools import partial
from typing import Any

import pytest
import torch

from mas_lightning.commands.fit import fit
from mas_lightning.data.synthetic import SyntheticData
from mas_lightning.federated.callbacks import BatchContext, Callback
from mas_lightning.federated.config import FederatedConfig
from mas_lightning.methods import MAS
from mas_lightning.methods.affinity_measurement import AffinityOptions
from mas_lightning.model import MultiTaskModel
from mas_lightning.tasks import letters

ROUND_LINE = re.compile(r"^(mas/merge|mas/split) \| round (\d+)/(\d+) \| run round (\d+) \| groups ([a-z /]+) \| "
                        r"train ([0-9.]+) \| val ([0-9.]+) \| [0-9.]+ s \| ETA \d+:\d\d:\d\d$")


class RecordBatches(Callback):
    """Keeps, per run round, each local batch and the weights the client held before its step."""

    def __init__(self) -> None:
        self.seen: dict[int, list[tuple[tuple[str, ...], dict[str, torch.Tensor], dict[str, torch.Tensor]]]] = {}

    def on_train_batch_start(self, ctx: BatchContext) -> None:
        weights = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        batch = {k: v.clone() for k, v in ctx.batch.items()}
        self.seen.setdefault(ctx.run_round, []).append((ctx.group, weights, batch))


class RecordedMAS(MAS):
    def __init__(self, recorder: RecordBatches, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recorder = recorder

    def callbacks(self) -> list[Callback]:
        return [*super().callbacks(), self.recorder]


def recomputed_training_losses(records: list[Any]) -> dict[str, float]:
    """Per task: sum over batches of loss x samples / samples, from a new model loaded with the recorded weights."""
    sums: dict[str, float] = {}
    samples: dict[str, int] = {}
    for group, weights, batch in records:
        model = MultiTaskModel(list(group), decoder_width=8)
        model.load_state_dict(weights)
        model.train()
        with torch.no_grad():
            losses = model.task_losses(model(batch["rgb"]), batch)
        n = len(batch["rgb"])
        for task in group:
            sums[task] = sums.get(task, 0.0) + float(losses[task]) * n
            samples[task] = samples.get(task, 0) + n
    return {task: sums[task] / samples[task] for task in sums}


@pytest.fixture(scope="module")
def tiny_mas_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One MAS run: 2 merged rounds, then 2 split rounds; what it printed, its summary, metrics and batches."""
    out = tmp_path_factory.mktemp("watch")
    recorder = RecordBatches()
    buffer = io.StringIO()  # what a log file (| tee, nohup, a cluster job) would receive: stdout is not a tty
    with contextlib.redirect_stdout(buffer):
        fit(data=SyntheticData(clients=3, sizes=(8,), resolution=32), tasks="sdn",
            method=RecordedMAS(recorder, split_round=2, max_groups=2, affinity=AffinityOptions(every=1)),
            model=partial(MultiTaskModel, decoder_width=8), rounds=4, out=out, name="run",
            engine=FederatedConfig(clients_per_round=2, batch_size=4, local_steps=2, eval_batch_size=16,
                                   eval_every=1))
    run = out / "run"
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    return {"output": buffer.getvalue(), "summary": json.loads((run / "summary.json").read_text()), "rows": rows,
            "batches": recorder.seen}


def test_one_line_per_round_with_the_stage_and_round_numbers(tiny_mas_run: dict[str, Any]) -> None:
    lines = tiny_mas_run["output"].splitlines()
    matches = [m for m in map(ROUND_LINE.match, lines) if m]
    assert [(m[1], int(m[2]), int(m[3]), int(m[4])) for m in matches] == [
        ("mas/merge", 1, 2, 1), ("mas/merge", 2, 2, 2), ("mas/split", 1, 2, 3), ("mas/split", 2, 2, 4)]
    rows = tiny_mas_run["rows"]
    # The printed training and validation totals are metrics.csv's.
    assert [float(m[6]) for m in matches] == [round(float(r["train/total_loss"]), 4) for r in rows]
    assert [float(m[7]) for m in matches] == [round(float(r["val/total_loss"]), 4) for r in rows]
    split_groups = " / ".join(tiny_mas_run["summary"]["stages"][1]["groups"])
    assert [m[5] for m in matches] == ["sdn", "sdn", split_groups, split_groups]


def test_split_line_names_the_groups_summary_json_records(tiny_mas_run: dict[str, Any]) -> None:
    split = tiny_mas_run["summary"]["stages"][0]["split"]
    expected = " / ".join(letters(g) for g in split["groups"])
    lines = [line for line in tiny_mas_run["output"].splitlines() if line.startswith("split after")]
    assert lines == [f"split after mas/merge: groups {expected} (score {split['score']:.4f})"]
    assert sorted(expected.split(" / ")) == sorted(tiny_mas_run["summary"]["groups"])


def test_final_lines_hold_the_summary_totals(tiny_mas_run: dict[str, Any]) -> None:
    summary = tiny_mas_run["summary"]
    lines = tiny_mas_run["output"].splitlines()
    total = [line for line in lines if line.startswith("total test loss")]
    assert len(total) == 1
    assert float(total[0].split()[3]) == round(summary["total_test_loss"], 4)
    for task, loss in summary["test_loss"].items():
        main = summary["main_metric"][task]
        line = next(line for line in lines if line.strip().startswith(task + " "))
        assert f"test loss {loss:.4f}" in line and f"{main['name']} {main['value']:.4f}" in line


def test_metrics_csv_counts_run_rounds_across_stages(tiny_mas_run: dict[str, Any]) -> None:
    rows = tiny_mas_run["rows"]
    assert [int(r["run_round"]) for r in rows] == [1, 2, 3, 4]
    assert [r["stage"] for r in rows] == ["mas/merge"] * 2 + ["mas/split"] * 2


def test_training_losses_are_the_sample_weighted_mean_of_the_clients_batches(tiny_mas_run: dict[str, Any]) -> None:
    rows, batches = tiny_mas_run["rows"], tiny_mas_run["batches"]
    assert sorted(batches) == [0, 1, 2, 3] and all(len(b) >= 4 for b in batches.values())
    for run_round, row in enumerate(rows):
        expected = recomputed_training_losses(batches[run_round])
        assert sorted(expected) == sorted(k.split("/")[1] for k in row if k.startswith("train/") and "/loss" in k
                                          and k != "train/total_loss")
        for task, value in expected.items():
            assert float(row[f"train/{task}/loss"]) == pytest.approx(value, rel=1e-5)
        assert float(row["train/total_loss"]) == pytest.approx(sum(expected.values()), rel=1e-5)
