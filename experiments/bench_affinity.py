"""How much one lookahead-affinity measurement costs, in plain training steps, for each variant.

A training step is what a client does per batch anyway: forward of all tasks, backward of the summed loss,
one SGD step. MAS measures affinity every ``lookahead_every`` batches, so a ratio r here adds about
r / lookahead_every to local training time.

    .venv/bin/python experiments/bench_affinity.py --tasks='[sdnkt, all]' --threads=1
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from jsonargparse import CLI

from mas_lightning.affinity import lookahead_affinity
from mas_lightning.model import MultiTaskModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from toy_model import taskonomy_batch  # noqa: E402  (the random batch in the documented convention)


def _median_seconds(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    run()  # warm-up: first calls pay for kernel selection and allocator growth
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(
    tasks: list[str] | None = None,
    preset: str = "tiny",
    batch_size: int = 8,
    resolution: int = 64,
    repeats: int = 5,
    threads: int = 1,
    device: str = "cpu",
    seed: int = 0,
) -> None:
    """Print the median time of one measurement per variant, relative to one training step.

    Args:
        tasks: task sets to measure, e.g. ``[sdnkt, all]`` (5 and 9 tasks).
        preset: model preset (see ``mas_lightning.model.presets``).
        batch_size: samples per batch.
        resolution: image side in pixels (the tiny preset is meant for 64).
        repeats: timed runs per figure; the median is reported.
        threads: CPU threads for torch (1 avoids oversubscription on shared machines).
        device: ``cpu`` or ``cuda``.
        seed: seeds the model and the batch.
    """
    torch.set_num_threads(threads)
    where = torch.device(device)
    print(f"# preset={preset} batch={batch_size} res={resolution} threads={threads} device={device} repeats={repeats}")
    print(f"{'tasks':>5} {'variant':<28} {'ms':>9} {'x step':>7}")
    for task_set in tasks or ["sdnkt", "all"]:
        torch.manual_seed(seed)
        model = MultiTaskModel(task_set, preset=preset).to(where).train()  # type: ignore[arg-type]
        batch = {k: v.to(where) for k, v in taskonomy_batch(model.tasks, batch_size, resolution, seed).items()}
        for name, seconds, ratio in _bench_model(model, batch, repeats, where):
            print(f"{len(model.tasks):>5} {name:<28} {1000 * seconds:>9.1f} {ratio:>7.2f}", flush=True)


def _bench_model(
    model: MultiTaskModel, batch: dict[str, torch.Tensor], repeats: int, device: torch.device
) -> list[tuple[str, float, float]]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.total_loss(model.task_losses(model(batch["rgb"]), batch)).backward()
        optimizer.step()

    def measure(method: str, max_samples: int | None = None) -> Callable[[], object]:
        return lambda: lookahead_affinity(
            model,
            batch,
            lr=0.1,
            weight_decay=1e-4,
            method=method,
            max_samples=max_samples,  # type: ignore[arg-type]
        )

    quarter = max(1, batch["rgb"].shape[0] // 4)
    variants = {
        "exact": measure("exact"),
        "batched": measure("batched"),
        "first_order": measure("first_order"),
        f"exact, max_samples={quarter}": measure("exact", quarter),
    }
    base = _median_seconds(step, repeats, device)
    rows = [("training step", base, 1.0)]
    for name, run in variants.items():
        seconds = _median_seconds(run, repeats, device)
        rows.append((name, seconds, seconds / base))
    return rows


if __name__ == "__main__":
    CLI(bench)
