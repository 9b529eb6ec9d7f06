"""``summary.json``: what a run achieved and what it cost, from its final state.

It never holds NaN or Infinity (not JSON; most readers reject them): a non-finite test loss stops with a
:class:`~mas_lightning.errors.RunError` (the engine already stops a diverging run before its end), and any
other non-finite number (an undefined metric, an affinity entry) is written as ``null``.
"""

from __future__ import annotations

import math
from typing import Any

from mas_lightning.errors import RunError
from mas_lightning.federated.state import RunState, StageResult
from mas_lightning.methods.method import Method
from mas_lightning.tasks import letters


def build_summary(method: Method, tasks: tuple[str, ...], rounds: int, state: RunState, seed: int) -> dict[str, Any]:
    """Per-task test losses and metrics from the model that serves each task, groups, and costs.

    ``total_test_loss`` is the sum of the per-task test losses, as in the paper. ``identity`` is the run's
    fingerprint and the configuration it hashes (``None`` when the state has none), which ``compare``
    checks before reusing the run.
    """
    history = state["history"]
    served = method.serving(tasks, history)
    per_task: dict[str, dict[str, float]] = {}
    for task in tasks:
        stage, key = served[task]
        results = history[stage]["test"][key]
        per_task[task] = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith(f"{task}/")}
    diverged = {t: per_task[t]["loss"] for t in tasks if not math.isfinite(per_task[t]["loss"])}
    if diverged:
        raise RunError(f"the test loss is not finite ({diverged}): the run diverged and summary.json is not "
                       f"written; lower the learning rate (--optimizer.init_args.lr)")
    groups = sorted({key for _, key in served.values()}, key=lambda k: (-len(k), k))
    cost = state["cost"]
    return _json_safe({
        "method": type(method).__name__,
        "tasks": letters(tasks),
        "groups": groups,
        "test": per_task,
        "test_loss": {t: per_task[t]["loss"] for t in tasks},
        "total_test_loss": sum(per_task[t]["loss"] for t in tasks),
        "rounds": rounds,
        "stages": [_stage_entry(h) for h in history],
        "seed": seed,
        "wall_s": round(cost["wall_s"], 3),
        "client_compute_s": round(cost["client_s"], 3),
        "energy_j": round(cost["energy_j"], 3) if cost["energy_available"] else None,
        "train_flops": cost["train_flops"],
        "samples_trained": cost["samples"],
        "identity": state.get("identity") or None,
    })


def _stage_entry(result: StageResult) -> dict[str, Any]:
    """A stage as summary.json shows it: its groups as letters, what callbacks and the method added.

    The per-round affinity matrices stay in ``affinity.json``; the averaged one that decided is kept.
    """
    entry: dict[str, Any] = {"name": result["name"], "groups": [letters(g) for g in result["groups"]]}
    for key, value in result.items():
        if key in ("name", "groups", "val", "test", "final"):
            continue
        if key == "affinity":
            value = {k: v for k, v in value.items() if k != "per_round"}
        entry[key] = value
    return entry


def _json_safe(value: Any) -> Any:
    """``value`` with each NaN or infinite float replaced by ``None``, so that summary.json is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_json_safe(v) for v in value)
    return value
