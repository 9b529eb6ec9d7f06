"""Wall time of one FedAvg workload in mas_lightning's engine and in Apple's pfl-research (``pfl``), interleaved.

The workload is bench_engine.py's: a synthetic federation where every client trains every round, the tiny
``MultiTaskModel`` on all the given tasks, ``local_steps`` SGD steps (momentum 0.9, weight decay 1e-4) of
``batch`` shuffled, randomly flipped images per client, the server averaging the clients' models by their
data size. Each side's run is timed from building its model to the end of its last round: mas_lightning's
``FederatedEngine`` (Fabric, update screening, cost accounting, a checkpoint and metrics row per round,
validation off as in bench_engine.py) and pfl's ``FederatedAveraging`` on its ``SimulatedBackend`` (one
process, no evaluation). The runs alternate (mas, pfl, pfl, mas, mas, pfl, ...: each pair starts with the
side the previous pair ended with) so that load from other jobs on a shared machine hits both alike; the
printed ratio is the median of the per-pair ratios pfl / mas (above 1: pfl is slower).

What differs, and is not compute: pfl averages the trainable parameters only (BatchNorm running statistics
stay those of the last client trained on its one model instance), applies the mean update through a central
SGD step of learning rate 1, and keeps a constant client learning rate; the engine averages parameters and
buffers and decays the learning rate per round. The forward, backward and optimiser work per client is the same.

Needs the ``pfl`` extra. pfl 0.6 pins ``attrs~=23`` and ``packaging~=25`` (older than this project's), so it
is best installed into its own virtual environment that also sees this one's packages::

    python -m venv /tmp/pflenv && echo "$PWD/.venv/lib/python3.11/site-packages" \\
        > /tmp/pflenv/lib/python3.11/site-packages/project.pth && /tmp/pflenv/bin/pip install "pfl>=0.6"
    OMP_NUM_THREADS=1 /tmp/pflenv/bin/python experiments/bench_pfl.py --threads=1
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from jsonargparse import CLI
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import LR, MOMENTUM, WEIGHT_DECAY, engine_rounds, setup  # noqa: E402

from mas_lightning.data.base import FederatedData, hflip, make_loader  # noqa: E402
from mas_lightning.federated import sampling  # noqa: E402
from mas_lightning.model import MultiTaskModel  # noqa: E402
from mas_lightning.tasks import parse_tasks  # noqa: E402


class _LossModule(nn.Module):
    """pfl's model contract around a ``MultiTaskModel``: ``loss(rgb, *targets)`` and ``metrics(...)``."""

    def __init__(self, model: MultiTaskModel, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def loss(self, rgb: Tensor, *targets: Tensor) -> Tensor:
        self.model.train()
        batch = dict(zip(self.keys, targets, strict=True))
        return self.model.total_loss(self.model.task_losses(self.model(rgb), batch))

    def metrics(self, *data: Tensor, **kwargs: Any) -> dict[str, Any]:
        return {}


def pfl_seconds(data: FederatedData, tasks: tuple[str, ...], clients: int, rounds: int, local_steps: int,
                batch: int, decoder_width: int, seed: int) -> float:
    """Wall seconds of ``rounds`` pfl FedAvg rounds over all ``clients``, from building the model."""
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNTrainHyperParams
    from pfl.model.pytorch import PyTorchModel

    keys = tuple(k for k in next(iter(make_loader(data.clients[0], 1))) if k != "rgb")  # targets and masks

    class ClientDataset(Dataset):
        """One client's data, iterated as the engine's clients are: shuffled, flipped, ``batch`` at a time."""

        def __init__(self, client: int) -> None:
            self.client, self.draws = client, 0
            super().__init__(raw_data=(torch.zeros(len(data.clients[client])),), user_id=str(client))

        def iter(self, batch_size: int | None):  # type: ignore[override]
            self.draws += 1
            gen = torch.Generator().manual_seed(seed * 1000 + self.client * 100 + self.draws)
            dataset = data.clients[self.client]
            for chunk in make_loader(dataset, batch, shuffle=True, generator=gen, drop_last=True):
                chunk = hflip(chunk, torch.rand(len(chunk["rgb"]), generator=gen) < 0.5)
                yield (chunk["rgb"], *(chunk[k] for k in keys))

    users = {str(c): ClientDataset(c) for c in range(clients)}
    federated = FederatedDataset(lambda user_id: users[user_id],
                                 get_user_sampler("minimize_reuse", list(users)),
                                 user_id_to_weight={u: len(data.clients[int(u)]) for u in users})
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sampling.derive_seed(seed, "init", tasks))
        module = _LossModule(MultiTaskModel(list(tasks), decoder_width=decoder_width), keys)
    model = PyTorchModel(module, functools.partial(torch.optim.SGD, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY),
                         torch.optim.SGD(module.parameters(), lr=1.0))
    params = NNAlgorithmParams(central_num_iterations=rounds, evaluation_frequency=10**6,
                               train_cohort_size=clients, val_cohort_size=None)
    train = NNTrainHyperParams(local_learning_rate=LR, local_num_epochs=None, local_batch_size=batch,
                               local_num_steps=local_steps)
    FederatedAveraging().run(algorithm_params=params, backend=SimulatedBackend(federated, None), model=model,
                             model_train_params=train, send_metrics_to_platform=False)
    return time.perf_counter() - started


def mas_seconds(fabric: Any, data: FederatedData, config: Any, tasks: tuple[str, ...], rounds: int,
                decoder_width: int, seed: int) -> float:
    """Wall seconds of ``rounds`` engine rounds, from building the engine (bench_engine's engine side)."""
    started = time.perf_counter()
    for _ in engine_rounds(fabric, data, config, tasks, rounds - 1, decoder_width, seed):  # yields rounds rounds
        pass
    return time.perf_counter() - started


def bench(tasks: str = "sdnkt", clients: int = 4, rounds: int = 4, local_steps: int = 5, batch: int = 16,
          resolution: int = 64, decoder_width: int = 32, pairs: int = 5, threads: int = 0, seed: int = 0) -> None:
    """Print both sides' median wall time and the median of the paired ratios pfl / mas_lightning.

    Args:
        tasks: task set of the one all-task model.
        clients: clients (all train every round).
        rounds: FedAvg rounds per run.
        local_steps: optimiser steps per client per round.
        batch: client batch size.
        resolution: image side in pixels.
        decoder_width: decoder width of the tiny preset model.
        pairs: (mas, pfl) run pairs; the first pair warms up and is not counted.
        threads: torch CPU threads (0: leave torch's default).
        seed: seed of the data, the initial weights and the batch orders.
    """
    if threads:
        torch.set_num_threads(threads)
    names = parse_tasks(tasks)
    fabric, data, config = setup("cpu", "32-true", names, clients, local_steps, batch, resolution, seed)
    import pfl

    print(f"tasks {tasks}, {clients} clients x {local_steps} steps x batch {batch} at {resolution} px, {rounds} rounds "
          f"per run, {pairs} pairs (first one warm-up), torch threads {torch.get_num_threads()}, "
          f"pfl {pfl.__version__ if hasattr(pfl, '__version__') else '?'}")
    times: list[tuple[float, float]] = []
    for pair in range(pairs):
        # Which side goes first alternates too, so neither always runs right after the other's allocations.
        sides = [lambda: mas_seconds(fabric, data, config, names, rounds, decoder_width, seed),
                 lambda: pfl_seconds(data, names, clients, rounds, local_steps, batch, decoder_width, seed)]
        order = [0, 1] if pair % 2 == 0 else [1, 0]
        measured = {side: sides[side]() for side in order}
        mas, other = measured[0], measured[1]
        print(f"pair {pair}: mas_lightning {mas:.2f} s, pfl {other:.2f} s, ratio {other / mas:.3f}"
              + (" (warm-up)" if pair == 0 else ""), flush=True)
        if pair > 0:
            times.append((mas, other))
    median = statistics.median
    print(f"median: mas_lightning {median(m for m, _ in times):.2f} s, pfl {median(p for _, p in times):.2f} s; "
          f"ratio pfl / mas_lightning {median(p / m for m, p in times):.3f} (median of {len(times)} paired ratios)")


if __name__ == "__main__":
    CLI(bench)
