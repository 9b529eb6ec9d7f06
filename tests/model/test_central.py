"""Central training: the pooled client data, flips, and a tiny Lightning fit that changes the weights."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

from mas_lightning.commands.central import ClientUnion, RandomHFlip, central
from mas_lightning.data.base import TensorTaskDataset
from mas_lightning.data.synthetic import SyntheticData
from mas_lightning.errors import ConfigError
from mas_lightning.model import EqualWeighting, MultiTaskModel
from mas_lightning.model.losses import task_losses
from mas_lightning.report.comparison_table import run_record
from mas_lightning.tasks import parse_tasks


def test_client_union_fetches_in_the_requested_order() -> None:
    a = TensorTaskDataset({"x": torch.arange(3)}, lambda batch: batch)
    b = TensorTaskDataset({"x": torch.arange(10, 14)}, lambda batch: batch)
    union = ClientUnion([a, b])
    assert len(union) == 7
    assert union.batch([5, 0, 3, 2, 6])["x"].tolist() == [12, 0, 10, 2, 13]
    assert union[4]["x"].item() == 11
    with pytest.raises(IndexError, match="index 7 out of range for 7 samples"):
        union.batch([7])


def test_random_flip_changes_the_batch_in_place() -> None:
    rgb = torch.arange(8.0).view(1, 1, 2, 4).expand(4, 3, 2, 4).clone()
    batch = {"rgb": rgb.clone()}
    RandomHFlip(seed=0).on_train_batch_start(None, None, batch, 0)
    flipped = [torch.equal(batch["rgb"][i], rgb[i].flip(-1)) for i in range(4)]
    kept = [torch.equal(batch["rgb"][i], rgb[i]) for i in range(4)]
    assert all(f != k for f, k in zip(flipped, kept))  # each sample either flipped or untouched
    assert any(flipped) and any(kept)  # seed 0 flips some of the four and not others


def test_central_fit_changes_weights_and_writes_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built: list[tuple[MultiTaskModel, dict[str, torch.Tensor]]] = []

    def small_model(tasks: tuple[str, ...]) -> MultiTaskModel:
        model = MultiTaskModel(tasks, decoder_width=8)
        built.append((model, {k: v.clone() for k, v in model.state_dict().items()}))
        return model

    def run(out: Path) -> dict:
        return central(
            SyntheticData(clients=2, sizes=(4,), resolution=32),
            "sd",
            small_model,
            max_epochs=1,
            max_steps=2,
            batch_size=4,
            log_every=1,
            accelerator="cpu",
            out=out,
            resolved_config="tasks: sd\n",
        )

    summary = run(tmp_path / "a")
    model, before = built[0]
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("decoders.depth") for k in changed)
    assert summary["train_samples"] == 8
    assert summary["tasks"] == "sd" and summary["method"] == "Central"
    assert json.loads((tmp_path / "a" / "summary.json").read_text()) == summary
    assert (tmp_path / "a" / "config.yaml").read_text() == "tasks: sd\n"
    restored = MultiTaskModel.load_from_checkpoint(tmp_path / "a" / "checkpoints" / "last.ckpt")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in restored.state_dict().items())

    # The reported validation and test losses are the trained model's, recomputed here on each whole set
    # (4 samples: one batch).
    data = SyntheticData(clients=2, sizes=(4,), resolution=32).setup(list(parse_tasks(summary["tasks"])))
    restored.eval()
    for split, dataset in (("val", data.val), ("test", data.test)):
        batch = dataset.batch(list(range(len(dataset))))
        with torch.no_grad():
            losses = task_losses(restored(batch["rgb"]), batch)
        for task, loss in losses.items():
            assert summary[f"{split}_loss"][task] == pytest.approx(loss.item(), rel=1e-5), (split, task)
        assert summary[f"total_{split}_loss"] == pytest.approx(sum(v.item() for v in losses.values()), rel=1e-5)
    with (tmp_path / "a" / "logs" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows if r["train/loss"]] == [0, 1]  # log_every=1, max_steps=2
    [tested] = [r for r in rows if r["test/loss"]]
    # fit's layout and names: test/<task>/<metric> per task, test/total_loss logged at the end.
    assert {f"test/{t}/{k}": v for t, values in summary["test"].items() for k, v in values.items()} == \
        {k: float(v) for k, v in tested.items() if k.count("/") == 2 and k.startswith("test/")}
    [final] = [r for r in rows if r.get("test/total_loss")]
    assert float(final["test/total_loss"]) == pytest.approx(summary["total_test_loss"])
    assert summary["total_test_loss"] == pytest.approx(float(tested["test/loss"]), rel=1e-6)
    assert summary["groups"] == ["sd"] and summary["main_metric"]["segment_semantic"]["name"] == "miou"
    record = run_record("central", summary, summary["test_loss"].keys())  # compare's runs.csv row
    assert record["total_test_loss"] == summary["total_test_loss"] and record["groups"] == "sd"
    printed = capsys.readouterr().out.splitlines()
    assert f"total test loss {summary['total_test_loss']:.4f}" in "\n".join(printed)
    assert any(line.split()[:1] == ["segment_semantic"] and "miou" in line for line in printed)

    # Same seed, same run: the model is built after seeding, so initial weights and results repeat.
    again = run(tmp_path / "b")
    assert all(torch.equal(v, built[1][1][k]) for k, v in before.items())
    assert again["test"] == summary["test"] and again["total_test_loss"] == summary["total_test_loss"]


def test_central_refuses_data_without_the_tasks(tmp_path: Path) -> None:
    class DepthOnly(SyntheticData):
        def setup(self, tasks):  # noqa: ANN001, ANN202 - a data source that ignores the request
            return super().setup(["depth_zbuffer"])

    with pytest.raises(ConfigError, match=r"no targets for \['normal'\]"):
        central(DepthOnly(), "dn", accelerator="cpu", out=tmp_path)
    with pytest.raises(ConfigError, match="tasks: unknown task 'x'"):
        central(DepthOnly(), "dx", accelerator="cpu", out=tmp_path)


def test_shipped_config_fits_the_central_signature() -> None:
    # The data source is swapped for the synthetic one; every other key must parse against central().
    config = yaml.safe_load((Path(__file__).parents[2] / "configs" / "central.yaml").read_text())
    config["data"] = {"class_path": "mas_lightning.data.synthetic.SyntheticData", "init_args": {"resolution": 32}}
    parser = ArgumentParser()
    parser.add_function_arguments(central, fail_untyped=True, skip={"resolved_config"})
    built = parser.instantiate(parser.parse_object(config))
    model = built.model(parse_tasks(built.tasks))
    assert model.tasks == ("segment_semantic", "depth_zbuffer", "normal", "keypoints2d", "edge_texture")
    assert isinstance(model.loss_weighting, EqualWeighting)
    assert model.hparams.preset == "tiny" and model.hparams.lr == 0.1
    assert built.batch_size == 64 and built.out == Path("runs/central")
