"""Engine overhead: wall time of the federated engine's rounds over a bare PyTorch loop doing the same work.

The bare loop is what a person would write by hand for one FedAvg round: for each sampled client, load the
global weights into one model, reset the optimiser, run the same local batches (same loader, same flips,
same seeded order), then add the client's state to a float64 weighted sum and average. The engine does the
same plus what makes it a framework: Fabric (device, precision, hooks), per-client NaN/Inf checks, cost
accounting and one atomic checkpoint plus metrics.csv per round. Validation is switched off in both
(``eval_every`` beyond the run), so the ratio measures the loop, not evaluation. Both loops end with the
same global weights (checked), so they did the same work.

Rounds alternate (engine round, bare round, engine round, ...) so that a busy shared machine slows both
alike; the ratio is the median of the per-round ratios. The CPU-time ratio (process time) is printed too:
on a machine shared with other jobs it is the steadier of the two. On CUDA it also runs bf16-mixed and reports
the peak GPU memory of a round for a few and for many clients per round (the engine keeps one working
model per group and a running sum, so the two should be about equal).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench_engine.py --threads=1      # CPU, tiny preset, 64 px
    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench_engine.py --threads=1 --resolution=32 --batch=4 \
        --local_steps=2 --decoder_width=8 --rounds=6 --repeats=2                   # small rounds: fixed costs show
    .venv/bin/python experiments/bench_engine.py --device=cuda --resolution=256 --batch=32

Measured on 2 shared CPU cores (torch 2.15): ratio 0.97 and 1.03 for the first command (about 5.2 s per
round), 0.97 and 1.02 for the second (about 0.4 s per round; 1.11 and 1.12 before the engine's per-client
path was made cheaper). Single threads: with OpenMP threads on cores other jobs also use, times swing widely.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from jsonargparse import CLI
from lightning.fabric import Fabric
from torch import Tensor

from mas_lightning.data.base import FederatedData, hflip, make_loader
from mas_lightning.data.synthetic import SyntheticData
from mas_lightning.federated import sampling
from mas_lightning.federated.aggregation import FedAvg
from mas_lightning.federated.config import FederatedConfig, Stage
from mas_lightning.federated.engine import FederatedEngine
from mas_lightning.federated.state import new_state
from mas_lightning.model import MultiTaskModel
from mas_lightning.tasks import letters, parse_tasks

LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 1e-4
Round = tuple[float, float, dict[str, Tensor], float]
"""What each loop yields per round: wall seconds, process CPU seconds, global weights, peak GPU bytes."""


def sgd(params: Iterator[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_rounds(fabric: Fabric, data: FederatedData, config: FederatedConfig, tasks: tuple[str, ...],
                  rounds: int, decoder_width: int, seed: int, *,
                  build: Callable[[tuple[str, ...]], MultiTaskModel] | None = None,
                  prepare: Callable[[FederatedEngine], None] | None = None) -> Iterator[Round]:
    """Yield (wall s, CPU s, global weights, peak bytes) after each engine round; round 0 is a warm-up.

    ``build`` replaces the model (default: ``decoder_width`` on the default preset); ``prepare`` adjusts the
    engine before its first round (e.g. the stacked-clients benchmark's trainer)."""
    build = build or (lambda g: MultiTaskModel(list(g), decoder_width=decoder_width))
    with tempfile.TemporaryDirectory() as run_dir:
        engine = FederatedEngine(fabric, data, config, build, sgd, FedAvg(), seed, Path(run_dir))  # type: ignore[arg-type]
        if prepare is not None:
            prepare(engine)
        state = new_state()
        stage = Stage("bench", [tasks], rounds + 2)  # never the stage's last round: no forced validation
        engine.start_stage(state, stage)
        for round_ in range(rounds + 1):
            synchronize(fabric.device)
            if fabric.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(fabric.device)
            wall, cpu = time.perf_counter(), time.process_time()
            engine.run_round(state, stage, round_)
            synchronize(fabric.device)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            peak = torch.cuda.max_memory_allocated(fabric.device) if fabric.device.type == "cuda" else 0
            yield wall, cpu, state["weights"][0], float(peak)


def bare_rounds(device: torch.device, data: FederatedData, config: FederatedConfig, tasks: tuple[str, ...],
                rounds: int, decoder_width: int, seed: int, bf16: bool) -> Iterator[Round]:
    """The same rounds written as a plain PyTorch FedAvg loop; yields like :func:`engine_rounds`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sampling.derive_seed(seed, "init", tasks))  # the engine's initial weights
        model = MultiTaskModel(list(tasks), decoder_width=decoder_width)
    model = model.to(device)
    optimizer = sgd(model.parameters())
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    count = sampling.clients_per_round(config.clients_per_round, len(data.clients))
    total_rounds = rounds + 2
    for round_ in range(rounds + 1):
        synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        clients = sampling.sample_clients(seed, 0, round_, len(data.clients), count, 0.0)
        lr = LR * (1.0 - round_ / total_rounds) ** config.poly_power
        sums = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in weights.items()}
        weight = 0.0
        for client in clients:
            model.load_state_dict(weights)
            optimizer.state.clear()
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            gen = sampling.generator(seed, "batches", 0, round_, client, letters(tasks))
            loader = make_loader(data.clients[client], config.batch_size, shuffle=True, generator=gen, drop_last=True)
            for step, batch in enumerate(loader):
                if step == config.local_steps:
                    break
                batch = hflip(batch, torch.rand(len(batch["rgb"]), generator=gen) < 0.5)
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    preds = model(batch["rgb"])
                loss = model.total_loss(model.task_losses(preds, batch))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            size = float(len(data.clients[client]))
            for key, value in model.state_dict().items():
                sums[key] += value.detach().to(torch.float64) * size
            weight += size
        weights = {k: (sums[k] / weight).round().to(v.dtype) if not v.is_floating_point()
                   else (sums[k] / weight).to(v.dtype) for k, v in weights.items()}
        synchronize(device)
        yield time.perf_counter() - wall, time.process_time() - cpu, weights, 0.0


def setup(device: str, precision: str, tasks: tuple[str, ...], clients: int, local_steps: int, batch: int,
          resolution: int, seed: int) -> tuple[Fabric, FederatedData, FederatedConfig]:
    """Fabric, a synthetic federation where every client trains each round, and the engine options."""
    # Each client holds exactly local_steps batches, so the loader-based bare loop sees the same batches.
    data = SyntheticData(clients=clients, sizes=(batch * local_steps,), resolution=resolution, seed=seed).setup(tasks)
    config = FederatedConfig(clients_per_round=clients, local_steps=local_steps, batch_size=batch,
                             eval_every=10**6, flip=True)
    return Fabric(accelerator=device, devices=1, precision=precision), data, config  # type: ignore[arg-type]


def engine_peak_mib(clients: int, tasks: tuple[str, ...], local_steps: int, batch: int, resolution: int,
                    decoder_width: int, seed: int = 0) -> float:
    """Peak CUDA memory of one bf16-mixed engine round (after a warm-up round), the engine alone on the GPU."""
    fabric, data, config = setup("cuda", "bf16-mixed", tasks, clients, local_steps, batch, resolution, seed)
    peaks = [r[3] for r in engine_rounds(fabric, data, config, tasks, 1, decoder_width, seed)]
    return peaks[-1] / 2**20


def compare(device: str, precision: str, tasks: tuple[str, ...], clients: int, rounds: int, local_steps: int,
            batch: int, resolution: int, decoder_width: int, repeats: int, seed: int = 0) -> dict[str, float]:
    """Engine and bare rounds in lockstep (engine round r, bare round r, ...): median times and ratios.

    Alternating single rounds pairs each engine round with a bare round run moments later, so load from
    other jobs on a shared machine hits both alike; the ratio is the median of the per-pair ratios.
    """
    fabric, data, config = setup(device, precision, tasks, clients, local_steps, batch, resolution, seed)
    pairs: list[tuple[Round, Round]] = []
    worst = 0.0
    for _ in range(repeats):
        engine = engine_rounds(fabric, data, config, tasks, rounds, decoder_width, seed)
        bare = bare_rounds(fabric.device, data, config, tasks, rounds, decoder_width, seed,
                           precision.startswith("bf16"))
        for round_, (e, b) in enumerate(zip(engine, bare)):
            worst = max(worst, max((e[2][k].double() - v.double()).abs().max().item() for k, v in b[2].items()))
            if round_ > 0:  # round 0 warms up: allocator, first model build, the one FLOP count per group
                pairs.append((e, b))
    median = statistics.median
    return {"engine_s": median(e[0] for e, _ in pairs), "bare_s": median(b[0] for _, b in pairs),
            "ratio": median(e[0] / b[0] for e, b in pairs), "cpu_ratio": median(e[1] / b[1] for e, b in pairs),
            "max_weight_diff": worst}


def bench(device: str = "cpu", tasks: str = "sdnkt", clients: int = 4, rounds: int = 3, local_steps: int = 5,
          batch: int = 16, resolution: int = 64, decoder_width: int = 32, repeats: int = 3, threads: int = 0,
          memory_clients: tuple[int, int] = (4, 16)) -> None:
    """Print the engine/bare ratio on ``device`` (and, on CUDA, bf16-mixed and peak memory vs clients).

    Args:
        device: "cpu" or "cuda".
        tasks: task set of the one all-task model.
        clients: clients per round (all clients of the synthetic federation train every round).
        rounds: timed rounds per repeat (after one untimed warm-up round).
        local_steps: optimiser steps per client per round.
        batch: client batch size.
        resolution: image side in pixels.
        decoder_width: decoder width of the tiny preset model.
        repeats: engine/bare alternations.
        threads: torch CPU threads (0: leave torch's default).
        memory_clients: clients per round compared for peak GPU memory.
    """
    if threads:
        torch.set_num_threads(threads)
    names = parse_tasks(tasks)
    print(f"tasks {letters(names)}, {clients} clients x {local_steps} steps x batch {batch} at {resolution} px, "
          f"{rounds} rounds x {repeats} repeats, torch threads {torch.get_num_threads()}")
    precisions = ["32-true"] + (["bf16-mixed"] if device == "cuda" else [])
    for precision in precisions:
        r = compare(device, precision, names, clients, rounds, local_steps, batch, resolution, decoder_width, repeats)
        print(f"{device} {precision}: engine {r['engine_s']:.4f} s/round, bare loop {r['bare_s']:.4f} s/round, "
              f"ratio {r['ratio']:.3f} (CPU-time ratio {r['cpu_ratio']:.3f}; "
              f"max |weight difference| engine vs bare {r['max_weight_diff']:.2e})")
    if device == "cuda":
        for count in memory_clients:
            peak = engine_peak_mib(count, names, local_steps, batch, resolution, decoder_width)
            print(f"cuda bf16-mixed, {count} clients per round: peak GPU memory of a round {peak:.1f} MiB")


if __name__ == "__main__":
    CLI(bench)
