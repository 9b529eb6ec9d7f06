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

from mas_lightning.cli import main
from mas_lightning.data.base import hflip, make_loader
from mas_lightning.data.taskonomy import TINY_TEST_BUILDINGS, TINY_VAL_BUILDINGS, Taskonomy
from mas_lightning.errors import ConfigError
from mas_lightning.model.metrics import normal_angles
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


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true:UserWarning")  # a CPU-only machine
def test_workers_and_pinned_memory_give_the_same_batches_as_the_training_process(flat: tuple[Path, dict]) -> None:
    root, _ = flat
    plain = Taskonomy(root, **SPLIT, resolution=SIZE).setup("dsn").clients[1]
    workers = Taskonomy(root, **SPLIT, resolution=SIZE, num_workers=2, pin_memory=True).setup("dsn").clients[1]
    assert workers.loader_options == {"num_workers": 2, "pin_memory": True}

    def batches(dataset) -> list[dict[str, torch.Tensor]]:  # noqa: ANN001
        loader = make_loader(dataset, 2, shuffle=True, generator=torch.Generator().manual_seed(4))
        assert loader.num_workers == dataset.loader_options["num_workers"]
        return list(loader)

    got, want = batches(workers), batches(plain)
    # Independently: the seeded shuffle of the 5 views, read sample by sample.
    order = torch.randperm(5, generator=_after_base_seed(4)).tolist()
    assert len(got) == len(want) == 3
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.keys() == b.keys() == {"rgb", "mask", "depth_zbuffer", "segment_semantic", "normal"}
        assert all(torch.equal(a[k], b[k]) for k in a)
        rows = order[2 * i : 2 * i + 2]
        assert all(torch.equal(a["depth_zbuffer"][j], plain[r]["depth_zbuffer"]) for j, r in enumerate(rows))
    with pytest.raises(ConfigError, match="num_workers=-1"):
        Taskonomy(root, **SPLIT, num_workers=-1)


def _after_base_seed(seed: int) -> torch.Generator:
    """A generator past the loader's base-seed draw, where ``RandomSampler`` permutes the indices."""
    gen = torch.Generator().manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_(generator=gen)
    return gen


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


# --- building presets: the official tiny split and the MAS authors' clients, chosen by name ---

TINY_SPLIT_CSV = """id,train,val,test
hanson,1,0,0
merom,1,0,0
klickitat,1,0,0
onaga,1,0,0
leonardo,1,0,0
marstons,1,0,0
newfields,1,0,0
pinesdale,1,0,0
lakeville,1,0,0
cosmos,1,0,0
benevolence,1,0,0
pomaria,1,0,0
tolstoy,1,0,0
shelbyville,1,0,0
allensville,1,0,0
wainscott,1,0,0
beechwood,1,0,0
coffeen,1,0,0
stockman,1,0,0
hiteman,1,0,0
woodbine,1,0,0
lindenwood,1,0,0
forkland,1,0,0
mifflinburg,1,0,0
ranchester,1,0,0
wiconisco,0,1,0
corozal,0,1,0
collierville,0,1,0
markleeville,0,1,0
darden,0,1,0
ihlen,0,0,1
muleshoe,0,0,1
uvalda,0,0,1
noxapater,0,0,1
mcdade,0,0,1
"""
"""The published tiny split file, rows as in omnidata-tools' train_val_test_tiny.csv (not sorted)."""
MAS_CLIENTS_TXT = """
allensville
beechwood
benevolence
coffeen
collierville
corozal
cosmos
darden
forkland
hanson
hiteman
ihlen
klickitat
lakeville
leonardo
lindenwood
markleeville
marstons
mcdade
merom
mifflinburg
muleshoe
newfields
noxapater
onaga
pinesdale
pomaria
ranchester
shelbyville
stockman
tolstoy
uvalda
""".strip().splitlines()
"""The MAS authors' clients (EasyFL applications/mas/clients.txt)."""


def split_file_buildings() -> dict[str, list[str]]:
    rows = [line.split(",") for line in TINY_SPLIT_CSV.strip().splitlines()[1:]]
    return {split: [row[0] for row in rows if row[1 + i] == "1"] for i, split in enumerate(("train", "val", "test"))}


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One view per building of the tiny split file, plus a building outside it; rgb and segmentation only."""
    root = tmp_path_factory.mktemp("tiny")
    names = [name for names in split_file_buildings().values() for name in names]
    write_taskonomy(root, dict.fromkeys([*names, "outsider"], 1), size=4, domains=("rgb", "segment_semantic"))
    return root


def server_buildings(dataset: object) -> list[str]:
    return [building.name for building in dataset.buildings]  # type: ignore[attr-defined]


def test_tiny_preset_is_the_published_split_and_the_default_for_val_and_test(tiny_tree: Path) -> None:
    split = split_file_buildings()
    assert [len(split[s]) for s in ("train", "val", "test")] == [25, 5, 5]
    data = Taskonomy(tiny_tree, "tiny", resolution=4, check="off").setup("s")
    assert data.client_names == sorted(split["train"]) and "outsider" not in data.client_names
    assert server_buildings(data.val) == sorted(split["val"]) and server_buildings(data.test) == sorted(split["test"])
    named = Taskonomy(tiny_tree, "tiny", val_buildings="tiny", test_buildings="tiny", resolution=4, check="off")
    assert (named.train_buildings, named.val_buildings, named.test_buildings) == (
        sorted(split["train"]), sorted(split["val"]), sorted(split["test"])
    )  # fmt: skip
    # No train list: every building found that is not val or test, the outsider included.
    found = Taskonomy(tiny_tree, resolution=4, check="off").setup("s")
    assert found.client_names == sorted([*split["train"], "outsider"])


def test_mas_reference_preset_is_the_authors_32_clients(tiny_tree: Path) -> None:
    source = Taskonomy(tiny_tree, "mas_reference", ["wiconisco"], ["wainscott"], resolution=4, check="off")
    data = source.setup("s")
    assert len(MAS_CLIENTS_TXT) == 32 and data.client_names == MAS_CLIENTS_TXT
    # The authors' clients hold 9 of the 10 official val/test buildings: with the tiny val/test it is refused.
    with pytest.raises(ValueError, match="'collierville' is listed in both train_buildings and val_buildings"):
        Taskonomy(tiny_tree, "mas_reference")


def test_a_preset_building_missing_on_disk_is_named_with_the_preset(tmp_path: Path) -> None:
    split = split_file_buildings()
    present = [b for names in split.values() for b in names if b != "woodbine"]  # as the omnidata tool downloads
    write_taskonomy(tmp_path, dict.fromkeys(present, 1), size=4, domains=("rgb", "segment_semantic"))
    with pytest.raises(FileNotFoundError) as error:
        Taskonomy(tmp_path, "tiny", check="off").setup("s")
    message = str(error.value)
    assert "['woodbine']" in message and "preset train_buildings: tiny" in message
    assert "omnidata download tool does not download woodbine" in message and "\n" not in message
    assert Taskonomy(tmp_path, resolution=4, check="off").setup("s").client_names == sorted(
        b for b in split["train"] if b != "woodbine"
    )


def test_an_unknown_preset_is_a_one_line_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"^train_buildings: no preset named 'medium'; accepted preset names: "
                       r"'tiny', 'mas_reference', or a list") as error:  # fmt: skip
        Taskonomy("x", "medium")
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"val_buildings: no preset named 'mas_reference'; accepted preset names: "
                       r"'tiny', or"):  # fmt: skip
        Taskonomy("x", val_buildings="mas_reference")
    config = tmp_path / "fit.yaml"
    config.write_text(
        "data:\n  class_path: mas_lightning.data.Taskonomy\n  init_args:\n    root: /nowhere\n"
        "    train_buildings: tinny\ntasks: s\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["check-data", "-c", str(config)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: invalid configuration for 'check-data': train_buildings: no preset named 'tinny'; accepted "
        "preset names: 'tiny', 'mas_reference', or a list of building names (e.g. [tinny] for one building)"
    ]


# --- normalization: the Taskonomy authors' decoding (default) or the MAS reference loader's standardisation ---


def test_mas_reference_normalization_follows_the_reference_formulas(flat: tuple[Path, dict]) -> None:
    root, written = flat
    tasks = ("depth_zbuffer", "normal", "keypoints2d", "edge_texture", "edge_occlusion", "reshading",
             "principal_curvature", "segment_semantic", "autoencoder")  # fmt: skip
    ours = Taskonomy(root, **SPLIT, resolution=SIZE).setup(tasks).clients[0][0]
    mas = Taskonomy(root, **SPLIT, resolution=SIZE, normalization="mas_reference").setup(tasks).clients[0][0]
    raw = written["alpha"][sorted_views(3)[0]]
    y, x = 2, 5  # one pixel, normalised by hand below
    depth = float(raw["depth_zbuffer"][y, x])
    assert ours["depth_zbuffer"][0, y, x].item() == pytest.approx(math.log(depth + 1) / math.log(65536), abs=1e-6)
    assert mas["depth_zbuffer"][0, y, x].item() == pytest.approx((depth - 1500) / 1000, abs=1e-5)
    for task, saturation, mean, std in (
        ("keypoints2d", 0.005, 50.0, 100.0),
        ("edge_texture", 0.08, 718.0, 1070.0),
        ("edge_occlusion", 0.00625, 56.0248, 239.1265),
    ):
        value = float(raw[task][y, x])
        assert ours[task][0, y, x].item() == pytest.approx(min(value / 65535 / saturation, 1.0), abs=1e-6), task
        assert mas[task][0, y, x].item() == pytest.approx((value - mean) / std, abs=1e-5), task
        assert mas[task].max() > 1  # not clipped: the fixture's values reach 8000 raw units
    r, g, b = (float(c) for c in raw["reshading"][y, x])
    assert ours["reshading"][0, y, x].item() == pytest.approx((r + g + b) / 3 / 255, abs=1e-6)
    assert mas["reshading"][0, y, x].item() == pytest.approx(((r + g + b) / 3 / 255 - 0.4962) / 0.2846, abs=1e-5)
    k1, k2 = (float(c) for c in raw["principal_curvature"][y, x, :2])
    assert ours["principal_curvature"][:, y, x].tolist() == pytest.approx([(k1 - 127) / 127, (k2 - 127) / 127])
    assert mas["principal_curvature"][:, y, x].tolist() == pytest.approx(
        [(k1 / 255 - 0.5175) / 0.1373, (k2 / 255 - 0.4987) / 0.0359], abs=1e-5
    )
    n = [float(c) for c in raw["normal"][y, x]]
    assert ours["normal"][:, y, x].tolist() == pytest.approx([c / 255 for c in n])
    # The reference's 2 v - 1, shifted by 0.5 (an L1 loss does not see a constant shift).
    assert mas["normal"][:, y, x].tolist() == pytest.approx([2 * c / 255 - 1 + 0.5 for c in n], abs=1e-6)
    for task in ("segment_semantic", "autoencoder", "rgb"):  # read the same way by both
        assert torch.equal(ours[task], mas[task]), task
    # Valid depth: below 65535 for the Taskonomy decoding, below 8192 (16 m) for the reference.
    depth_raw = torch.from_numpy(raw["depth_zbuffer"].astype(np.int64))
    assert torch.equal(ours["mask"][0], depth_raw != 65535) and torch.equal(mas["mask"][0], depth_raw < 8192)
    assert 0 < int(mas["mask"].sum()) < int(ours["mask"].sum())


def test_mas_reference_normals_flip_and_measure_angles_exactly(flat: tuple[Path, dict]) -> None:
    root, _ = flat
    ours = Taskonomy(root, **SPLIT, resolution=SIZE).setup("n").clients[1]
    mas = Taskonomy(root, **SPLIT, resolution=SIZE, normalization="mas_reference").setup("n").clients[1]
    batch_ours = next(iter(make_loader(ours, batch_size=2)))
    batch_mas = next(iter(make_loader(mas, batch_size=2)))
    # Both encode the same directions: the angle metric reads 0 degrees between them.
    assert float(normal_angles(batch_mas["normal"], batch_ours["normal"]).max()) < 0.05
    flipped = hflip(batch_mas)["normal"]
    unit = batch_mas["normal"] - 0.5  # the reference's unit normal n
    mirrored = torch.cat([-unit[:, :1], unit[:, 1:]], dim=1).flip(-1) + 0.5  # n_x -> -n_x, image mirrored
    assert torch.allclose(flipped, mirrored, atol=1e-6)


def test_unknown_normalization_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="normalization: 'standard' is not accepted; use one of taskonomy, "
                       "mas_reference"):  # fmt: skip
        Taskonomy("x", normalization="standard")  # type: ignore[arg-type]


def test_mas_reference_masks_from_depth_and_needs_it(tmp_path: Path) -> None:
    flat_root = tmp_path / "no_depth"
    write_taskonomy(flat_root, {"a": 1, "vb": 1, "tb": 1}, size=SIZE, nested=True,
                    domains=("rgb", "normal", "mask_valid"))  # fmt: skip
    assert Taskonomy(flat_root, **SPLIT, resolution=SIZE).setup("n").client_sizes == [1]  # mask_valid suffices
    with pytest.raises(FileNotFoundError, match="normalization mas_reference reads it from depth_zbuffer"):
        Taskonomy(flat_root, **SPLIT, normalization="mas_reference").setup("n")
