"""Rendering: scenes -> the compact stored arrays of every label, and a one-call batch renderer.

Scenes are rendered in chunks of ``CHUNK`` so that the (scene, slot, pixel) intermediates stay in the
CPU caches. Chunks are spread over a few Python threads, each running torch ops single-threaded: on a
shared 2-core machine, ATen's own OpenMP parallelism over many small ops collapses as soon as another
process competes for a core (every op waits at a barrier for a preempted thread), whereas independent
threads simply slow down. Chunk results do not depend on the thread count, so the bytes are the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from torch import Tensor

from mas_lightning.data.minitaskonomy.codec import INVALID_DEPTH, decode, encode_normal, encode_unit
from mas_lightning.data.minitaskonomy.image_labels import occlusion_edges, texture_edges_and_keypoints
from mas_lightning.data.minitaskonomy.raycast import cast
from mas_lightning.data.minitaskonomy.scenes import Scenes, sample_scenes
from mas_lightning.data.minitaskonomy.shading import shade
from mas_lightning.data.minitaskonomy.styles import BuildingStyle

CHUNK = 64
"""Most scenes rendered at once: big enough to amortise per-op overhead, small enough for the caches."""
MIN_RESOLUTION, MAX_RESOLUTION, RESOLUTION_STEP = 32, 256, 32


def check_resolution(resolution: int) -> int:
    """Return ``resolution`` if it is supported, else raise naming the accepted values."""
    ok = isinstance(resolution, int) and MIN_RESOLUTION <= resolution <= MAX_RESOLUTION
    if not ok or resolution % RESOLUTION_STEP:
        raise ValueError(
            f"resolution={resolution!r} is not supported; use a multiple of {RESOLUTION_STEP} from "
            f"{MIN_RESOLUTION} to {MAX_RESOLUTION} (e.g. 64)"
        )
    return resolution


def _render_chunk(scenes: Scenes, resolution: int) -> dict[str, Tensor]:
    n = len(scenes)
    hits = cast(scenes, resolution)
    rgb, shading = shade(hits, scenes)

    def image(x: Tensor) -> Tensor:
        return x.reshape(n, -1, resolution, resolution)

    valid, z, rgb = image(hits.valid), image(hits.z), image(rgb)
    edges, keypoints = texture_edges_and_keypoints(rgb)
    return {
        "rgb": encode_unit(rgb),
        "mask": valid > 0.5,
        "segment_semantic": image(hits.label)[:, 0].to(torch.uint8),
        "depth_zbuffer": torch.lerp(torch.full_like(z, INVALID_DEPTH), z, valid).half(),
        "normal": encode_normal(image(hits.normal_cam)),
        "reshading": encode_unit(image(shading)),
        "principal_curvature": image(hits.curvature).half(),
        "edge_occlusion": encode_unit(occlusion_edges(z, valid)),
        "edge_texture": encode_unit(edges),
        "keypoints2d": encode_unit(keypoints),
    }


def default_workers() -> int:
    """Render threads: the CPU cores this process may use, at most 4."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores))


@contextmanager
def _single_threaded_ops() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _render_chunk_inference(scenes: Scenes, resolution: int) -> dict[str, Tensor]:
    with torch.inference_mode():  # the mode is thread-local: enter it in the worker thread
        return _render_chunk(scenes, resolution)


def render_scenes(scenes: Scenes, resolution: int, workers: int | None = None) -> dict[str, Tensor]:
    """Render every label of a batch of scenes into the compact stored form (see ``codec.py``).

    Args:
        scenes: the batch to render.
        resolution: image side in pixels.
        workers: render threads; defaults to :func:`default_workers`. The output does not depend on it.
    """
    check_resolution(resolution)
    if len(scenes) == 0:
        raise ValueError("render_scenes needs at least one scene")
    workers = default_workers() if workers is None else workers
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r}; expected a positive integer")
    # Fewer, larger chunks amortise Python overhead; but every thread should get at least one.
    size = max(8, min(CHUNK, -(-len(scenes) // workers)))
    chunks = [scenes.select(slice(i, i + size)) for i in range(0, len(scenes), size)]
    with _single_threaded_ops():
        if workers == 1 or len(chunks) == 1:
            parts = [_render_chunk_inference(c, resolution) for c in chunks]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                parts = list(pool.map(_render_chunk_inference, chunks, [resolution] * len(chunks)))
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def render_batch(style: BuildingStyle, n: int, resolution: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Draw and render ``n`` scenes of one building style, decoded to the ``data/base.py`` convention.

    All nine task keys plus ``rgb`` and ``mask`` are returned, exactly as the data sets serve them.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} scenes requested; give a positive integer")
    stored = render_scenes(sample_scenes(style, n, generator), resolution)
    stored["autoencoder"] = stored["rgb"]
    return decode(stored)
