"""``summary.json``: what a run achieved and what it cost, from its final state."""

from __future__ import annotations

from typing import Any

from mas_lightning.methods.base import Method
from mas_lightning.tasks import letters


def build_summary(method: Method, tasks: tuple[str, ...], rounds: int, state: dict[str, Any], seed: int) -> dict:
    """Per-task test losses and metrics from the model that serves each task, groups, and costs.

    ``total_test_loss`` is the sum of the per-task test losses, as in the paper.
    """
    history = state["history"]
    served = method.serving(tasks, history)
    per_task: dict[str, dict[str, float]] = {}
    for task in tasks:
        stage, key = served[task]
        results = history[stage]["test"][key]
        per_task[task] = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith(f"{task}/")}
    groups = sorted({key for _, key in served.values()}, key=lambda k: (-len(k), k))
    cost = state["cost"]
    return {
        "method": type(method).__name__,
        "tasks": letters(tasks),
        "groups": groups,
        "test": per_task,
        "test_loss": {t: per_task[t]["loss"] for t in tasks},
        "total_test_loss": sum(per_task[t]["loss"] for t in tasks),
        "rounds": rounds,
        "stages": [{"name": h["name"], "groups": ["".join(letters(g)) for g in h["groups"]], **{
            k: v for k, v in h.items() if k not in ("name", "groups", "val", "test", "final")}} for h in history],
        "seed": seed,
        "wall_s": round(cost["wall_s"], 3),
        "client_compute_s": round(cost["client_s"], 3),
        "energy_j": round(cost["energy_j"], 3) if cost["energy_available"] else None,
        "train_flops": cost["train_flops"],
        "samples_trained": cost["samples"],
    }
