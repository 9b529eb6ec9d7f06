"""Loading speed of Taskonomy at paper scale: the PNG reader against the prepared shards, and whether a GPU waits.

Renders mini-Taskonomy at 256 px, exports it in the Taskonomy layout as 512 px PNG files (the release's size,
``--file-size``), prepares shards at 256 px with all nine tasks, then measures samples per second of:

- ``png``: the PNG reader (``Taskonomy``), batches from ``make_loader`` in the training process (what ``fit``
  does with ``num_workers: 0``: 1 + 9 PNG decodes and resizes per sample);
- ``png-workers``: the same with ``--workers`` DataLoader worker processes;
- ``shards``: ``TaskonomyShards`` batches from ``make_loader``, gathered from the memory maps and decoded to
  float32 on the host (what ``fit`` does with ``decode_on: host``);
- ``shards-stored``: the compact rows only (uint8/uint16; what ``fit`` loads by default, decoding them on the
  device).

Each timing is one shuffled pass over ``--samples`` samples; the methods run interleaved ``--repeats`` times
so that load from other jobs hits them alike, and the medians (and their ratios) are printed with the load
average. Then the arithmetic of a GPU step of the paper preset (ResNet-34 trunk, 256 px, nine tasks): its
training FLOPs per sample (counted by torch's flop counter), divided into a sustained GPU throughput
(``--gpu-tflops``, default 200: about a fifth of an H100/H200's dense bf16 peak), gives the samples per second a
GPU consumes; the loader must deliver at least that.

    python experiments/bench_taskonomy_shards.py                      # 2 buildings x 48 views, 5 repeats
    python experiments/bench_taskonomy_shards.py --repeats 7 --samples 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mas_lightning.data import MiniTaskonomy, Taskonomy, TaskonomyShards
from mas_lightning.data.base import make_loader
from mas_lightning.data.taskonomy_export import export_minitaskonomy
from mas_lightning.data.taskonomy_shards import ShardImages
from mas_lightning.federated.accounting import train_flops_per_sample
from mas_lightning.model import MultiTaskModel


def prepare(workdir: Path, views: int, buildings: int, resolution: int, file_size: int) -> tuple[dict, Path]:
    """Export (once) and prepare (once) the benchmark's data; the Taskonomy block and the shards folder."""
    source = MiniTaskonomy(clients=buildings, images_per_client=views, size_ratio=1.0, val_buildings=1,
                           test_buildings=1, eval_images_per_building=4, resolution=min(resolution, 256),
                           cache_dir=workdir / "cache")
    root = workdir / f"taskonomy-{buildings}x{views}-{file_size}px"
    if not (root / "rgb").is_dir():
        started = time.perf_counter()
        export_minitaskonomy(source, root, file_size=file_size)
        print(f"exported {buildings + 2} buildings as {file_size} px PNGs to {root} "
              f"({time.perf_counter() - started:.0f} s)")
    names = [f"building{i:02d}" for i in range(buildings + 2)]
    block = dict(root=root, train_buildings=names[:buildings], val_buildings=[names[-2]],
                 test_buildings=[names[-1]], resolution=resolution, check="off")
    shards = workdir / f"shards-{buildings}x{views}-{file_size}px-{resolution}"
    report = TaskonomyShards(shards=shards, **block).prepare("all", progress=False)
    print(f"shards: {report.summary()}")
    return block, shards


def one_pass(make: Callable[[], object], samples: int, batch_size: int, seed: int) -> float:
    """Samples per second of one shuffled pass that stops after ``samples`` samples."""
    loader = make()
    started = time.perf_counter()
    seen = 0
    for batch in loader(batch_size, seed):  # type: ignore[operator]
        seen += len(batch["rgb"])
        if seen >= samples:
            break
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_taskonomy_shards"))
    parser.add_argument("--views", type=int, default=48, help="views per training building")
    parser.add_argument("--buildings", type=int, default=2, help="training buildings")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--file-size", type=int, default=512, help="side of the exported PNG files")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--samples", type=int, default=32, help="samples per timed pass of the PNG reader")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of png-workers")
    parser.add_argument("--gpu-tflops", type=float, default=200.0, help="sustained GPU throughput assumed")
    parser.add_argument("--gpu-batch", type=int, default=64, help="batch of the GPU step in the arithmetic")
    args = parser.parse_args()

    torch.set_num_threads(1)  # the loader's share; the rest of the cores train
    args.workdir.mkdir(parents=True, exist_ok=True)
    block, shards_dir = prepare(args.workdir, args.views, args.buildings, args.resolution, args.file_size)
    png = Taskonomy(**block).setup("all")
    shards = TaskonomyShards(shards=shards_dir, **block).setup("all")
    png_data = torch.utils.data.ConcatDataset(png.clients)
    # One dataset over all training buildings for the shards too: a ShardImages of every training shard.
    shard_data = ShardImages([s for c in shards.clients for s in c.shards], shards.tasks,
                             [k[len("mask_"):] for k in shards.clients[0].keys if k.startswith("mask_")],
                             "taskonomy")

    def loader(dataset: object, workers: int = 0) -> Callable[[], Callable[[int, int], object]]:
        def make() -> Callable[[int, int], object]:
            return lambda batch, seed: make_loader(dataset, batch, shuffle=True,  # type: ignore[arg-type]
                                                   generator=torch.Generator().manual_seed(seed), num_workers=workers)
        return make

    def stored(batch: int, seed: int):  # noqa: ANN202
        order = torch.randperm(len(shard_data), generator=torch.Generator().manual_seed(seed)).tolist()
        for start in range(0, len(order), batch):
            yield shard_data.stored_batch(order[start:start + batch])

    methods: dict[str, tuple[Callable[[], object], int]] = {
        "png": (loader(png_data), args.samples),
        "png-workers": (loader(png_data, args.workers), args.samples * 2),
        "shards": (loader(shard_data), len(shard_data)),
        "shards-stored": (lambda: stored, len(shard_data)),
    }
    print(f"{len(shard_data)} training views, {args.resolution} px from {args.file_size} px files, nine tasks, "
          f"batch {args.batch_size}; load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    rates: dict[str, list[float]] = {name: [] for name in methods}
    for repeat in range(args.repeats + 1):
        for name, (make, samples) in methods.items():
            rate = one_pass(make, samples, args.batch_size, repeat)
            if repeat:  # the first round warms the page cache and the allocator
                rates[name].append(rate)
        if repeat:
            print(f"repeat {repeat}: " + ", ".join(f"{n} {r[-1]:.1f}" for n, r in rates.items()), flush=True)
    median = {name: statistics.median(r) for name, r in rates.items()}
    print(f"\nsamples/s, medians of {args.repeats} interleaved runs (load average now {os.getloadavg()[0]:.1f}):")
    for name, value in median.items():
        print(f"  {name:14s} {value:9.1f}   x{value / median['png']:.1f} of png   (runs: "
              + ", ".join(f"{r:.1f}" for r in rates[name]) + ")")

    model = MultiTaskModel(tuple(png.tasks), preset="paper")
    batch = {k: v[None].expand(2, *v.shape).clone() for k, v in shards.clients[0][0].items()}
    flops = train_flops_per_sample(model, batch)
    need = args.gpu_tflops * 1e12 / flops
    step_ms = 1000 * args.gpu_batch / need
    print(f"\nGPU arithmetic: the paper preset trains at {flops / 1e9:.1f} GFLOP per 256 px sample (nine tasks); at "
          f"{args.gpu_tflops:.0f} TFLOP/s sustained a step of {args.gpu_batch} samples takes {step_ms:.1f} ms, i.e. "
          f"the GPU consumes {need:.0f} samples/s.")
    for name, value in median.items():
        verdict = "keeps up" if value >= need else f"the GPU would wait ({need / value:.1f}x too slow)"
        print(f"  {name:14s} {value:9.1f} samples/s on one core: {verdict}; a batch of {args.gpu_batch} in "
              f"{1000 * args.gpu_batch / value:.0f} ms")


if __name__ == "__main__":
    main()
