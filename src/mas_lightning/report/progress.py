"""What a run shows while it runs (rank 0 only): rich progress bars on a terminal, and printed lines everywhere
(one per stage and round, the split decision, the final summary), so that a log file shows the run too."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mas_lightning.federated.callbacks import Callback, RoundContext, StageContext
from mas_lightning.federated.config import Stage
from mas_lightning.tasks import letters


class RoundProgress:
    """Two bars: rounds of the stage, and client trainings (clients x groups) of the round.

    Silent when not on a terminal.
    """

    def __init__(self, enabled: bool = True) -> None:
        console = Console(stderr=True)
        self.enabled = enabled and console.is_terminal
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=console, disable=not self.enabled,
        )
        self._stage: Any = None
        self._clients: Any = None
        self._per_round = 1
        self.stages: list[dict[str, Any]] = []
        """Per stage shown: its name, rounds completed on the bar, and the bar's total (kept for checks)."""

    def __enter__(self) -> RoundProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def start_stage(self, stage: Stage, clients_per_round: int) -> None:
        """Show a new stage's round bar; ``clients_per_round`` counts client trainings (clients x groups)."""
        if self._stage is not None:
            self._progress.remove_task(self._stage)
            self._progress.remove_task(self._clients)
        self._per_round = max(clients_per_round, 1)
        self._stage = self._progress.add_task(f"stage {stage.name}", total=stage.rounds)
        self._clients = self._progress.add_task("  clients", total=self._per_round)
        self.stages.append({"name": stage.name, "completed": 0, "total": stage.rounds})

    def client_done(self) -> None:
        """Advance the client bar; a full bar means a round is done."""
        if self._clients is None:
            return
        self._progress.advance(self._clients)
        task = self._progress.tasks[[t.id for t in self._progress.tasks].index(self._clients)]
        if task.completed >= self._per_round:
            self._progress.advance(self._stage)
            self.stages[-1]["completed"] += 1
            self._progress.reset(self._clients, total=self._per_round)


def _clock(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _groups(groups: Any) -> str:
    return " / ".join(letters(g) if not isinstance(g, str) else g for g in groups)


class RunLog(Callback):
    """One printed line per stage start and per round, on rank 0, terminal or not (``| tee``, nohup, a job log).

    A round's line: stage, round/total of the stage, the run's round counter, the groups trained, the mean
    client training loss (sum over tasks, ``train/total_loss``), the validation total when the round measured
    it, the round's seconds and the stage's ETA (the mean seconds of its rounds in this session times the
    rounds left). On a terminal the lines scroll above the rich progress bars.
    """

    state_key = "RunLog"

    def __init__(self) -> None:
        self._round_started = 0.0
        self._stage: int | None = None
        self._stage_seconds: list[float] = []

    def on_stage_start(self, ctx: StageContext) -> None:
        if ctx.engine.fabric.global_rank == 0:
            print(f"stage {ctx.stage.name}: groups {_groups(ctx.stage.groups)}, {ctx.stage.rounds} rounds", flush=True)

    def on_round_start(self, ctx: RoundContext) -> None:
        if self._stage != ctx.state["stage"]:
            self._stage, self._stage_seconds = ctx.state["stage"], []  # the ETA averages this stage's rounds only
        self._round_started = time.perf_counter()

    def on_round_end(self, ctx: RoundContext, row: dict[str, Any]) -> None:
        seconds = time.perf_counter() - self._round_started
        self._stage_seconds.append(seconds)
        if ctx.engine.fabric.global_rank != 0:
            return
        left = ctx.stage.rounds - ctx.round - 1
        eta = left * sum(self._stage_seconds) / len(self._stage_seconds)
        parts = [f"{ctx.stage.name}", f"round {ctx.round + 1}/{ctx.stage.rounds}", f"run round {row['run_round']}",
                 f"groups {_groups(ctx.state['groups'])}"]
        if "train/total_loss" in row:
            parts.append(f"train {row['train/total_loss']:.4f}")
        if "val/total_loss" in row:
            parts.append(f"val {row['val/total_loss']:.4f}")
        parts += [f"{seconds:.1f} s", f"ETA {_clock(eta)}"]
        print(" | ".join(parts), flush=True)


def decision_line(result: Mapping[str, Any]) -> str | None:
    """The line announcing a stage's split decision (MAS: ``split`` in the stage result), or None."""
    split = result.get("split")
    if not split:
        return None
    return f"split after {result['name']}: groups {_groups(split['groups'])} (score {split['score']:.4f})"


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """The run's final summary: groups, per task the test loss and main metric, the total and the cost."""
    lines = [f"groups {_groups(summary['groups'])}"]
    width = max(len(t) for t in summary["test_loss"])
    for task, loss in summary["test_loss"].items():
        main = summary.get("main_metric", {}).get(task) or {}
        value = main.get("value")
        shown = f"  {main['name']} {value:.4f}" if main and value is not None else ""
        lines.append(f"  {task:<{width}}  test loss {loss:.4f}{shown}")
    flops = summary.get("total_flops") or summary.get("train_flops")
    cost = f"client compute {summary['client_compute_s']:.1f} s, wall {summary['wall_s']:.1f} s"
    if flops:
        cost += f", {flops:.3g} FLOPs"
    lines.append(f"total test loss {summary['total_test_loss']:.4f} | {cost}")
    return lines
