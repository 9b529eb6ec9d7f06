"""MiniTaskonomy as a data source: client sizes, disjoint splits, argument checks and the disk cache."""

from __future__ import annotations

import hashlib
import json
import os
import socket

import pytest
import torch

from mas_lightning.data.base import FederatedData, TensorTaskDataset
from mas_lightning.data.minitaskonomy import MiniTaskonomy, source
from mas_lightning.data.minitaskonomy.cache import MANIFEST, cache_key

TINY = dict(clients=3, images_per_client=8, size_ratio=2.0, eval_images_per_building=4, resolution=32)


class RenderCounter:
    """Counts the images rendered, by wrapping the source module's renderer."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.images = 0
        self.original = source.render_scenes
        monkeypatch.setattr(source, "render_scenes", self)

    def __call__(self, scenes, *args, **kwargs):
        self.images += len(scenes)
        return self.original(scenes, *args, **kwargs)


def image_hashes(dataset: TensorTaskDataset) -> list[str]:
    rgb = dataset.arrays["rgb"]
    return [hashlib.sha256(rgb[i].numpy().tobytes()).hexdigest() for i in range(len(rgb))]


def test_client_sizes_are_skewed_as_configured():
    assert source.client_sizes(8, 128, 4.0) == [128, 105, 86, 71, 58, 48, 39, 32]
    assert source.client_sizes(5, 100, 10.0)[-1] == 10
    assert source.client_sizes(1, 7, 4.0) == [7]


@pytest.mark.parametrize("split", ["buildings", "images"])
def test_setup_splits_share_no_image(tmp_path, split):
    data = MiniTaskonomy(**TINY, split=split, holdout_fraction=0.25, cache_dir=tmp_path).setup("sdn")
    assert isinstance(data, FederatedData)
    assert data.tasks == ("segment_semantic", "depth_zbuffer", "normal") and data.resolution == 32
    groups = [image_hashes(c) for c in data.clients] + [image_hashes(data.val), image_hashes(data.test)]
    everything = [h for group in groups for h in group]
    assert len(everything) == len(set(everything))  # no image twice, within or across splits
    if split == "buildings":
        assert data.client_sizes == [8, 6, 4]
        assert len(data.val) == len(data.test) == 2 * 4
    else:  # a quarter of each building's images held out, alternating between validation and test
        assert data.client_sizes == [6, 4, 3]
        assert len(data.val) == 3 and len(data.test) == 2
    batch = data.clients[0].batch([0, 1])
    assert set(batch) == {"rgb", "mask", "segment_semantic", "depth_zbuffer", "normal"}
    assert batch["rgb"].shape == (2, 3, 32, 32) and batch["segment_semantic"].dtype == torch.int64


def test_second_setup_reads_the_cache_without_rendering(tmp_path, monkeypatch):
    counter = RenderCounter(monkeypatch)
    first = MiniTaskonomy(**TINY, cache_dir=tmp_path).setup("all")
    assert counter.images == 8 + 6 + 4 + 4 * 4  # three clients, then two validation and two test buildings
    second = MiniTaskonomy(**TINY, cache_dir=tmp_path).setup("all")
    assert counter.images == 34
    for a, b in zip(first.clients + [first.val, first.test], second.clients + [second.val, second.test]):
        assert all(torch.equal(a.arrays[k], b.arrays[k]) for k in a.arrays)


def test_a_changed_parameter_gets_its_own_cache(tmp_path, monkeypatch):
    counter = RenderCounter(monkeypatch)
    base = MiniTaskonomy(**TINY, cache_dir=tmp_path)
    changed = MiniTaskonomy(**{**TINY, "seed": 1}, cache_dir=tmp_path)
    assert cache_key(base.params()) != cache_key(changed.params())
    assert cache_key(base.params()) != cache_key({**base.params(), "holdout_fraction": 0.3})
    base.setup("s")
    other = changed.setup("s")
    assert counter.images == 2 * 34  # rendered again, not served from the first cache
    assert len(list((tmp_path / "minitaskonomy").iterdir())) == 2
    assert not torch.equal(base.setup("s").clients[0].arrays["rgb"], other.clients[0].arrays["rgb"])


@pytest.mark.parametrize("damage", ["manifest", "truncate", "missing"])
def test_a_half_written_cache_is_rebuilt_not_read(tmp_path, monkeypatch, damage):
    counter = RenderCounter(monkeypatch)
    reference = MiniTaskonomy(**TINY, cache_dir=tmp_path).setup("d").clients[1].arrays["depth_zbuffer"].clone()
    folder = next((tmp_path / "minitaskonomy").iterdir())
    victim = folder / "building01.pt"
    if damage == "manifest":
        (folder / MANIFEST).unlink()
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    else:
        victim.unlink()
    rebuilt = MiniTaskonomy(**TINY, cache_dir=tmp_path).setup("d")
    assert counter.images == 2 * 34
    assert torch.equal(rebuilt.clients[1].arrays["depth_zbuffer"], reference)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["files"]["building01.pt"] == victim.stat().st_size
    assert not [p for p in tmp_path.joinpath("minitaskonomy").iterdir() if p.name.startswith(".")]  # no temporary


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MAS_LIGHTNING_CACHE", str(tmp_path / "here"))
    assert MiniTaskonomy().cache_dir == tmp_path / "here"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clients": 0}, "clients=0"),
        ({"images_per_client": 2.5}, "images_per_client=2.5"),
        ({"size_ratio": 0.5}, "size_ratio=0.5"),
        ({"images_per_client": 3, "size_ratio": 4.0}, "smallest client"),
        ({"val_buildings": 0}, "val_buildings=0"),
        ({"eval_images_per_building": -1}, "eval_images_per_building=-1"),
        ({"split": "rooms"}, "split='rooms'"),
        ({"holdout_fraction": 1.0}, "holdout_fraction=1.0"),
        ({"split": "images", "clients": 1, "images_per_client": 2}, "fewer than 2 images"),
        ({"resolution": 40}, "resolution=40"),
        ({"seed": -1}, "seed=-1"),
    ],
)
def test_bad_arguments_name_the_value_and_the_accepted_range(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        MiniTaskonomy(**kwargs)


def test_unknown_task_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        MiniTaskonomy(**TINY, cache_dir=tmp_path).setup("sx")


def test_temporary_folders_of_dead_writers_are_removed(tmp_path):
    source_ = MiniTaskonomy(**TINY, cache_dir=tmp_path)
    root = tmp_path / "minitaskonomy"
    root.mkdir()
    key = cache_key(source_.params())
    dead = root / f".{key}.tmp-{socket.gethostname()}-{2**40}-abcd1234"  # no process has this id
    alive = root / f".{key}.tmp-{socket.gethostname()}-{os.getpid()}-abcd1234"  # a writer still at work
    for folder in (dead, alive):
        (folder / "sub").mkdir(parents=True)
    source_.setup("s")
    assert not dead.exists() and alive.exists()


def test_a_plain_dataloader_reads_the_data_and_make_loader_batches_the_same_way() -> None:
    """``DataLoader(dataset)`` works as for any map-style dataset, and the engine's batched loader yields the
    very batches (same order for the same generator, same values) that it collates sample by sample."""
    from torch.utils.data import DataLoader

    from mas_lightning.data.base import make_loader
    from mas_lightning.data.synthetic import SyntheticData

    dataset = SyntheticData(clients=1, sizes=(10,)).setup(["depth_zbuffer", "segment_semantic"]).clients[0]
    plain = list(DataLoader(dataset, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3)))
    batched = list(make_loader(dataset, 4, shuffle=True, generator=torch.Generator().manual_seed(3)))
    assert [len(b["rgb"]) for b in plain] == [len(b["rgb"]) for b in batched] == [4, 4, 2]
    for one, other in zip(plain, batched, strict=True):
        assert one.keys() == other.keys()
        assert all(torch.equal(one[k], other[k]) for k in one)
    # Sample by sample, in the sampler's order: the batch is the stacked samples.
    order = torch.randperm(10, generator=_after_base_seed(3)).tolist()
    expected = torch.stack([dataset[i]["rgb"] for i in order[:4]])
    assert torch.equal(batched[0]["rgb"], expected)


def _after_base_seed(seed: int) -> torch.Generator:
    """A generator in the state a DataLoader leaves it after drawing its base seed (one int64)."""
    generator = torch.Generator().manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    return generator
