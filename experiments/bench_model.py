"""Speed and size of the model presets: forward+backward time per image, parameters, FLOPs per image.

Times one training step's model work (forward of all tasks, task losses, total loss, backward) on
random data at the preset's resolution, in float32 on CPU and, when CUDA is available, in bf16 autocast
on the GPU. FLOPs come from torch's own counter (``torch.utils.flop_counter.FlopCounterMode``), which
counts matrix multiplications and convolutions, as 2 x multiply-accumulates.

    python experiments/bench_model.py                         # both presets, all nine tasks
    python experiments/bench_model.py --presets tiny --tasks sdnkt --batch 8 --steps 5
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

from mas_lightning.data.synthetic import random_batch
from mas_lightning.model import MultiTaskModel
from mas_lightning.model.presets import PRESETS


def device_batch(tasks: tuple[str, ...], n: int, size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A random batch on ``device`` (values do not matter for speed)."""
    return {k: v.to(device) for k, v in random_batch(tasks, n, size).items()}


def train_step(model: MultiTaskModel, batch: dict[str, torch.Tensor], autocast: bool) -> None:
    context = torch.autocast(batch["rgb"].device.type, dtype=torch.bfloat16) if autocast else nullcontext()
    with context:
        loss = model.total_loss(model.task_losses(model(batch["rgb"]), batch))
    loss.backward()
    model.zero_grad(set_to_none=True)


def seconds_per_image(
    model: MultiTaskModel, batch: dict[str, torch.Tensor], steps: int, autocast: bool
) -> tuple[float, float]:
    """(median, fastest) wall time of a forward+backward step, divided by the batch size.

    The fastest step is the better estimate on a machine shared with other jobs; the median is the
    typical one.
    """
    cuda = batch["rgb"].device.type == "cuda"
    for _ in range(2):  # warm-up: allocator, cuDNN algorithm choice
        train_step(model, batch, autocast)
    times = []
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_step(model, batch, autocast)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] / len(batch["rgb"]), times[0] / len(batch["rgb"])


def flops_per_image(model: MultiTaskModel, size: int) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs for one image, counted by torch."""
    batch = device_batch(model.tasks, 1, size, torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:
        model(batch["rgb"])
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        loss = model.total_loss(model.task_losses(model(batch["rgb"]), batch))
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(forward), float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--tasks", default="all", help="task set, e.g. sdnkt or all")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default: 16 tiny, 4 paper on CPU)")
    parser.add_argument("--cuda-batch", type=int, default=32, help="images per step on CUDA")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median and fastest reported)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, tasks {args.tasks}")
    header = (
        f"{'preset':<6} {'encoder':<13} {'px':>4} {'params M':>9} {'enc M':>6} {'GFLOP fwd':>10} {'GFLOP f+b':>10}"
        f" {'device':<5} {'dtype':<5} {'batch':>5} {'ms/img med':>10} {'ms/img min':>10}"
    )
    print(header)
    for name in args.presets:
        preset = PRESETS[name]
        model = MultiTaskModel(args.tasks, preset=name)  # type: ignore[arg-type]
        params = sum(p.numel() for p in model.parameters()) / 1e6
        encoder = sum(p.numel() for p in model.shared_parameters()) / 1e6
        forward, both = flops_per_image(model, preset.resolution)
        runs = [("cpu", "fp32", args.batch or (16 if name == "tiny" else 4), False)]
        if torch.cuda.is_available():
            runs.append(("cuda", "bf16", args.cuda_batch, True))
        for device, dtype, batch_size, autocast in runs:
            model.to(device)
            batch = device_batch(model.tasks, batch_size, preset.resolution, torch.device(device))
            median, fastest = seconds_per_image(model, batch, args.steps, autocast)
            print(
                f"{name:<6} {preset.encoder_name:<13} {preset.resolution:>4} {params:>9.2f} {encoder:>6.2f}"
                f" {forward / 1e9:>10.2f} {both / 1e9:>10.2f} {device:<5} {dtype:<5} {batch_size:>5}"
                f" {1000 * median:>10.2f} {1000 * fastest:>10.2f}"
            )
        model.to("cpu")


if __name__ == "__main__":
    main()
