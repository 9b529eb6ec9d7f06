"""Clients per second of the engine one client after another against K clients at once (``engine.stacked_clients``).

For each K, a round samples K clients (each with ``local_steps`` batches of ``batch`` images) and trains them
with the FedAvg engine twice: one by one (``stacked_clients: 1``) and all K stacked (``stacked_clients: K``).
Rounds alternate (one-by-one round, stacked round, ...) so that load from other jobs on a shared machine hits
both alike; each figure is a median over the timed rounds (round 0 of each engine is an untimed warm-up), and
the speed-up is the median of the per-pair ratios. Validation is off (``eval_every`` beyond the run), so the
figures are the client loop's. The largest difference between the two modes' global weights is printed as a
check that they did the same work (float32: equal up to rounding grown over the local steps).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench_stacked_clients.py --threads=1          # CPU, tiny, 64 px
    .venv/bin/python experiments/bench_stacked_clients.py --device=cuda                         # fp32 and bf16-mixed
    .venv/bin/python experiments/bench_stacked_clients.py --device=cuda --preset=paper --resolution=256

On CUDA it also runs bf16-mixed and prints the peak GPU memory of a stacked round for each K. The paper preset
(ResNet-34 trunk, 256 px) is too slow for K up to 64 on a 2-core CPU (minutes per round); pass smaller
``--ks`` to try it there.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from jsonargparse import CLI
from lightning.fabric import Fabric
from torch import Tensor

from mas_lightning.data.synthetic import SyntheticData
from mas_lightning.federated.config import FederatedConfig
from mas_lightning.federated.engine import FederatedEngine
from mas_lightning.federated.stacked_clients import StackedTrainer
from mas_lightning.model import MultiTaskModel
from mas_lightning.tasks import letters, parse_tasks

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark
from bench_engine import engine_rounds  # noqa: E402

Round = tuple[float, dict[str, Tensor], float]
"""Per round: wall seconds, global weights, peak GPU bytes."""


def rounds_of(device: str, precision: str, tasks: tuple[str, ...], clients: int, stacked: int, rounds: int,
              local_steps: int, batch: int, resolution: int, preset: str, seed: int = 0) -> Iterator[Round]:
    """Yield (wall s, global weights, peak bytes) after each round of an engine; round 0 is a warm-up.

    ``stacked``: 0 trains one client after another, K > 0 K clients at a time."""
    fabric = Fabric(accelerator=device, devices=1, precision=precision)  # type: ignore[arg-type]
    # Every client holds exactly local_steps batches and trains every round.
    data = SyntheticData(clients=clients, sizes=(batch * local_steps,), resolution=resolution, seed=seed).setup(tasks)
    config = FederatedConfig(clients_per_round=clients, local_steps=local_steps, batch_size=batch,
                             eval_every=10**6, stacked_clients=max(stacked, 1))

    def stack(engine: FederatedEngine) -> None:
        if stacked:  # K = 1 too: the stacked path with a stack of one
            engine.stacked = StackedTrainer(engine, size=stacked)

    for wall, _, weights, peak in engine_rounds(fabric, data, config, tasks, rounds, 0, seed, prepare=stack,
                                                build=lambda g: MultiTaskModel(list(g), preset=preset)):
        yield wall, weights, peak


def compare(device: str, precision: str, tasks: tuple[str, ...], k: int, rounds: int, local_steps: int, batch: int,
            resolution: int, preset: str) -> dict[str, float]:
    """One-by-one and stacked rounds of K clients in lockstep: medians of clients/s and of the paired ratio."""
    one = rounds_of(device, precision, tasks, k, 0, rounds, local_steps, batch, resolution, preset)
    stacked = rounds_of(device, precision, tasks, k, k, rounds, local_steps, batch, resolution, preset)
    pairs, worst, peak = [], 0.0, 0.0
    for round_, (a, b) in enumerate(zip(one, stacked)):
        worst = max(worst, max((a[1][key].double() - v.double()).abs().max().item() for key, v in b[1].items()))
        peak = max(peak, b[2])
        if round_ > 0:
            pairs.append((a[0], b[0]))
    median = statistics.median
    return {"one_by_one": k / median(a for a, _ in pairs), "stacked": k / median(b for _, b in pairs),
            "speedup": median(a / b for a, b in pairs), "max_weight_diff": worst, "peak_mib": peak / 2**20}


def bench(device: str = "cpu", tasks: str = "sdnkt", ks: tuple[int, ...] = (1, 4, 16, 64), rounds: int = 3,
          local_steps: int = 2, batch: int = 16, resolution: int = 64, preset: str = "tiny", threads: int = 0) -> None:
    """Print clients per second of both modes for each K (on CUDA for fp32 and bf16-mixed).

    Args:
        device: "cpu" or "cuda".
        tasks: task set of the one all-task model.
        ks: clients per round, each trained K at a time by the stacked engine.
        rounds: timed rounds per mode (after one untimed warm-up round).
        local_steps: optimiser steps per client per round.
        batch: client batch size.
        resolution: image side in pixels.
        preset: model preset ("tiny" or "paper").
        threads: torch CPU threads (0: leave torch's default).
    """
    if threads:
        torch.set_num_threads(threads)
    names = parse_tasks(tasks)
    print(f"tasks {letters(names)}, preset {preset}, {local_steps} steps x batch {batch} at {resolution} px per "
          f"client, {rounds} timed rounds per mode, torch threads {torch.get_num_threads()}, device {device}")
    precisions = ["32-true"] + (["bf16-mixed"] if device == "cuda" else [])
    for precision in precisions:
        for k in ks:
            r = compare(device, precision, names, k, rounds, local_steps, batch, resolution, preset)
            memory = f", stacked peak GPU memory {r['peak_mib']:.0f} MiB" if device == "cuda" else ""
            print(f"{device} {precision} K={k:3d}: one by one {r['one_by_one']:7.2f} clients/s, stacked "
                  f"{r['stacked']:7.2f} clients/s, speed-up {r['speedup']:.2f} (max |weight difference| "
                  f"{r['max_weight_diff']:.1e}){memory}", flush=True)


if __name__ == "__main__":
    CLI(bench)
