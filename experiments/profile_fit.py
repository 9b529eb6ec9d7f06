"""Where a ``fit`` run's wall time goes: a breakdown table with exclusive timers, as % of wall.

The run is a real ``python -m mas_lightning fit`` (the CLI's ``main``, in this process) into a temporary
folder. Before it starts, the engine's phases are wrapped in timers that nest: a phase's time excludes the
phases inside it (FLOP counting inside a client's training is FLOP counting, not client compute), so the rows
add up to the wall time. Rows:

- start-up imports: from this script's start to the fit command's module imported (torch, Lightning, ours);
- client compute: ``LocalTrainer.train`` (forward, backward, optimiser steps, batches) without the rows below;
- client hooks: the client-side callbacks (``on_client_*``, ``on_train_batch_*``: MAS's affinity measurement);
- evaluation: every validation and test pass (``FederatedEngine.evaluate``);
- FLOP counting: torch's ``FlopCounterMode`` passes (training FLOPs per group, affinity FLOPs per setting);
- model builds: ``MultiTaskModel`` constructors (working models, fresh weights, the split's subsets);
- aggregation: screening and adding each client's state, the mean, the server update;
- checkpoint and files: the per-round checkpoint and the files written on save (metrics.csv, figures);
- data setup: the data source's ``setup`` (render or read the cache);
- other: the rest (argument parsing, Fabric, the remaining hooks, the split decision, summary); the parts of
  it that are timed on their own (the command line's parser, each remaining hook, MAS's decision) are listed
  under it.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/profile_fit.py                    # configs/mas.yaml
    OMP_NUM_THREADS=1 .venv/bin/python experiments/profile_fit.py -c configs/quickstart.yaml
    OMP_NUM_THREADS=1 .venv/bin/python experiments/profile_fit.py -- --rounds=4     # extra fit options

The data cache is filled by a first run; run twice to profile a warm cache.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import functools  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import mas_lightning.commands.fit  # noqa: E402, F401  (what `fit` imports before it runs)

IMPORTED = time.perf_counter()

CLIENT_HOOKS = ("on_client_start", "on_client_end", "on_train_batch_start", "on_train_batch_end")


class ExclusiveTimers:
    """Seconds per label, each call's time minus the time of the timed calls inside it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[Any]] = []

    def run(self, label: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._stack.append([label, time.perf_counter(), 0.0])
        try:
            return function(*args, **kwargs)
        finally:
            label, start, inner = self._stack.pop()
            elapsed = time.perf_counter() - start
            self.seconds[label] += elapsed - inner
            self.calls[label] += 1
            if self._stack:
                self._stack[-1][2] += elapsed

    def wrap(self, owner: Any, name: str, label: str | Callable[..., str]) -> None:
        """Time every call of ``owner.name`` (a function of a module or class) under ``label``."""
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            return self.run(label(*args) if callable(label) else label, original, *args, **kwargs)

        setattr(owner, name, timed)


def install(timers: ExclusiveTimers) -> None:
    from lightning.fabric import Fabric

    from mas_lightning import cli
    from mas_lightning.data.minitaskonomy import MiniTaskonomy
    from mas_lightning.federated import accounting
    from mas_lightning.federated.aggregation import FedAvg, WeightedSum
    from mas_lightning.federated.client import LocalTrainer
    from mas_lightning.federated.engine import FederatedEngine
    from mas_lightning.methods import MAS, affinity_measurement
    from mas_lightning.model import MultiTaskModel

    timers.wrap(LocalTrainer, "train", "client compute")
    timers.wrap(Fabric, "call", lambda _fabric, hook, *rest: (
        "client hooks (affinity measurement)" if hook in CLIENT_HOOKS
        else "checkpoint and files" if hook == "on_save" else f"  hook {hook}"))
    timers.wrap(FederatedEngine, "evaluate", "evaluation")
    timers.wrap(accounting, "train_flops_per_sample", "FLOP counting")
    timers.wrap(affinity_measurement, "count_flops", "FLOP counting")
    timers.wrap(MultiTaskModel, "__init__", "model builds")
    for owner, name in ((FederatedEngine, "_add_update"), (WeightedSum, "mean"), (FedAvg, "server_update")):
        timers.wrap(owner, name, "aggregation")
    timers.wrap(FederatedEngine, "save", "checkpoint and files")
    timers.wrap(MiniTaskonomy, "setup", "data setup")
    timers.wrap(cli, "build_parser", "  command line (parser)")
    timers.wrap(MAS, "decide", "  MAS split decision")


ROWS = ("start-up imports", "client compute", "client hooks (affinity measurement)", "evaluation",
        "FLOP counting", "model builds", "aggregation", "checkpoint and files", "data setup", "other")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="configs/mas.yaml")
    parser.add_argument("extra", nargs="*", help="more fit options, after --")
    args = parser.parse_args()

    from mas_lightning.cli import main as cli_main

    timers = ExclusiveTimers()
    install(timers)
    with tempfile.TemporaryDirectory() as out:
        summary = cli_main(["fit", "-c", args.config, f"--out={out}", "--name=profile", *args.extra])
    wall = time.perf_counter() - STARTED
    seconds = dict(timers.seconds)
    seconds["start-up imports"] = IMPORTED - STARTED
    seconds["other"] = wall - sum(v for k, v in seconds.items() if k != "other")  # includes the details below
    seconds["other"] += sum(v for k, v in seconds.items() if k.startswith("  "))
    print(f"\nfit -c {args.config} {' '.join(args.extra)}: wall {wall:.1f} s, total test loss "
          f"{summary['total_test_loss']:.4f}")
    print(f"{'phase':<38}{'seconds':>9}{'% wall':>9}{'calls':>8}")
    for row in ROWS:
        calls = "" if row in ("start-up imports", "other") else str(timers.calls.get(row, 0))
        print(f"{row:<38}{seconds.get(row, 0.0):>9.2f}{100 * seconds.get(row, 0.0) / wall:>8.1f}%{calls:>8}")
    details = sorted((k for k in seconds if k.startswith("  ")), key=lambda k: -seconds[k])
    if details:
        print("of which 'other' (timed on their own):")
    for row in details:
        print(f"{row:<38}{seconds[row]:>9.2f}{100 * seconds[row] / wall:>8.1f}%{timers.calls[row]:>8}")
    client = seconds.get("client compute", 0.0) + seconds.get("client hooks (affinity measurement)", 0.0)
    print(f"{'client compute + client hooks':<38}{client:>9.2f}{100 * client / wall:>8.1f}%")


if __name__ == "__main__":
    main()
