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
from mas_lightning.tasks import TASKS, letters

FINAL_VAL_METRIC = "final/val/total_loss"
"""What fit logs at its end as the total validation loss of the models that serve the tasks: what a sweep
selects on (the per-round ``val/total_loss`` sums whatever groups a stage trains, e.g. one task of one-by-one)."""


def main_metric(task: str) -> tuple[str, bool]:
    """The metric a task is judged by (its name in ``test``, and whether higher is better), as in the MTL
    literature: mIoU for segmentation, abs. rel. for depth, mean angle for normals, L1 for every other task."""
    if TASKS[task].kind == "classification":
        return "miou", True
    return {"depth_zbuffer": ("abs_rel", False), "normal": ("angle_mean", False)}.get(task, ("l1", False))


def build_summary(method: Method, tasks: tuple[str, ...], rounds: int, state: RunState, seed: int) -> dict[str, Any]:
    """Per-task test losses and metrics from the model that serves each task, groups, and costs.

    ``total_test_loss`` is the sum of the per-task test losses, as in the paper; ``total_val_loss`` the same
    on the validation set (what sweeps may select on: test numbers are for the final report only).
    ``main_metric`` names each task's headline metric and its direction (``compare``'s Delta_m uses it).
    ``affinity_flops`` are the FLOPs of measuring affinity (``None`` when a resumed old checkpoint did not
    count them), kept apart from ``train_flops``; ``total_flops`` is their sum. ``identity`` is the run's
    fingerprint and the configuration it hashes (``None`` when the state has none), which ``compare``
    checks before reusing the run.
    """
    history = state["history"]
    served = method.serving(tasks, history)
    per_task: dict[str, dict[str, float]] = {}
    val_loss: dict[str, float] = {}
    for task in tasks:
        stage, key = served[task]
        results = history[stage]["test"][key]
        per_task[task] = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith(f"{task}/")}
        val_loss[task] = history[stage]["val"][key][f"{task}/loss"]
    diverged = {t: per_task[t]["loss"] for t in tasks if not math.isfinite(per_task[t]["loss"])}
    if diverged:
        raise RunError(f"the test loss is not finite ({diverged}): the run diverged and summary.json is not "
                       f"written; lower the learning rate (--optimizer.init_args.lr)")
    groups = sorted({key for _, key in served.values()}, key=lambda k: (-len(k), k))
    cost = state["cost"]
    affinity_flops = _affinity_flops(history)
    return _json_safe({
        "method": type(method).__name__,
        "tasks": letters(tasks),
        "groups": groups,
        "test": per_task,
        "test_loss": {t: per_task[t]["loss"] for t in tasks},
        "total_test_loss": sum(per_task[t]["loss"] for t in tasks),
        "main_metric": {t: {"name": name, "higher_is_better": higher, "value": per_task[t].get(name)}
                        for t, (name, higher) in ((t, main_metric(t)) for t in tasks)},
        "val_loss": val_loss,
        "total_val_loss": sum(val_loss.values()),
        "rounds": rounds,
        "stages": [_stage_entry(h) for h in history],
        "seed": seed,
        "wall_s": round(cost["wall_s"], 3),
        "client_compute_s": round(cost["client_s"], 3),
        "energy_j": round(cost["energy_j"], 3) if cost["energy_available"] else None,
        "train_flops": cost["train_flops"],
        "affinity_flops": affinity_flops,
        "total_flops": None if affinity_flops is None else cost["train_flops"] + affinity_flops,
        "samples_trained": cost["samples"],
        "identity": state.get("identity") or None,
    })


def _affinity_flops(history: list[StageResult]) -> float | None:
    """FLOPs of every affinity measurement of the run (any entry carrying ``measurements``); ``None`` if unknown."""
    total = 0.0
    for result in history:
        for value in result.values():
            if isinstance(value, dict) and "measurements" in value:
                if value.get("flops") is None:
                    return None
                total += value["flops"]
    return total


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
