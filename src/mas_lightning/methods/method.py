"""What a method is: a small recipe of stages, plus the callbacks it needs, plus who serves each task.

The engine runs stages; it knows nothing of MAS, TAG or HOA. A method looks at the results of the stages
run so far (``history``, kept in the checkpoint) and names the next one, so a resumed run asks the same
questions and gets the same answers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from mas_lightning.federated.callbacks import Callback
from mas_lightning.federated.config import Stage
from mas_lightning.federated.state import StageResult
from mas_lightning.tasks import letters


class Method(ABC):
    """Base class of the methods chosen in the config (``method: class_path: ...``)."""

    @abstractmethod
    def next_stage(self, tasks: tuple[str, ...], rounds: int, history: list[StageResult]) -> Stage | None:
        """The stage to run after those in ``history`` (``None`` when done).

        Args:
            tasks: the run's task set, canonical order.
            rounds: the run's round budget ``R`` (each method says how it spends it).
            history: results of the finished stages (see ``FederatedEngine.run_stage``) in order.
        """

    def check(self, tasks: tuple[str, ...], rounds: int) -> None:
        """Raise :class:`~mas_lightning.errors.ConfigError` when the method cannot run this task set or budget."""
        return None

    def callbacks(self) -> list[Callback]:
        """Callbacks the method needs in the loop (e.g. affinity measurement)."""
        return []

    def decide(self, tasks: tuple[str, ...], result: StageResult) -> None:
        """Add what the method decides from a finished stage to that stage's result (e.g. MAS's split).

        Called before the result joins the history and the checkpoint; it must be a pure function of the
        result, so a run killed while deciding decides the same on resume.
        """
        return None

    def serving(self, tasks: tuple[str, ...], history: list[StageResult]) -> dict[str, tuple[int, str]]:
        """For each task, the (stage index, group key) whose model answers for it at test time.

        Default: the last final stage holding a group that contains the task.
        """
        served: dict[str, tuple[int, str]] = {}
        for index, result in enumerate(history):
            if result["final"]:
                for group in result["groups"]:
                    for task in group:
                        served[task] = (index, letters(group))
        missing = [t for t in tasks if t not in served]
        if missing:
            raise RuntimeError(f"no trained model serves tasks {missing}")
        return served
