"""Finished runs reopened: ``load_run``'s models, the ``test`` command and ``export`` against ``summary.json``.

Two tiny runs through the real command line (so that ``config.yaml`` is written): MAS split into two groups
after its merged round, and one-by-one on two tasks, whose first task's model is trained in stage 0 and is
no longer the checkpoint's current weights when the run ends. The test losses are recomputed here with a
plain ``DataLoader`` loop over the test split, independently of the engine's evaluation.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

import mas_lightning
from mas_lightning.cli import main
from mas_lightning.data.synthetic import SyntheticData
from mas_lightning.errors import ConfigError
from mas_lightning.model import MultiTaskModel
from mas_lightning.tasks import parse_tasks

DATA = '{"class_path": "mas_lightning.data.synthetic.SyntheticData", "init_args": {"clients": 3, "sizes": [8], ' \
       '"resolution": 32}}'
COMMON = ["--data", DATA, "--engine.clients_per_round", "2", "--engine.batch_size", "4", "--engine.local_steps", "1",
          "--engine.eval_batch_size", "5", "--model.decoder_width", "8", "--accelerator", "cpu"]
RUNS = {
    "mas": ["--tasks", "dnt", "--rounds", "3", "--method", "mas_lightning.methods.MAS", "--method.split_round", "1",
            "--method.max_groups", "2"],
    "one_by_one": ["--tasks", "dn", "--rounds", "1", "--method", "mas_lightning.methods.OneByOne"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    for name, args in RUNS.items():
        main(["fit", *COMMON, *args, f"--out={out}", f"--name={name}"])
    return {name: out / name for name in RUNS}


def plain_test_losses(model: torch.nn.Module, dataset: Any, tasks: tuple[str, ...],
                      batch_size: int) -> dict[str, float]:
    """Each task's mean test loss over samples, from a plain DataLoader (default collate) and the model."""
    sums = dict.fromkeys(tasks, 0.0)
    count = 0
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size):
            preds = model(batch["rgb"], tasks=tasks)
            losses = model.task_losses(preds, batch)
            for task in tasks:
                sums[task] += float(losses[task]) * len(batch["rgb"])
            count += len(batch["rgb"])
    return {task: total / count for task, total in sums.items()}


def summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def folder_digest(run_dir: Path) -> dict[str, str]:
    """Every file of the run folder by its relative path, with its content hash."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(RUNS))
def test_load_run_models_reproduce_the_summary_test_losses(runs: dict[str, Path], name: str) -> None:
    run = mas_lightning.load_run(runs[name])
    expected = summary(runs[name])
    assert run.summary == expected
    assert run.config["method"]["class_path"].endswith({"mas": "MAS", "one_by_one": "OneByOne"}[name])
    assert run.tasks == parse_tasks(run.config["tasks"])
    assert sorted(set(run.serving.values())) == sorted(expected["groups"])
    data = SyntheticData(clients=3, sizes=(8,), resolution=32).setup(run.tasks)
    for task in run.tasks:
        model = run.model(task)
        assert not model.training and task in model.tasks
        # The run's eval batch size: a masked loss is a per-batch mean over valid pixels, weighted by samples.
        recomputed = plain_test_losses(model, data.test, (task,), batch_size=run.engine.eval_batch_size)[task]
        assert recomputed == pytest.approx(expected["test_loss"][task], rel=1e-6, abs=1e-9)
    if name == "mas":  # two groups, each serving its own tasks from the split stage
        assert len(run.groups) == 2 and set(run.stages.values()) == {1}
        assert run.models["depth_zbuffer"] is run.groups[run.serving["depth_zbuffer"]]
    else:  # the first task's model comes from stage 0, no longer the checkpoint's current weights
        assert run.stages == {"d": 0, "n": 1}


def test_load_run_refuses_an_unknown_task(runs: dict[str, Path]) -> None:
    run = mas_lightning.load_run(runs["one_by_one"])
    with pytest.raises(ConfigError, match="'t' is not a task of the run"):
        run.model("t")
    with pytest.raises(ConfigError, match="'q'"):
        run.model("q")


def test_test_command_prints_and_writes_the_summary_total(runs: dict[str, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = runs["mas"]
    before = folder_digest(run_dir)
    expected = summary(run_dir)
    capsys.readouterr()
    returned = main(["test", "--run", str(run_dir)])
    printed = capsys.readouterr().out
    total = float(re.search(r"total test loss (\d+\.\d+)", printed).group(1))
    assert total == pytest.approx(expected["total_test_loss"], abs=5e-5)
    for task, loss in expected["test_loss"].items():
        assert re.search(rf"{task}\s+group \w+\s+loss {loss:.4f}", printed)
    written = sorted((run_dir / "evaluations").glob("test-*.json"))
    assert [p.name for p in written][-1:] == [f"test-{len(written):03d}.json"]
    result = json.loads(written[-1].read_text())
    assert result["total_test_loss"] == pytest.approx(expected["total_test_loss"], rel=1e-9)
    assert result["test_loss"] == pytest.approx(expected["test_loss"], rel=1e-9)
    assert returned["total_test_loss"] == result["total_test_loss"]
    after = folder_digest(run_dir)
    assert {k: v for k, v in after.items() if not k.startswith("evaluations/")} == \
           {k: v for k, v in before.items() if not k.startswith("evaluations/")}  # the run is untouched
    # A second evaluation (validation split, one task) gets a new file; the first stays as it was.
    main(["test", "--run", str(run_dir), "--split", "val", "--tasks", "d"])
    assert folder_digest(run_dir)[f"evaluations/{written[-1].name}"] == after[f"evaluations/{written[-1].name}"]
    val = json.loads(sorted((run_dir / "evaluations").glob("val-*.json"))[-1].read_text())
    assert val["val_loss"] == {"depth_zbuffer": pytest.approx(expected["val_loss"]["depth_zbuffer"], rel=1e-9)}


def test_test_command_on_another_data_source(runs: dict[str, Path]) -> None:
    other = '{"class_path": "mas_lightning.data.synthetic.SyntheticData", "init_args": {"clients": 3, ' \
            '"sizes": [8], "resolution": 32, "seed": 7}}'
    result = main(["test", "--run", str(runs["mas"]), "--data", other, "--tasks", "nt"])
    run = mas_lightning.load_run(runs["mas"])
    data = SyntheticData(clients=3, sizes=(8,), resolution=32, seed=7).setup(run.tasks)
    for task in ("normal", "edge_texture"):
        recomputed = plain_test_losses(run.model(task), data.test, (task,), batch_size=5)[task]
        assert result["test_loss"][task] == pytest.approx(recomputed, rel=1e-6)
    assert set(result["test_loss"]) == {"normal", "edge_texture"}
    assert result["data"]["init_args"]["seed"] == 7


def test_export_loads_into_a_fresh_model_and_into_lightning(runs: dict[str, Path], tmp_path: Path) -> None:
    run = mas_lightning.load_run(runs["mas"])
    main(["export", "--run", str(runs["mas"]), "--out", str(tmp_path / "export")])
    index = json.loads((tmp_path / "export" / "serving.json").read_text())
    assert set(index["serving"]) == set(run.tasks)
    data = SyntheticData(clients=3, sizes=(8,), resolution=32).setup(run.tasks)
    rgb = next(iter(DataLoader(data.test, batch_size=4)))["rgb"]
    for task in run.tasks:
        path = tmp_path / "export" / index["serving"][task]
        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint["mas_lightning"]["model_class"] == "mas_lightning.model.multitask.MultiTaskModel"
        fresh = MultiTaskModel(**checkpoint["hyper_parameters"])
        fresh.load_state_dict(checkpoint["state_dict"])  # strict: every key, no extra
        fresh.eval()
        served = run.model(task)
        with torch.no_grad():
            for key, value in served(rgb).items():
                assert torch.equal(fresh(rgb)[key], value)
            lightning_model = MultiTaskModel.load_from_checkpoint(path).eval()
            assert torch.equal(lightning_model(rgb)[task], served(rgb)[task])
    # A lightning.Trainer tests the exported checkpoint to the run's own test losses.
    path = tmp_path / "export" / index["serving"]["depth_zbuffer"]
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]
    trainer = lightning.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                                enable_model_summary=False)
    tested = trainer.test(MultiTaskModel(**hparams), DataLoader(data.test, batch_size=5), ckpt_path=path,
                          verbose=False)[0]
    for task in parse_tasks(hparams["tasks"]):
        assert tested[f"test/{task}/loss"] == pytest.approx(run.summary["test_loss"][task], rel=1e-5)


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_runs_and_tasks_exit_2_with_one_line(runs: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_run"
    assert str(missing) in _one_line_exit_2(["test", "--run", str(missing)], capsys)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs["one_by_one"], unfinished)
    (unfinished / "summary.json").unlink()
    err = _one_line_exit_2(["export", "--run", str(unfinished), "--out", str(tmp_path / "x")], capsys)
    assert str(unfinished) in err and "summary.json" in err
    err = _one_line_exit_2(["test", "--run", str(runs["one_by_one"]), "--tasks", "t"], capsys)
    assert "'t'" in err and "'dn'" in err
    err = _one_line_exit_2(["export", "--run", str(runs["one_by_one"]), "--out", str(tmp_path / "e"), "--tasks",
                            "zz"], capsys)
    assert "'z'" in err
    main(["export", "--run", str(runs["one_by_one"]), "--out", str(tmp_path / "e")])
    err = _one_line_exit_2(["export", "--run", str(runs["one_by_one"]), "--out", str(tmp_path / "e")], capsys)
    assert str(tmp_path / "e" / "d.ckpt") in err
    with pytest.raises(ConfigError, match=str(missing)):
        mas_lightning.load_run(missing)


def test_a_config_with_retired_model_options_still_opens(runs: dict[str, Path], tmp_path: Path) -> None:
    """Configs written when MultiTaskModel took optimiser settings that fit never read open without them;
    any other key the current fit does not accept is refused with the file named."""
    expected = mas_lightning.load_run(runs["mas"])
    old = tmp_path / "old"
    shutil.copytree(runs["mas"], old)
    config = yaml.safe_load((old / "config.yaml").read_text())
    config["model"]["init_args"].update(lr=0.3, momentum=0.5, weight_decay=0.0, poly_power=2.0)
    (old / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run = mas_lightning.load_run(old)
    for key, model in run.groups.items():
        for name, value in model.state_dict().items():
            assert torch.equal(value, expected.groups[key].state_dict()[name])
    config["model"]["init_args"]["no_such_option"] = 1
    (old / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(ConfigError, match=f"{old / 'config.yaml'}.*no_such_option"):
        mas_lightning.load_run(old)
