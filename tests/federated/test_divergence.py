"""Results you can trust: a diverging run stops with one line naming where, absurd client updates are dropped,
and summary.json never holds NaN.

Expected aggregates and norms are computed here with plain torch from what callbacks recorded, never with the
engine's ``WeightedSum`` or ``update_norm``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
from federated.test_engine import weighted_mean
from lightning.fabric import Fabric
from torch import Tensor

from mas_lightning import cli
from mas_lightning.data.synthetic import SyntheticData
from mas_lightning.errors import RunError
from mas_lightning.federated.aggregation import FedAvg
from mas_lightning.federated.callbacks import BatchContext, Callback, ClientContext, RoundContext
from mas_lightning.federated.checkpoint import load_checkpoint, load_state
from mas_lightning.federated.config import FederatedConfig, Stage
from mas_lightning.federated.engine import FederatedEngine
from mas_lightning.federated.sampling import sample_clients
from mas_lightning.federated.state import RunState, new_state
from mas_lightning.methods import AllInOne
from mas_lightning.model import MultiTaskModel
from mas_lightning.model.losses import task_losses
from mas_lightning.report.summary import build_summary

TASKS = ("depth_zbuffer", "normal")
SIZES = {0: 8, 1: 16, 2: 8, 3: 16}
"""Samples of each client of ``SyntheticData(clients=4, sizes=(8, 16))``: the FedAvg weights."""
NORM = "update_norm/dn"


def make_engine(tmp_path: Path, callbacks: list[Callback] | None = None, *, lr: float = 0.05,
                data: SyntheticData | None = None, **config: Any) -> FederatedEngine:
    settings = {"clients_per_round": 3, "batch_size": 4, "local_steps": 2, "eval_every": 1, **config}
    return FederatedEngine(
        Fabric(accelerator="cpu", devices=1, callbacks=callbacks or []),
        (data or SyntheticData(clients=4, sizes=(8, 16))).setup(TASKS),
        FederatedConfig(**settings),
        lambda tasks: MultiTaskModel(list(tasks), decoder_width=8),
        lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9),
        FedAvg(),
        0,
        tmp_path,
        callbacks=callbacks,
    )


def val_losses(weights: dict[str, Tensor], engine: FederatedEngine) -> dict[str, float]:
    """Per-task validation losses of ``weights``, evaluated here on the whole validation set as one batch."""
    model = MultiTaskModel(list(TASKS), decoder_width=8)
    model.load_state_dict(weights)
    model.eval()
    batch = engine.data.val.batch(list(range(len(engine.data.val))))
    with torch.no_grad():
        return {task: loss.item() for task, loss in task_losses(model(batch["rgb"]), batch).items()}


def norm_of_update(state: dict[str, Tensor], start: dict[str, Tensor]) -> float:
    """sqrt(sum of squared differences) over the floating tensors, in float64."""
    return math.sqrt(sum(float(((v.double() - start[k].double()) ** 2).sum())
                         for k, v in state.items() if v.is_floating_point()))


# ----------------------------------------------------------------------------------------- divergence
class HotLearningRate(Callback):
    """From run round ``start`` on, every local step runs at learning rate ``lr`` (a schedule gone wrong)."""

    def __init__(self, start: int, lr: float) -> None:
        self.start, self.lr = start, lr

    def on_train_batch_start(self, ctx: BatchContext) -> None:
        if ctx.run_round >= self.start:
            for group in ctx.optimizer.param_groups:
                group["lr"] = self.lr


def test_a_huge_learning_rate_stops_the_run_naming_stage_round_and_task(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, lr=1000.0)
    state = new_state()
    with pytest.raises(RunError) as caught:
        engine.run_stage(state, Stage("all", [TASKS], 3))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("stage 'all' diverged in round 0: the validation loss of task ")
    assert "lower the learning rate" in message and "no checkpoint was written" in message
    # The tasks named are exactly those whose loss is not finite, recomputed here from the diverged weights.
    named = set(re.findall(r"of task (\w+) is (?:nan|inf|-inf)", message))
    recomputed = val_losses(state["weights"][0], engine)
    assert named and named == {t for t, loss in recomputed.items() if not math.isfinite(loss)}
    assert state["metrics"] == [] and not (tmp_path / "checkpoints" / "last.pt").exists()


def test_divergence_keeps_the_checkpoint_of_the_last_good_round(tmp_path: Path) -> None:
    # Round 0 trains normally; from round 1 the steps run at lr 1000. The update screen is off so that the
    # absurd updates reach the global model and the validation loss, which must stop the run.
    engine = make_engine(tmp_path, [HotLearningRate(1, 1000.0)], max_update_ratio=None)
    state = new_state()
    with pytest.raises(RunError, match=r"^stage 'all' diverged in round 1: the validation loss of task \w+ is "
                                       r".*checkpoints/last\.pt holds the run up to round 0"):
        engine.run_stage(state, Stage("all", [TASKS], 3))
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert saved["round"] == 1 and [r["round"] for r in saved["metrics"]] == [0]
    assert math.isfinite(saved["metrics"][0]["val/total_loss"])
    assert all(math.isfinite(v) for v in val_losses(saved["weights"][0], engine).values())
    assert [r["round"] for r in state["metrics"]] == [0]  # the diverged round left no row either


class PoisonAfterValidation(Callback):
    """After the stage's last round is validated, set the global weights to Inf: only the test can see it."""

    def on_round_end(self, ctx: RoundContext, row: dict[str, Any]) -> None:
        if ctx.round == ctx.stage.rounds - 1:
            for value in ctx.state["weights"][0].values():
                if value.is_floating_point():
                    value.fill_(float("inf"))


def test_a_non_finite_test_loss_at_the_stage_end_stops_the_run(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, [PoisonAfterValidation()])
    state = new_state()
    with pytest.raises(RunError, match=r"^stage 'all' diverged at its end, after round 1: the test loss of task "
                                       r"depth_zbuffer is nan, of task normal is nan \(group dn\); lower the"):
        engine.run_stage(state, Stage("all", [TASKS], 2))


def test_the_cli_exits_1_with_one_line_and_writes_no_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    data = '{"class_path": "mas_lightning.data.synthetic.SyntheticData", "init_args": {"clients": 4}}'
    argv = ["fit", "--data", data,
            "--tasks", "dn", "--rounds", "2", "--engine.clients_per_round", "2", "--engine.batch_size", "4",
            "--engine.local_steps", "2", "--engine.eval_every", "1", "--model.decoder_width", "8",
            "--accelerator", "cpu", "--optimizer", "torch.optim.SGD", "--optimizer.init_args.lr", "1000",
            "--optimizer.init_args.momentum", "0.9", f"--out={tmp_path}", "--name=hot"]  # fmt: skip
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r"error: fit stopped: stage 'all-in-one' diverged in round 0: the validation loss of task "
                        r"\w+ is (nan|inf).*lower the learning rate \(--optimizer\.init_args\.lr\).*", last), err
    assert not (tmp_path / "hot" / "summary.json").exists()


# ----------------------------------------------------------------------------------------- absurd updates
class Planter(Callback):
    """Multiplies the parameters of ``client``'s trained model by ``factor`` in run round ``round``; keeps a copy of
    every other client's trained state, by round."""

    def __init__(self, client: int, round_: int, factor: float = 1e6) -> None:
        self.client, self.round, self.factor = client, round_, factor
        self.states: dict[int, list[tuple[int, dict[str, Tensor]]]] = {}

    def on_client_end(self, ctx: ClientContext) -> None:
        if ctx.run_round == self.round and ctx.client == self.client:
            with torch.no_grad():
                for param in ctx.model.parameters():
                    param.mul_(self.factor)
            return
        state = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        self.states.setdefault(ctx.run_round, []).append((ctx.client, state))


@pytest.mark.parametrize(("round_", "options", "limit"), [
    (1, {}, r"\(engine\.max_update_ratio=1000 x the median update norm [\d.e+]+ of round 0\)"),  # default, round 1+
    (0, {"max_update_ratio": None, "max_update_norm": 1e3}, r"\(engine\.max_update_norm=1000\)"),  # round 0 too
], ids=["ratio", "absolute"])  # fmt: skip
def test_an_absurd_finite_update_is_dropped_and_the_others_are_averaged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, round_: int, options: dict[str, Any], limit: str
) -> None:
    planted = sample_clients(0, 0, round_, 4, 3, 0.0)[0]
    planter = Planter(planted, round_)
    engine = make_engine(tmp_path, [planter], **options)
    start = engine.fresh_weights(TASKS)
    state = new_state()
    with caplog.at_level(logging.WARNING):
        engine.run_stage(state, Stage("all", [TASKS], round_ + 1))
    assert f"client {planted} (c{planted}) sent an update of norm " in caplog.text
    assert re.search(limit, caplog.text), caplog.text
    assert [r["dropped_updates"] for r in state["metrics"]] == [0] * round_ + [1]
    others = planter.states[round_]
    assert planted not in [c for c, _ in others] and len(others) == 2
    expected = weighted_mean([s for _, s in others], [SIZES[c] for c, _ in others])
    for key, value in state["weights"][0].items():
        assert value.dtype == expected[key].dtype, key
        assert torch.allclose(value.double(), expected[key].double(), rtol=1e-6, atol=1e-7), key
    # Each round's row holds the median norm of its accepted updates (from the round's global start).
    norms = [norm_of_update(s, start) for _, s in planter.states[0]]  # round 0's accepted updates
    assert len(norms) == (2 if round_ == 0 else 3)
    assert state["metrics"][0][NORM] == pytest.approx(statistics.median(norms), rel=1e-4)


def test_without_the_bound_the_planted_update_reaches_the_global_model(tmp_path: Path) -> None:
    """The control: the planted update is finite, so only the bound keeps it out; let in, it wrecks the run."""
    planted = sample_clients(0, 0, 1, 4, 3, 0.0)[0]
    planter = Planter(planted, 1)
    state = new_state()
    with pytest.raises(RunError, match=r"^stage 'all' diverged in round 1: the validation loss"):
        make_engine(tmp_path, [planter], max_update_ratio=None).run_stage(state, Stage("all", [TASKS], 2))
    assert max(v.abs().max().item() for v in state["weights"][0].values() if v.is_floating_point()) > 1e4


def test_the_bound_survives_a_resume(tmp_path: Path) -> None:
    """The reference median lives in the checkpoint: a run resumed after round 0 drops the same update."""
    planted = sample_clients(0, 0, 1, 4, 3, 0.0)[0]
    stage = Stage("all", [TASKS], 2)
    full = new_state()
    make_engine(tmp_path / "full", [Planter(planted, 1)]).run_stage(full, stage)

    part = make_engine(tmp_path / "part")
    state = new_state()
    part.start_stage(state, stage)
    part.run_round(state, stage, 0)  # then the process dies
    callbacks: list[Callback] = [Planter(planted, 1)]
    resumed = make_engine(tmp_path / "part", callbacks)
    state = load_state(tmp_path / "part" / "checkpoints" / "last.pt", callbacks, resumed.fabric.device)
    resumed.run_stage(state, stage)
    assert [r["dropped_updates"] for r in state["metrics"]] == [0, 1]
    for key, value in full["weights"][0].items():
        assert torch.equal(value, state["weights"][0][key]), key


@pytest.mark.parametrize(("options", "message"), [
    ({"max_update_ratio": 1.0}, r"engine\.max_update_ratio=1\.0 must be > 1"),
    ({"max_update_ratio": float("nan")}, r"engine\.max_update_ratio=nan must be > 1"),
    ({"max_update_norm": 0.0}, r"engine\.max_update_norm=0\.0 must be > 0"),
], ids=["ratio-1", "ratio-nan", "norm-0"])  # fmt: skip
def test_a_bound_that_would_drop_healthy_updates_is_refused(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FederatedConfig(**options)


def test_the_default_bound_leaves_a_healthy_run_bit_identical(tmp_path: Path) -> None:
    """Clients of 4 and 32 samples, one local epoch each (1 and 8 steps): update norms spread widely."""
    def run(name: str, **options: Any) -> RunState:
        state = new_state()
        engine = make_engine(tmp_path / name, data=SyntheticData(clients=4, sizes=(4, 32)), local_steps=None,
                             local_epochs=1, **options)
        engine.run_stage(state, Stage("all", [TASKS], 4))
        return state

    default, off = run("default"), run("off", max_update_ratio=None)
    assert FederatedConfig().max_update_ratio == 1000.0 and FederatedConfig().max_update_norm is None
    assert [r["dropped_updates"] for r in default["metrics"]] == [0, 0, 0, 0]
    assert all(NORM in r for r in default["metrics"])  # every round had a reference for the next one
    for key, value in off["weights"][0].items():
        assert torch.equal(value, default["weights"][0][key]), key
    strip = [[{k: v for k, v in r.items() if k != "wall_s"} for r in s["metrics"]] for s in (default, off)]
    assert strip[0] == strip[1]


# ----------------------------------------------------------------------------------------- summary.json
def test_summary_json_never_holds_nan(tmp_path: Path) -> None:
    engine = make_engine(tmp_path)
    state = new_state()
    result = engine.run_stage(state, Stage("all-in-one", [TASKS], 1))
    result["test"]["dn"]["normal/angle_mean"] = float("nan")  # an undefined metric...
    result["split"] = {"score": float("inf")}  # ...or any other non-finite entry a callback added
    state["history"].append(result)
    summary = build_summary(AllInOne(), TASKS, 1, state, 0)
    json.dumps(summary, allow_nan=False)  # strict JSON: raises on NaN/Infinity
    assert summary["test"]["normal"]["angle_mean"] is None and summary["stages"][0]["split"]["score"] is None
    assert math.isfinite(summary["total_test_loss"])

    result["test"]["dn"]["normal/loss"] = float("nan")  # a diverged result that got past the engine
    with pytest.raises(RunError, match=r"the test loss is not finite .*'normal': nan.*summary\.json is not written"):
        build_summary(AllInOne(), TASKS, 1, state, 0)
