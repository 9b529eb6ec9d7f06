"""A rich progress display over rounds and the clients of the current round (rank 0 only)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mas_lightning.federated.config import Stage


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
