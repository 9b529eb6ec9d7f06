"""The real-format Taskonomy reader, tested on PNG trees written by ``taskonomy_fixture`` (no mocks)."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from data.taskonomy_fixture import DOMAINS, TWO_METRES, label_path, sorted_views, write_png, write_taskonomy
from PIL import Image

from mas_lightning.data.base import make_loader
from mas_lightning.data.taskonomy import TINY_TEST_BUILDINGS, TINY_VAL_BUILDINGS, Taskonomy
from mas_lightning.tasks import TASK_NAMES

SIZE = 8
SPLIT = {"val_buildings": ["vb"], "test_buildings": ["tb"]}
BUILDINGS = {"alpha": 3, "beta": 5, "vb": 2, "tb": 1}


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("flat")
    return root, write_taskonomy(root, BUILDINGS, size=SIZE)


def f32(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))


def test_decodes_every_task_to_the_documented_values(flat: tuple[Path, dict]) -> None:
    root, written = flat
    data = Taskonomy(root, **SPLIT, resolution=SIZE).setup(TASK_NAMES)
    sample = data.clients[0][0]
    raw = written["alpha"][sorted_views(3)[0]]
    assert set(sample) == {"rgb", "mask", *TASK_NAMES}

    depth = sample["depth_zbuffer"]
    assert depth.shape == (1, SIZE, SIZE) and depth.dtype == torch.float32
    assert depth[0, 0, 1].item() == pytest.approx(math.log(TWO_METRES + 1) / math.log(65536), abs=1e-6)
    assert torch.allclose(depth[0], torch.log1p(f32(raw["depth_zbuffer"])) / math.log(65536), atol=1e-6)
    mask = sample["mask"]
    assert mask.dtype == torch.bool and mask.shape == (1, SIZE, SIZE)
    assert not mask[0, 0, 0] and int(mask.sum()) == SIZE * SIZE - 1  # only the 65535 pixel is invalid

    assert torch.allclose(sample["rgb"], f32(raw["rgb"]).permute(2, 0, 1) / 255)
    assert torch.equal(sample["autoencoder"], sample["rgb"])
    assert torch.allclose(sample["normal"], f32(raw["normal"]).permute(2, 0, 1) / 255)
    assert torch.allclose(sample["reshading"][0], f32(raw["reshading"]).mean(-1) / 255, atol=1e-6)
    curvature = (f32(raw["principal_curvature"][..., :2]).permute(2, 0, 1) - 127) / 127
    assert sample["principal_curvature"].shape == (2, SIZE, SIZE)
    assert torch.allclose(sample["principal_curvature"], curvature)
    seg = sample["segment_semantic"]
    assert seg.dtype == torch.int64 and seg.shape == (SIZE, SIZE)
    assert torch.equal(seg, torch.from_numpy(raw["segment_semantic"]).long())
    for task, saturation in (("keypoints2d", 0.005), ("edge_texture", 0.08), ("edge_occlusion", 0.00625)):
        expected = (f32(raw[task]) / (65535 * saturation)).clamp(0, 1)
        assert torch.allclose(sample[task][0], expected, atol=1e-6), task
        assert 0 < float((sample[task] == 1).float().mean()) < 1, task  # both clipped and unclipped pixels


def test_resizes_continuous_antialiased_and_labels_nearest(tmp_path: Path) -> None:
    written = write_taskonomy(tmp_path, {"a": 1, "v": 1, "t": 1}, size=8)
    raw = written["a"][sorted_views(1)[0]]
    blocks = np.kron(np.arange(16, dtype=np.uint8).reshape(4, 4) % 18, np.ones((2, 2), dtype=np.uint8))
    write_png(label_path(tmp_path, "segment_semantic", "a", sorted_views(1)[0]), blocks)
    data = Taskonomy(tmp_path, val_buildings=["v"], test_buildings=["t"], resolution=4).setup("sdna")
    sample = data.clients[0][0]
    assert {k: tuple(v.shape) for k, v in sample.items()} == {
        "rgb": (3, 4, 4), "mask": (1, 4, 4), "segment_semantic": (4, 4),
        "depth_zbuffer": (1, 4, 4), "normal": (3, 4, 4), "autoencoder": (3, 4, 4),
    }  # fmt: skip
    # PIL's bilinear reduction (an independent implementation of the antialiased filter) agrees.
    pil_rgb = np.asarray(Image.fromarray(raw["rgb"]).resize((4, 4), Image.Resampling.BILINEAR))
    assert torch.allclose(sample["rgb"], f32(pil_rgb).permute(2, 0, 1) / 255, atol=1.5 / 255)
    pil_depth = np.asarray(Image.fromarray(raw["depth_zbuffer"].astype(np.float32)).resize((4, 4), Image.BILINEAR))
    expected_depth = torch.log1p(f32(pil_depth)) / math.log(65536)
    assert torch.allclose(sample["depth_zbuffer"][0][1:, 1:], expected_depth[1:, 1:], atol=1e-4)
    assert torch.equal(sample["segment_semantic"], torch.arange(16).reshape(4, 4) % 18)
    # The invalid source pixel (0, 0) only feeds output pixel (0, 0); nearest sampling would have missed it.
    assert not sample["mask"][0, 0, 0] and int(sample["mask"].sum()) == 15


def test_buildings_are_clients_and_splits_are_disjoint(flat: tuple[Path, dict]) -> None:
    root, written = flat
    data = Taskonomy(root, **SPLIT, resolution=SIZE).setup(["normal"])
    assert data.client_names == ["alpha", "beta"]
    assert data.client_sizes == [3, 5] and len(data.val) == 2 and len(data.test) == 1
    assert data.tasks == ("normal",) and data.resolution == SIZE
    # Views come in numeric (point, view) order, from the right building.
    for position, view in enumerate(sorted_views(5)):
        expected = f32(written["beta"][view]["rgb"]).permute(2, 0, 1) / 255
        assert torch.allclose(data.clients[1][position]["rgb"], expected)
    expected_val = f32(written["vb"][sorted_views(2)[1]]["normal"]).permute(2, 0, 1) / 255
    assert torch.allclose(data.val[1]["normal"], expected_val)

    limited = Taskonomy(root, ["beta"], **SPLIT, resolution=SIZE, max_images_per_building=2).setup(["n"])
    assert limited.client_names == ["beta"] and limited.client_sizes == [2] and len(limited.val) == 2
    assert torch.equal(limited.clients[0][1]["rgb"], data.clients[1][1]["rgb"])


def test_default_split_is_the_official_tiny_one() -> None:
    source = Taskonomy("unused")
    assert source.val_buildings == list(TINY_VAL_BUILDINGS) and source.test_buildings == list(TINY_TEST_BUILDINGS)
    assert len(set(TINY_VAL_BUILDINGS) | set(TINY_TEST_BUILDINGS)) == 10


def test_omnidata_layout_reads_the_same_values_and_honours_mask_valid(tmp_path: Path) -> None:
    flat_root, nested_root = tmp_path / "flat", tmp_path / "nested"
    buildings = {"alpha": 2, "vb": 1, "tb": 1}
    write_taskonomy(flat_root, buildings, size=SIZE)
    written = write_taskonomy(nested_root, buildings, size=SIZE, nested=True, domains=(*DOMAINS, "mask_valid"))
    assert (nested_root / "rgb" / "taskonomy" / "alpha").is_dir()
    view = sorted_views(2)[1]
    mask_valid = written["alpha"][view]["mask_valid"].copy()
    mask_valid[3, 4] = 0
    write_png(label_path(nested_root, "mask_valid", "alpha", view, nested=True), mask_valid)

    flat_sample = Taskonomy(flat_root, **SPLIT, resolution=SIZE).setup("sdn").clients[0][1]
    nested_sample = Taskonomy(nested_root, **SPLIT, resolution=SIZE).setup("sdn").clients[0][1]
    for key in ("rgb", "segment_semantic", "depth_zbuffer", "normal"):
        assert torch.equal(flat_sample[key], nested_sample[key]), key
    # Depth requested: mask = mask_valid AND valid depth.
    assert not nested_sample["mask"][0, 3, 4] and not nested_sample["mask"][0, 0, 0]
    assert int(nested_sample["mask"].sum()) == SIZE * SIZE - 2
    # Depth not requested: mask_valid alone decides (the depth file is not read).
    normal_only = Taskonomy(nested_root, **SPLIT, resolution=SIZE).setup("n").clients[0][1]
    assert not normal_only["mask"][0, 3, 4] and normal_only["mask"][0, 0, 0]
    # No masked task: the mask is all true and no mask file is needed.
    seg_only = Taskonomy(flat_root, **SPLIT, resolution=SIZE).setup("s").clients[0][1]
    assert bool(seg_only["mask"].all())


def test_original_segmentsemantic_file_names_are_accepted(tmp_path: Path) -> None:
    written = write_taskonomy(tmp_path, {"a": 2, "vb": 1, "tb": 1}, segment_file_domain="segmentsemantic")
    sample = Taskonomy(tmp_path, **SPLIT, resolution=SIZE).setup("s").clients[0][0]
    assert torch.equal(
        sample["segment_semantic"], torch.from_numpy(written["a"][sorted_views(2)[0]]["segment_semantic"]).long()
    )


def test_samples_survive_pickling_and_loader_workers(flat: tuple[Path, dict]) -> None:
    root, _ = flat
    client = Taskonomy(root, **SPLIT, resolution=SIZE).setup("dk").clients[1]
    copy = pickle.loads(pickle.dumps(client))
    assert torch.equal(copy[4]["depth_zbuffer"], client[4]["depth_zbuffer"])
    batch = next(iter(make_loader(client, batch_size=2, num_workers=1)))
    assert batch["keypoints2d"].shape == (2, 1, SIZE, SIZE) and batch["mask"].shape == (2, 1, SIZE, SIZE)
    assert torch.equal(batch["rgb"][1], client[1]["rgb"])


# --- bad input: each error names the offending file, folder or value ---


def test_missing_root_and_task_folder(tmp_path: Path, flat: tuple[Path, dict]) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        Taskonomy(missing, **SPLIT).setup("d")
    partial = tmp_path / "partial"
    write_taskonomy(partial, {"a": 1, "vb": 1, "tb": 1}, domains=("rgb", "depth_zbuffer"))
    with pytest.raises(FileNotFoundError, match=str(partial / "normal")):
        Taskonomy(partial, **SPLIT).setup("dn")
    rgb_only = tmp_path / "rgb_only"
    write_taskonomy(rgb_only, {"a": 1, "vb": 1, "tb": 1}, domains=("rgb", "normal"))
    with pytest.raises(FileNotFoundError, match="depth_zbuffer"):  # normals need a validity mask
        Taskonomy(rgb_only, **SPLIT).setup("n")


def test_listed_building_absent_or_in_two_splits(flat: tuple[Path, dict]) -> None:
    root, _ = flat
    with pytest.raises(FileNotFoundError, match=r"\['nosuch'\].*found \['alpha', 'beta', 'tb', 'vb'\]"):
        Taskonomy(root, val_buildings=["nosuch"], test_buildings=["tb"]).setup("n")
    with pytest.raises(ValueError, match="'vb' is listed in both train_buildings and val_buildings"):
        Taskonomy(root, ["alpha", "vb"], **SPLIT)
    with pytest.raises(ValueError, match="'tb' is listed in both val_buildings and test_buildings"):
        Taskonomy(root, val_buildings=["vb", "tb"], test_buildings=["tb"])
    with pytest.raises(ValueError, match="no training building left"):
        Taskonomy(root, val_buildings=["alpha", "beta"], test_buildings=["vb", "tb"]).setup("n")


def test_missing_label_raises_naming_the_file_or_is_dropped_on_request(tmp_path: Path) -> None:
    write_taskonomy(tmp_path, {"a": 3, "vb": 1, "tb": 1})
    gone = label_path(tmp_path, "edge_texture", "a", sorted_views(3)[1])
    gone.unlink()
    with pytest.raises(FileNotFoundError, match=str(gone)):  # unchecked: the index stops at the first
        Taskonomy(tmp_path, **SPLIT, check="off").setup("t")
    assert Taskonomy(tmp_path, **SPLIT).setup("n").client_sizes == [3]  # other tasks are unaffected
    kept = Taskonomy(tmp_path, **SPLIT, resolution=SIZE, drop_incomplete=True).setup("t").clients[0]
    assert len(kept) == 2
    full = Taskonomy(tmp_path, **SPLIT, resolution=SIZE).setup("n").clients[0]
    assert torch.equal(kept[1]["rgb"], full[2]["rgb"])  # the view after the dropped one, not a reused label


@pytest.mark.parametrize(
    ("task", "content", "message"),
    [
        ("depth_zbuffer", b"\x89PNG\r\n\x1a\n not really", "cannot read"),
        ("depth_zbuffer", np.zeros((SIZE, SIZE), dtype=np.uint8), "16-bit"),
        ("normal", np.zeros((SIZE, SIZE), dtype=np.uint16), "8-bit RGB"),
        ("segment_semantic", np.full((SIZE, SIZE), 40, dtype=np.uint8), r"class ids \[40\]"),
    ],
)
def test_unreadable_or_misencoded_png_names_the_file(
    tmp_path: Path, task: str, content: bytes | np.ndarray, message: str
) -> None:
    write_taskonomy(tmp_path, {"a": 2, "vb": 1, "tb": 1})
    bad = label_path(tmp_path, task, "a", sorted_views(2)[1])
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        write_png(bad, content)
    client = Taskonomy(tmp_path, **SPLIT, resolution=SIZE, check="off").setup([task]).clients[0]
    assert client[0][task].shape[-1] == SIZE  # unchecked, the good view still reads
    with pytest.raises(ValueError, match=message) as error:
        client[1]
    assert str(bad) in str(error.value)


def test_bad_settings_are_rejected_with_the_value() -> None:
    with pytest.raises(ValueError, match="resolution .* got 0"):
        Taskonomy("x", resolution=0)
    with pytest.raises(ValueError, match="max_images_per_building .* got 0"):
        Taskonomy("x", max_images_per_building=0)
    with pytest.raises(ValueError, match="val_buildings is empty"):
        Taskonomy("x", val_buildings=[])
    with pytest.raises(ValueError, match="twice in test_buildings"):
        Taskonomy("x", test_buildings=["a", "a"])
