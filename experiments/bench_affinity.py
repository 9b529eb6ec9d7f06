"""What measuring lookahead affinity costs, and whether the cheap settings choose the same split as exact.

Three commands:

- ``step``: one measurement per variant, in plain training steps (forward of all tasks, backward, SGD step).
- ``overhead``: wall time of the merged all-in-one stage on mini-Taskonomy with an affinity callback against
  the same stage without one; runs are interleaved and repeated, medians reported.
- ``agreement``: one merged run carrying every variant's callback at once. Measuring leaves training
  bit-identical, so all variants see the same trajectory, and each variant's split (MAS's ``best_split``)
  is compared with the exact measurement's.

A variant is written ``method[:samples]@every``, e.g. ``exact@10`` or ``first_order:4@20``: ``method`` is the
estimator of :class:`~mas_lightning.methods.affinity_measurement.AffinityOptions` (exact, batched or first_order),
``samples`` its ``samples`` and ``every`` its ``every``. Affinity is measured as in a MAS run, by
:class:`~mas_lightning.methods.affinity_measurement.AffinityMeasurement`: at theta_t, before the optimiser step
of each measured batch.

    .venv/bin/python experiments/bench_affinity.py step --tasks='[sdnkt, all]'
    .venv/bin/python experiments/bench_affinity.py overhead --tasks=all --variants='[exact@10, first_order@10]'
    .venv/bin/python experiments/bench_affinity.py agreement --tasks=all --seeds='[0, 1]'
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jsonargparse import CLI
from lightning.fabric import Fabric

from mas_lightning.data.minitaskonomy import MiniTaskonomy
from mas_lightning.data.synthetic import random_batch
from mas_lightning.federated.aggregation import FedAvg
from mas_lightning.federated.config import FederatedConfig, Stage
from mas_lightning.federated.engine import FederatedEngine
from mas_lightning.federated.state import new_state
from mas_lightning.grouping import best_split, lookahead_affinity, split_score
from mas_lightning.methods.affinity_measurement import AffinityMeasurement, AffinityOptions
from mas_lightning.model import MultiTaskModel
from mas_lightning.tasks import letters, parse_tasks

STAGE = "merged"


@dataclass(frozen=True)
class Variant:
    """How affinity is measured: lookahead estimator (``method``), samples per measured batch, one step in ``every``."""

    method: str
    samples: int | None
    every: int

    @classmethod
    def parse(cls, text: str) -> Variant:
        head, _, every = text.partition("@")
        method, _, samples = head.partition(":")
        return cls(method, int(samples) if samples else None, int(every or 10))

    def __str__(self) -> str:
        return f"{self.method}{f':{self.samples}' if self.samples else ''}@{self.every}"

    def callback(self, stage_rounds: int, window: int, key: str = "affinity") -> AffinityMeasurement:
        """The measurement of the last ``window`` rounds of the ``stage_rounds``-round merged stage.

        ``key`` names it in the stage result and the checkpoint: measurements sharing one run need distinct keys.
        """
        options = AffinityOptions(estimator=self.method, every=self.every, samples=self.samples,  # type: ignore[arg-type]
                                  window=window, rounds="last")
        return AffinityMeasurement(STAGE, stage_rounds, options, key=key)


# ---------------------------------------------------------------- step: one measurement


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


def step(tasks: list[str] | None = None, preset: str = "tiny", batch_size: int = 16, resolution: int = 64,
         repeats: int = 5, threads: int = 1, device: str = "cpu", seed: int = 0) -> None:
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
        batch = {k: v.to(where) for k, v in random_batch(model.tasks, batch_size, resolution, seed).items()}
        for name, seconds, ratio in _step_rows(model, batch, repeats, where):
            print(f"{len(model.tasks):>5} {name:<28} {1000 * seconds:>9.1f} {ratio:>7.2f}", flush=True)


def _step_rows(model: MultiTaskModel, batch: dict[str, torch.Tensor], repeats: int,
               device: torch.device) -> list[tuple[str, float, float]]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.total_loss(model.task_losses(model(batch["rgb"]), batch)).backward()
        optimizer.step()

    def measure(method: str, samples: int | None) -> Callable[[], object]:
        return lambda: lookahead_affinity(model, batch, lr=0.1, weight_decay=1e-4, method=method,  # type: ignore
                                          max_samples=samples)

    base = _median_seconds(train_step, repeats, device)
    rows = [("training step", base, 1.0)]
    quarter = max(1, batch["rgb"].shape[0] // 4)
    for method, samples in [("exact", None), ("batched", None), ("first_order", None), ("exact", quarter),
                            ("first_order", quarter)]:
        seconds = _median_seconds(measure(method, samples), repeats, device)
        rows.append((f"{method}, max_samples={samples}" if samples else method, seconds, seconds / base))
    return rows


# ---------------------------------------------------------------- the merged stage on mini-Taskonomy


def _merged_stage(tasks: tuple[str, ...], rounds: int, callbacks: list[Any], seed: int, data: Any,
                  engine_config: FederatedConfig) -> tuple[float, float]:
    """Train the all-task stage for ``rounds`` rounds; returns (stage wall seconds, summed client seconds)."""
    fabric = Fabric(accelerator="cpu", devices=1, callbacks=callbacks)
    with tempfile.TemporaryDirectory() as folder:
        engine = FederatedEngine(
            fabric, data, engine_config,
            lambda group: MultiTaskModel(list(group), preset="tiny"),
            lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4),
            FedAvg(), seed, Path(folder), callbacks=callbacks)
        state = new_state()
        started = time.perf_counter()
        engine.run_stage(state, Stage(STAGE, [tasks], rounds, final=False))
        return time.perf_counter() - started, state["cost"]["client_s"]


def _data(tasks: tuple[str, ...]) -> Any:
    # The CPU-scale setting of configs/*.yaml: 8 buildings of 128 down to 32 images, 64 px.
    return MiniTaskonomy(resolution=64).setup(tasks)


ENGINE = FederatedConfig(clients_per_round=4, local_epochs=1, batch_size=16)


def overhead(tasks: list[str] | None = None, variants: list[str] | None = None, rounds: int = 3,
             first_round: int = 0, repeats: int = 3, threads: int = 1, seed: int = 0) -> None:
    """Print the median merged-stage wall time per variant and its overhead over the stage without affinity.

    Args:
        tasks: task sets, e.g. ``[sdnkt, all]``.
        variants: ``method[:samples]@every`` strings.
        rounds: rounds of the merged stage.
        first_round: affinity is measured from this round on (MAS: ``split_round - affinity.window``).
        repeats: runs per variant, interleaved with the other variants so that load drifts hit all alike.
        threads: CPU threads for torch.
        seed: seeds the run (the same trajectory for every variant).
    """
    if not 0 <= first_round < rounds:
        raise ValueError(f"first_round={first_round} must be in [0, rounds={rounds})")
    torch.set_num_threads(threads)
    chosen = [Variant.parse(v) for v in variants or ["exact@10", "first_order@10"]]
    print(f"# overhead of the affinity callback: mini-Taskonomy 64 px, tiny preset, {ENGINE.clients_per_round} "
          f"clients/round, batch {ENGINE.batch_size}, {rounds} rounds measured from round {first_round}, "
          f"threads={threads}, median of {repeats}")
    print(f"{'':>5} {'':<20} {'A/B runs: stage':>18} {'clients':>19} {'in-run: batches':>18} {'overhead':>9}")
    print(f"{'tasks':>5} {'variant':<20} {'s':>8} {'overhead':>9} {'s':>9} {'overhead':>9} {'measured':>8} {'':>9}")
    for task_set in tasks or ["sdnkt", "all"]:
        names = parse_tasks(task_set)
        data = _data(names)
        runs: dict[str, list[tuple[float, float, float, int]]] = {}
        for _ in range(repeats):
            for variant in [None, *chosen]:
                callbacks = [] if variant is None else [variant.callback(rounds, rounds - first_round)]
                wall, client = _merged_stage(names, rounds, callbacks, seed, data, ENGINE)
                measured = (callbacks[0].seconds, callbacks[0].measurements) if callbacks else (0.0, 0)
                runs.setdefault(str(variant), []).append((wall, client, *measured))
        base_wall = statistics.median(r[0] for r in runs["None"])
        base_client = statistics.median(r[1] for r in runs["None"])
        for name, values in runs.items():
            wall, client = statistics.median(r[0] for r in values), statistics.median(r[1] for r in values)
            # Within each run: time spent measuring over the rest of the stage (robust to load drifting
            # between runs, which the A/B columns are not).
            share = statistics.median(r[2] / (r[0] - r[2]) for r in values)
            label = "no affinity" if name == "None" else name
            print(f"{len(names):>5} {label:<20} {wall:>8.1f} {wall / base_wall - 1:>9.1%} {client:>9.1f} "
                  f"{client / base_client - 1:>9.1%} {values[0][3]:>8} {share:>9.1%}", flush=True)


def agreement(tasks: list[str] | None = None, variants: list[str] | None = None, reference: str = "exact@1",
              rounds: int = 7, window: int = 3, max_groups: int = 2, seeds: list[int] | None = None,
              threads: int = 1) -> None:
    """Print each variant's split next to the reference's, all measured on the same merged trajectory.

    Args:
        tasks: task sets, e.g. ``[sdnkt, all]``.
        variants: ``method[:samples]@every`` strings compared with the reference.
        reference: the exact measurement the variants must agree with.
        rounds: merged rounds before the split (MAS's ``split_round``).
        window: rounds before the split whose affinity decides (every variant measures only those).
        max_groups: at most this many groups.
        seeds: one merged run per seed.
        threads: CPU threads for torch.
    """
    torch.set_num_threads(threads)
    chosen = [Variant.parse(v) for v in [reference, *(variants or ["exact@10", "first_order@10"])]]
    print(f"# split agreement on mini-Taskonomy 64 px: {rounds} merged rounds, window {window}, "
          f"max_groups {max_groups}; reference {reference}")
    for task_set in tasks or ["sdnkt", "all"]:
        names = parse_tasks(task_set)
        data = _data(names)
        for seed in seeds or [0]:
            callbacks = [v.callback(rounds, window, key=f"affinity/{i}") for i, v in enumerate(chosen)]
            _merged_stage(names, rounds, callbacks, seed, data, ENGINE)
            matrices = [c.averaged() for c in callbacks]
            groups = [best_split(z, max_groups) for z in matrices]
            off = ~torch.eye(len(names), dtype=torch.bool)
            ref, best = matrices[0], split_score(matrices[0], groups[0])
            for variant, callback, z, chosen_groups in zip(chosen, callbacks, matrices, groups):
                # Off-diagonal entries only: the diagonal is large and would make any two matrices look alike.
                correlation = float(torch.corrcoef(torch.stack([ref[off], z[off]]))[0, 1])
                # How much worse the variant's split scores under the reference affinity (0: as good as its best).
                regret = best - split_score(ref, chosen_groups)
                split = "|".join(letters(names[i] for i in g) for g in chosen_groups)
                same = "reference" if variant is chosen[0] else ("same" if chosen_groups == groups[0] else "DIFFERENT")
                print(f"{letters(names):>9} seed {seed} {str(variant):<20} {callback.measurements:>4} batches  "
                      f"corr {correlation:6.3f}  split {split:<12} regret {regret:8.4f} of {best:.4f}  {same}",
                      flush=True)


if __name__ == "__main__":
    CLI([step, overhead, agreement])
