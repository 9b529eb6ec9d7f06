"""Speed of mini-Taskonomy: rendering throughput and the default data source's setup time.

Prints images/s for rendering all nine labels (scene sampling and cache I/O excluded), for each render
thread count asked for, then the wall time of ``MiniTaskonomy().setup("all")`` with a fresh cache (render
+ write + read back) and with a warm cache (read only). The machine is shared, so each figure is the
best and the median of several repeats, printed with the load average seen at the start.

    python experiments/bench_data.py                       # 64 px, 1024 images, 1 and 2 threads
    python experiments/bench_data.py --resolution 128 --workers 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from mas_lightning.data.minitaskonomy import MiniTaskonomy, render_scenes, sample_scenes, sample_style


def render_rate(images: int, resolution: int, workers: int, repeats: int) -> list[float]:
    """Images/s of ``render_scenes`` over ``repeats`` runs, each on freshly sampled scenes."""
    rates = []
    for repeat in range(repeats + 1):
        g = torch.Generator().manual_seed(repeat)
        scenes = sample_scenes(sample_style(g), images, g)
        start = time.perf_counter()
        render_scenes(scenes, resolution, workers=workers)
        if repeat:  # the first run warms up allocator and caches
            rates.append(images / (time.perf_counter() - start))
    return rates


def setup_seconds(resolution: int) -> tuple[float, float, int]:
    """(cold, warm) wall seconds of the default source's setup, and its number of images."""
    with tempfile.TemporaryDirectory() as folder:
        source = MiniTaskonomy(resolution=resolution, cache_dir=folder)
        start = time.perf_counter()
        data = source.setup("all")
        cold = time.perf_counter() - start
        start = time.perf_counter()
        MiniTaskonomy(resolution=resolution, cache_dir=folder).setup("all")
        warm = time.perf_counter() - start
    return cold, warm, sum(data.client_sizes) + len(data.val) + len(data.test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {load:.2f} at start")
    for workers in args.workers:
        rates = render_rate(args.images, args.resolution, workers, args.repeats)
        print(
            f"render {args.images} images at {args.resolution} px, all nine labels, {workers} thread(s): "
            f"best {max(rates):.0f} images/s, median {statistics.median(rates):.0f} images/s"
        )
    cold, warm, images = setup_seconds(args.resolution)
    print(
        f"MiniTaskonomy(resolution={args.resolution}).setup('all'), {images} images: "
        f"{cold:.2f} s with a fresh cache, {warm:.2f} s from the cache"
    )


if __name__ == "__main__":
    main()
