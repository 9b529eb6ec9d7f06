"""The mini-Taskonomy export (Taskonomy layout, real PNGs) and the prepared shards read from it.

Expected values are computed here from the rendered arrays and the documented encodings, not by the modules
under test: the export's files must decode (by the PNG reader) to the rendered targets, the shards must give
the PNG reader's samples (bit for bit at the files' own resolution, within half a stored unit when resized),
a fit must give the same numbers on either path, and a damaged shard must be refused by its checksum.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mas_lightning.cli import main
from mas_lightning.commands import fit as fit_module
from mas_lightning.data import MiniTaskonomy, Taskonomy, TaskonomyShards
from mas_lightning.data.base import device_transform, make_loader
from mas_lightning.data.taskonomy_export import export_minitaskonomy
from mas_lightning.errors import ConfigError
from mas_lightning.federated.config import FederatedConfig
from mas_lightning.model import MultiTaskModel

LOG_65536 = math.log(65536.0)
SATURATION = {"keypoints2d": 0.005, "edge_texture": 0.08, "edge_occlusion": 0.00625}  # the reader's bounds


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> MiniTaskonomy:
    return MiniTaskonomy(clients=2, images_per_client=6, size_ratio=1.5, val_buildings=1, test_buildings=1,
                         eval_images_per_building=4, resolution=64, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def exported(mini: MiniTaskonomy, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return export_minitaskonomy(mini, tmp_path_factory.mktemp("export") / "taskonomy")


def shards_source(exported, folder: Path, **options) -> TaskonomyShards:  # noqa: ANN001
    return TaskonomyShards(shards=folder, **{**exported.data_block(), **options})


def test_export_writes_the_taskonomy_layout_with_the_release_encodings(mini: MiniTaskonomy, exported) -> None:  # noqa: ANN001
    assert (exported.train, exported.val, exported.test) == (["building00", "building01"], ["building02"],
                                                             ["building03"])
    assert exported.views == {"building00": 6, "building01": 4, "building02": 4, "building03": 4}
    folder = exported.root / "depth_zbuffer" / "building01"
    assert sorted(p.name for p in folder.iterdir())[:2] == [
        "point_0_view_0_domain_depth_zbuffer.png", "point_0_view_1_domain_depth_zbuffer.png"]
    modes = {d: Image.open(next((exported.root / d / "building00").iterdir())).mode
             for d in ("rgb", "depth_zbuffer", "normal", "segment_semantic", "keypoints2d", "reshading",
                       "principal_curvature", "edge_texture", "edge_occlusion")}
    assert modes == {"rgb": "RGB", "depth_zbuffer": "I;16", "normal": "RGB", "segment_semantic": "L",
                     "keypoints2d": "I;16", "reshading": "L", "principal_curvature": "RGB", "edge_texture": "I;16",
                     "edge_occlusion": "I;16"}
    # The PNG reader decodes the files back to the rendered targets (within the 16-bit encodings' rounding).
    rendered = mini.setup("all").clients[1]
    read = Taskonomy(**exported.data_block()).setup("all").clients[1]
    assert len(read) == len(rendered) == 4
    for i in range(4):
        want, got = rendered[i], read[i]
        assert torch.equal(got["rgb"], want["rgb"]) and torch.equal(got["segment_semantic"], want["segment_semantic"])
        assert torch.equal(got["mask"], want["mask"])
        metres = mini.setup(["depth_zbuffer"]).clients[1].arrays["depth_zbuffer"][i].float()
        raw = torch.where(want["mask"], (metres * 512).round(), torch.tensor(65535.0))
        assert torch.allclose(got["depth_zbuffer"], torch.log1p(raw) / LOG_65536, atol=1e-6)
        for key, bound in SATURATION.items():
            assert (got[key] - want[key]).abs().max() <= 0.5 / (65535 * bound) + 1e-6, key


def test_export_refuses_an_existing_root_and_an_image_split(mini: MiniTaskonomy, exported, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="exists"):
        export_minitaskonomy(mini, exported.root)
    images = MiniTaskonomy(clients=2, images_per_client=8, split="images", holdout_fraction=0.5, resolution=32,
                            cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="split='images'"):
        export_minitaskonomy(images, tmp_path / "x")


def test_omnidata_layout_with_mask_valid(mini: MiniTaskonomy, tmp_path: Path) -> None:
    nested = export_minitaskonomy(mini, tmp_path / "omni", layout="omnidata", domains=("normal",))
    assert (nested.root / "mask_valid" / "taskonomy" / "building00").is_dir()
    source = shards_source(nested, tmp_path / "shards")
    source.prepare("n", progress=False)
    prepared = json.loads((tmp_path / "shards" / "prepared.json").read_text())
    assert prepared["masks"] == ["mask_valid"] and prepared["domains"] == ["rgb", "normal"]
    got = source.setup("n").test[2]
    want = Taskonomy(**nested.data_block()).setup("n").test[2]
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("normalization", ["taskonomy", "mas_reference"])
def test_shards_at_the_files_resolution_give_the_png_readers_samples_bit_for_bit(
    exported, tmp_path: Path, normalization: str  # noqa: ANN001
) -> None:
    source = shards_source(exported, tmp_path / "shards", normalization=normalization)
    report = source.prepare("all", progress=False)
    assert report.written == ["building00", "building01", "building02", "building03"] and report.views == 18
    got = source.setup("all")
    want = Taskonomy(**exported.data_block(), normalization=normalization).setup("all")
    assert got.client_names == want.client_names and got.client_sizes == want.client_sizes == [6, 4]
    pairs = [*zip(got.clients, want.clients, strict=True), (got.val, want.val), (got.test, want.test)]
    for shards, pngs in pairs:
        batch = shards.batch(list(range(len(pngs)))[::-1])  # a batch in another order than the files'
        for j, i in enumerate(reversed(range(len(pngs)))):
            sample = pngs[i]
            assert set(sample) == set(batch)
            for key, value in sample.items():
                assert batch[key].dtype == value.dtype and torch.equal(batch[key][j], value), (key, i)


def test_resized_shards_are_within_half_a_stored_unit_of_the_png_reader(exported, tmp_path: Path) -> None:  # noqa: ANN001
    source = shards_source(exported, tmp_path / "shards", resolution=32)
    source.prepare("all", progress=False)
    got = source.setup("all").clients[0]
    want = Taskonomy(**{**exported.data_block(), "resolution": 32}).setup("all").clients[0]
    # Half a unit of each domain's stored integer, through the decoding's slope.
    half = {"rgb": 0.5 / 255, "normal": 0.5 / 255, "reshading": 0.5 / 255, "autoencoder": 0.5 / 255,
            "principal_curvature": 0.5 / 127, **{k: 0.5 / (65535 * s) for k, s in SATURATION.items()}}
    moved = 0
    for i in range(len(want)):
        a, b = got[i], want[i]
        assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["segment_semantic"], b["segment_semantic"])
        for key, bound in half.items():
            difference = (a[key] - b[key]).abs()
            assert difference.max() <= bound * 1.0001 + 1e-7, key
            moved += int((difference > 0).sum())
        raw = torch.expm1(b["depth_zbuffer"].double() * LOG_65536)  # the reader's resized raw depth
        slope = 1.0 / ((1.0 + (raw - 0.5).clamp_min(0)) * LOG_65536)  # d/draw of log1p(raw) / log(65536)
        assert ((a["depth_zbuffer"].double() - b["depth_zbuffer"].double()).abs() <= 0.5 * slope + 1e-6).all()
    assert moved > 0  # the files were resized: the rounding shows


def test_the_shard_path_trains_the_same_numbers_as_the_png_path(exported, tmp_path: Path) -> None:  # noqa: ANN001
    source = shards_source(exported, tmp_path / "shards")
    source.prepare("all", progress=False)
    common = dict(tasks="all", model=functools.partial(MultiTaskModel, decoder_width=8), rounds=2,
                  accelerator="cpu", out=tmp_path / "runs", seed=3,
                  engine=FederatedConfig(clients_per_round=2, batch_size=2, local_steps=2, eval_batch_size=4))
    assert source.decode_on == "device"  # the default: compact rows to the device, decoded and flipped there
    png = fit_module.fit(data=Taskonomy(**exported.data_block()), name="png", **common)
    shards = fit_module.fit(data=source, name="shards", **common)
    host = fit_module.fit(data=shards_source(exported, tmp_path / "shards", decode_on="host"), name="host", **common)
    assert math.isfinite(png["total_test_loss"])
    # Decoding on the device or on the host: the same batches, flips and numbers, exactly.
    assert host["total_test_loss"] == shards["total_test_loss"] and host["test"] == shards["test"]
    assert host["val_loss"] == shards["val_loss"]
    assert shards["total_test_loss"] == pytest.approx(png["total_test_loss"], rel=1e-6, abs=1e-7)
    assert set(png["test"]) == set(shards["test"]) and len(png["test"]) == 9
    for task, metrics in png["test"].items():
        for name, value in metrics.items():
            if value is not None:
                assert shards["test"][task][name] == pytest.approx(value, rel=1e-6, abs=1e-7), (task, name)


@pytest.mark.parametrize("normalization", ["taskonomy", "mas_reference"])
def test_the_compact_rows_decode_to_the_host_decoded_batch_exactly(exported, tmp_path: Path,  # noqa: ANN001
                                                                    normalization: str) -> None:
    source = shards_source(exported, tmp_path / "shards", normalization=normalization)
    source.prepare("all", progress=False)
    device = source.setup("all")
    host = shards_source(exported, tmp_path / "shards", normalization=normalization, decode_on="host").setup("all")
    assert host.val.device_transform is None and device_transform(host.val) is None

    def batches(dataset, on_device: bool) -> list[dict[str, torch.Tensor]]:  # noqa: ANN001
        return list(make_loader(dataset, 4, shuffle=True, generator=torch.Generator().manual_seed(2),
                                on_device=on_device))

    for got_data, want_data in ((device.clients[0], host.clients[0]), (device.val, host.val)):
        transform = device_transform(got_data)
        assert transform is not None
        compact, decoded, host_rows = batches(got_data, True), batches(want_data, True), batches(got_data, False)
        assert len(compact) == len(decoded) == len(host_rows) >= 1
        for rows, want, plain in zip(compact, decoded, host_rows, strict=True):
            assert {v.dtype for v in rows.values()} <= {torch.uint8, torch.uint16}  # what travels is compact
            assert rows["rgb"].dtype == torch.uint8 and rows["depth_zbuffer"].dtype == torch.uint16
            got = transform(rows)
            assert got.keys() == want.keys() == plain.keys() and "autoencoder" in got and "mask" in got
            for key, value in want.items():
                assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
                assert torch.equal(plain[key], value), key
    # The decoded batch is the PNG reader's samples (bit for bit at the files' resolution), in the loader's order.
    pngs = Taskonomy(**exported.data_block(), normalization=normalization).setup("all").clients[0]
    order = torch.randperm(len(pngs), generator=_after_base_seed(2)).tolist()[:4]
    first = device_transform(device.clients[0])(batches(device.clients[0], True)[0])  # type: ignore[misc]
    for j, i in enumerate(order):
        assert all(torch.equal(first[k][j], v) for k, v in pngs[i].items()), i


def _after_base_seed(seed: int) -> torch.Generator:
    gen = torch.Generator().manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_(generator=gen)  # the loader's base seed, drawn first
    return gen


def test_a_damaged_shard_fails_its_checksum_in_one_line_and_prepare_rewrites_it(
    exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: ANN001
) -> None:
    folder = tmp_path / "shards"
    source = shards_source(exported, folder, check="full")
    source.prepare("dn", progress=False)
    shard = folder / "building01.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x10  # one bit, same size: only the checksum can tell
    shard.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"building01\.bin fails its checksum"):
        source.setup("dn")
    config = tmp_path / "fit.yaml"
    block = {"class_path": "mas_lightning.data.TaskonomyShards",
             "init_args": {**exported.data_block(), "shards": str(folder), "check": "full"}}
    config.write_text(json.dumps({"data": block, "tasks": "dn"}))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(config), "--rounds=1", f"--out={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "fails its checksum" in err
    assert "prepare-data" in err
    main(["prepare-data", "-c", str(config)])  # verifies every shard, rewrites the damaged one only
    out = capsys.readouterr().out
    assert "1 building shards written, 3 already prepared and verified" in out
    source.setup("dn")  # good again


def test_setup_and_prepare_refuse_what_does_not_match(exported, tmp_path: Path,  # noqa: ANN001
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "shards"
    with pytest.raises(ConfigError, match="no prepared data .* prepare-data"):
        shards_source(exported, folder).setup("dn")
    shards_source(exported, folder).prepare("dn", progress=False)
    with pytest.raises(ConfigError, match=r"resolution: 32, but .* prepared with 64"):
        shards_source(exported, folder, resolution=32).setup("dn")
    with pytest.raises(ConfigError, match="holds no keypoints2d"):
        shards_source(exported, folder).setup("dk")
    with pytest.raises(ConfigError, match=r"resolution: 64 there, 32 now"):
        shards_source(exported, folder, resolution=32).prepare("dn", progress=False)
    (folder / "building02.bin").write_bytes(b"short")
    with pytest.raises(ConfigError, match=r"building02\.bin is 5 bytes"):
        shards_source(exported, folder, check="off").setup("dn")
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare-data", "--tasks=dn", f"--out={tmp_path}"])  # the default data source: nothing to prepare
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "MiniTaskonomy has nothing to prepare" in err


def test_loader_workers_and_fewer_views_give_the_same_batches(exported, tmp_path: Path) -> None:  # noqa: ANN001
    shards_source(exported, tmp_path / "shards").prepare("dn", progress=False)
    plain = shards_source(exported, tmp_path / "shards").setup("dn").clients[0]
    workers = shards_source(exported, tmp_path / "shards", num_workers=1).setup("dn").clients[0]
    assert workers.loader_options == {"num_workers": 1, "pin_memory": False}

    def batches(dataset) -> list[dict[str, torch.Tensor]]:  # noqa: ANN001
        return list(make_loader(dataset, 4, shuffle=True, generator=torch.Generator().manual_seed(5)))

    for a, b in zip(batches(plain), batches(workers), strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    few = shards_source(exported, tmp_path / "shards", max_images_per_building=2).setup("dn")
    pngs = Taskonomy(**exported.data_block(), max_images_per_building=2).setup("dn")
    assert few.client_sizes == pngs.client_sizes == [2, 2]
    assert np.array_equal(few.clients[1][1]["depth_zbuffer"].numpy(), pngs.clients[1][1]["depth_zbuffer"].numpy())
