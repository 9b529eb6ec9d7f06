"""The MiniTaskonomy data source: procedurally rendered buildings as federated clients.

Each building has its own style (see ``styles.py``) and its own seeded generators, so a building's
images depend only on the seed, its index and the resolution. Client sizes fall geometrically from
``images_per_client`` down to ``images_per_client / size_ratio``, like the skew of Taskonomy's buildings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from mas_lightning.data.base import DataSource, FederatedData, TensorTaskDataset
from mas_lightning.data.minitaskonomy.cache import default_cache_dir, load_or_build
from mas_lightning.data.minitaskonomy.codec import decode
from mas_lightning.data.minitaskonomy.render import check_resolution, render_scenes
from mas_lightning.data.minitaskonomy.scenes import Scenes, sample_scenes
from mas_lightning.data.minitaskonomy.styles import BuildingStyle, sample_style
from mas_lightning.seeding import text_generator
from mas_lightning.tasks import parse_tasks

SPLITS = ("buildings", "images")


def _generator(seed: int, building: int, purpose: str) -> torch.Generator:
    return text_generator(f"minitaskonomy:{seed}:{building}:{purpose}")


def client_sizes(clients: int, images_per_client: int, size_ratio: float) -> list[int]:
    """Images of each client, falling geometrically from ``images_per_client`` by ``size_ratio`` overall."""
    if clients == 1:
        return [images_per_client]
    return [round(images_per_client * size_ratio ** (-i / (clients - 1))) for i in range(clients)]


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r}; expected an integer >= {minimum}")
    return value


class MiniTaskonomy(DataSource):
    """Procedural indoor scenes with all nine Taskonomy labels; buildings are clients.

    Args:
        clients: number of client buildings.
        images_per_client: images of the largest client.
        size_ratio: largest / smallest client size (>= 1); sizes fall geometrically in between.
        val_buildings: buildings that only validate (``split="buildings"``).
        test_buildings: buildings that only test (``split="buildings"``).
        eval_images_per_building: images of each validation or test building.
        split: ``"buildings"``: validation and test come from buildings no client trains on;
            ``"images"``: they are held-out images of the client buildings themselves.
        holdout_fraction: share of each client building's images held out when ``split="images"``
            (half of them validate, half test).
        resolution: image side in pixels, a multiple of 32 from 32 to 256.
        seed: seed of every building's style and scenes.
        cache_dir: cache root; defaults to ``$MAS_LIGHTNING_CACHE`` or ``~/.cache/mas_lightning``.
    """

    def __init__(
        self,
        clients: int = 8,
        images_per_client: int = 128,
        size_ratio: float = 4.0,
        val_buildings: int = 2,
        test_buildings: int = 2,
        eval_images_per_building: int = 64,
        split: Literal["buildings", "images"] = "buildings",
        holdout_fraction: float = 0.2,
        resolution: int = 64,
        seed: int = 0,
        cache_dir: Path | None = None,
    ) -> None:
        self.clients = _positive_int("clients", clients)
        self.images_per_client = _positive_int("images_per_client", images_per_client)
        if isinstance(size_ratio, bool) or not isinstance(size_ratio, (int, float)) or not 1.0 <= size_ratio < math.inf:
            raise ValueError(f"size_ratio={size_ratio!r}; expected a number >= 1 (largest / smallest client)")
        if clients > 1 and images_per_client / size_ratio < 1.0:
            raise ValueError(
                f"images_per_client={images_per_client} / size_ratio={size_ratio} leaves the smallest client "
                "with less than one image; raise images_per_client or lower size_ratio"
            )
        self.size_ratio = float(size_ratio)
        self.val_buildings = _positive_int("val_buildings", val_buildings)
        self.test_buildings = _positive_int("test_buildings", test_buildings)
        self.eval_images_per_building = _positive_int("eval_images_per_building", eval_images_per_building)
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; expected one of {SPLITS}")
        self.split = split
        if isinstance(holdout_fraction, bool) or not isinstance(holdout_fraction, (int, float)):
            raise ValueError(f"holdout_fraction={holdout_fraction!r}; expected a number in (0, 1)")
        if not 0.0 < holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction={holdout_fraction!r}; expected a number in (0, 1)")
        self.holdout_fraction = float(holdout_fraction)
        self.resolution = check_resolution(resolution)
        self.seed = _positive_int("seed", seed, minimum=0)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        if split == "images" and sum(self._holdouts()) < 2:
            raise ValueError(
                f"split='images' with holdout_fraction={holdout_fraction} holds out fewer than 2 images in all; "
                "raise holdout_fraction or images_per_client so that validation and test each get one"
            )

    def _holdouts(self) -> list[int]:
        sizes = client_sizes(self.clients, self.images_per_client, self.size_ratio)
        return [min(max(round(self.holdout_fraction * n), 0), n - 1) for n in sizes]

    def params(self) -> dict:
        """Every parameter the rendered content depends on (the cache key is a hash of these)."""
        keys = ("clients", "images_per_client", "size_ratio", "val_buildings", "test_buildings")
        keys += ("eval_images_per_building", "split", "holdout_fraction", "resolution", "seed")
        return {k: getattr(self, k) for k in keys}

    def buildings(self) -> list[tuple[str, int]]:
        """(name, number of images) of every building to render, clients first."""
        plan = [
            (f"building{i:02d}", n)
            for i, n in enumerate(client_sizes(self.clients, self.images_per_client, self.size_ratio))
        ]
        if self.split == "buildings":
            extra = self.val_buildings + self.test_buildings
            plan += [(f"building{self.clients + j:02d}", self.eval_images_per_building) for j in range(extra)]
        return plan

    def building_style(self, index: int) -> BuildingStyle:
        """The style of building ``index`` (clients first, then validation, then test buildings)."""
        return sample_style(_generator(self.seed, index, "style"))

    def building_scenes(self, index: int, images: int) -> Scenes:
        """The first ``images`` scenes of building ``index`` (deterministic)."""
        return sample_scenes(self.building_style(index), images, _generator(self.seed, index, "scenes"))

    def _render_all(self) -> dict[str, dict[str, Tensor]]:
        # All buildings in one batch, so that render threads share the work even for small buildings.
        plan = self.buildings()
        scenes = Scenes.cat([self.building_scenes(i, n) for i, (_, n) in enumerate(plan)])
        stored = render_scenes(scenes, self.resolution)
        bounds = torch.tensor([0] + [n for _, n in plan]).cumsum(0).tolist()
        return {
            name: {k: v[a:b].clone() for k, v in stored.items()} for (name, _), a, b in zip(plan, bounds, bounds[1:])
        }

    def setup(self, tasks: str | Sequence[str]) -> FederatedData:
        """Render (or read from the cache) every building and return the federated data set.

        Args:
            tasks: task names or letters (e.g. ``"sdnkt"`` or ``"all"``); samples carry these targets
                plus ``rgb`` and ``mask``.
        """
        names = parse_tasks(tasks)
        parts = load_or_build(self.cache_dir, self.params(), self._render_all)
        keys = ("rgb", "mask", *names)

        def dataset(arrays: list[dict[str, Tensor]]) -> TensorTaskDataset:
            def column(key: str) -> Tensor:
                stored = "rgb" if key == "autoencoder" else key  # the autoencoder target is the rgb itself
                return arrays[0][stored] if len(arrays) == 1 else torch.cat([a[stored] for a in arrays])

            return TensorTaskDataset({k: column(k) for k in keys}, decode)

        plan = self.buildings()
        client_names = [name for name, _ in plan[: self.clients]]
        if self.split == "buildings":
            clients = [dataset([parts[name]]) for name in client_names]
            evaluation = [parts[name] for name, _ in plan[self.clients :]]
            val, test = evaluation[: self.val_buildings], evaluation[self.val_buildings :]
        else:
            clients, val, test = [], [], []
            for name, held in zip(client_names, self._holdouts()):
                arrays = parts[name]
                kept = len(arrays["rgb"]) - held
                clients.append(dataset([{k: v[:kept] for k, v in arrays.items()}]))
                # Held-out images alternate between validation and test, so both see every building.
                val.append({k: v[kept::2] for k, v in arrays.items()})
                test.append({k: v[kept + 1 :: 2] for k, v in arrays.items()})
        return FederatedData(
            clients=clients,
            client_names=client_names,
            val=dataset(val),
            test=dataset(test),
            tasks=names,
            resolution=self.resolution,
        )
