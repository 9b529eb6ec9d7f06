"""The Taskonomy file check: every bad file is found before training, named with its reason.

Trees are written by ``taskonomy_fixture`` in the real PNG encodings, then damaged one file at a time.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from data.taskonomy_fixture import label_path, sorted_views, write_png, write_taskonomy

from mas_lightning.cli import main
from mas_lightning.data import taskonomy, taskonomy_check
from mas_lightning.data.taskonomy import Taskonomy
from mas_lightning.errors import ConfigError

SIZE = 8
SPLIT = {"val_buildings": ["vb"], "test_buildings": ["tb"]}
BUILDINGS = {"a": 3, "b": 2, "vb": 1, "tb": 1}
TASKS = "sdn"  # domains rgb, segment_semantic, depth_zbuffer, normal (depth is also the mask)
VIEW = sorted_views(3)[1]  # point_2_view_1


def damage(root: Path, kind: str, building: str = "a", view: str = VIEW) -> tuple[Path, str]:
    """Spoil one file of ``kind``; return it and a regex its reason must match."""
    if kind == "truncated":
        path = label_path(root, "depth_zbuffer", building, view)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, r"unreadable: truncated or corrupt \(.+\)"
    if kind == "garbage":
        path = label_path(root, "normal", building, view)
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())
        return path, r"unreadable: not an image PIL recognises \(garbage, or not a PNG\)"
    if kind == "png_header_garbage":  # a PNG signature, then nonsense
        path = label_path(root, "rgb", building, view)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"nonsense" * 20)
        return path, r"unreadable: "
    if kind == "empty":
        path = label_path(root, "segment_semantic", building, view)
        path.write_bytes(b"")
        return path, r"unreadable: empty file \(0 bytes\)"
    if kind == "wrong_size":
        path = label_path(root, "depth_zbuffer", building, view)
        write_png(path, np.full((SIZE // 2, SIZE // 2), 1024, dtype=np.uint16))
        return path, rf"^{SIZE // 2}x{SIZE // 2}, its RGB image is {SIZE}x{SIZE}$"
    if kind == "wrong_bit_depth":
        path = label_path(root, "depth_zbuffer", building, view)
        write_png(path, np.zeros((SIZE, SIZE), dtype=np.uint8))
        return path, r"^an 8-bit grey image \(PIL mode 'L'\); the depth_zbuffer domain expects a 16-bit greyscale"
    if kind == "wrong_mode":
        path = label_path(root, "normal", building, view)
        write_png(path, np.zeros((SIZE, SIZE), dtype=np.uint16))
        return path, r"^a 16-bit grey image \(PIL mode 'I;16'\); the normal domain expects a 8-bit RGB image"
    if kind == "class_ids":
        path = label_path(root, "segment_semantic", building, view)
        ids = np.ones((SIZE, SIZE), dtype=np.uint8)
        ids[0, :3] = [18, 40, 255]
        write_png(path, ids)
        return path, r"^holds class ids \[18, 40, 255\]; segment_semantic expects ids 0\.\.17"
    if kind == "missing":
        path = label_path(root, "segment_semantic", building, view)
        path.unlink()
        return path, rf"^missing: its rgb image {view}_domain_rgb\.png has no segment_semantic label$"
    raise AssertionError(kind)


KINDS = ["truncated", "garbage", "png_header_garbage", "empty", "wrong_size", "wrong_bit_depth", "wrong_mode",
         "class_ids", "missing"]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_each_bad_file_is_reported_with_its_reason(tmp_path: Path, kind: str) -> None:
    write_taskonomy(tmp_path, BUILDINGS, size=SIZE)
    path, reason = damage(tmp_path, kind)
    report = Taskonomy(tmp_path, **SPLIT, check="off").check_files(TASKS, progress=False)
    assert [bad.path for bad in report.bad] == [path]
    assert re.search(reason, report.bad[0].reason), report.bad[0].reason
    assert str(report.bad[0]) == f"{path}: {report.bad[0].reason}"
    assert report.files == 7 * 4  # every view of every split, rgb and three label domains


def test_an_rgb_image_of_another_size_than_its_labels_is_reported_not_resized(tmp_path: Path) -> None:
    write_taskonomy(tmp_path, BUILDINGS, size=SIZE)
    rgb = label_path(tmp_path, "rgb", "b", sorted_views(2)[0])
    write_png(rgb, np.zeros((2 * SIZE, 2 * SIZE, 3), dtype=np.uint8))
    report = Taskonomy(tmp_path, **SPLIT).check_files(TASKS, progress=False)
    labels = [label_path(tmp_path, d, "b", sorted_views(2)[0]) for d in ("segment_semantic", "depth_zbuffer", "normal")]
    assert [(bad.path, bad.reason) for bad in report.bad] == [
        (path, f"{SIZE}x{SIZE}, its RGB image is {2 * SIZE}x{2 * SIZE}") for path in labels
    ]
    # Unchecked, reading the view stops with both files named instead of resizing one of them.
    client = Taskonomy(tmp_path, **SPLIT, check="off").setup(TASKS).clients[1]
    client[1]  # the other view is fine
    with pytest.raises(ValueError, match=rf"{labels[0]} is {SIZE}x{SIZE}, its RGB image {rgb} is 16x16"):
        client[0]


def test_every_bad_file_is_listed_in_reading_order(tmp_path: Path) -> None:
    write_taskonomy(tmp_path, BUILDINGS, size=SIZE)
    spoiled = [
        damage(tmp_path, "truncated", "a", sorted_views(3)[0])[0],
        damage(tmp_path, "class_ids", "a", sorted_views(3)[0])[0],
        damage(tmp_path, "missing", "a", sorted_views(3)[2])[0],
        damage(tmp_path, "wrong_size", "b", sorted_views(2)[1])[0],
        damage(tmp_path, "garbage", "vb", sorted_views(1)[0])[0],
        damage(tmp_path, "wrong_bit_depth", "tb", sorted_views(1)[0])[0],
    ]
    source = Taskonomy(tmp_path, **SPLIT)
    by_view = [bad.path for bad in source.check_files(TASKS, progress=False).bad]
    assert sorted(by_view) == sorted(spoiled) and len(by_view) == len(spoiled)
    assert by_view == [bad.path for bad in source.check_files(TASKS, progress=False, workers=1).bad]
    assert by_view.index(spoiled[0]) < by_view.index(spoiled[2]) < by_view.index(spoiled[3]) < by_view.index(spoiled[4])


def test_a_clean_tree_passes_and_only_the_files_read_are_checked(tmp_path: Path) -> None:
    write_taskonomy(tmp_path, BUILDINGS, size=SIZE)
    damage(tmp_path, "garbage", "a", sorted_views(3)[2])  # normal of the third view: not read below
    report = Taskonomy(tmp_path, **SPLIT, max_images_per_building=2).check_files(TASKS, progress=False)
    assert report.ok and report.bad == [] and report.files == (2 + 2 + 1 + 1) * 4
    assert report.summary().startswith("all 24 files are good (")
    assert Taskonomy(tmp_path, **SPLIT).check_files("sd", progress=False).ok  # normals not requested
    data = Taskonomy(tmp_path, **SPLIT, max_images_per_building=2, check="full").setup(TASKS)
    assert data.client_sizes == [2, 2]


def test_setup_refuses_a_bad_tree_naming_the_count_and_first_files(tmp_path: Path) -> None:
    write_taskonomy(tmp_path, BUILDINGS, size=SIZE)
    views = sorted_views(3)
    files = [damage(tmp_path, kind, "a", views[i])[0] for kind, i in (("wrong_size", 0), ("class_ids", 1),
                                                                      ("missing", 2), ("empty", 0))]  # fmt: skip
    with pytest.raises(ConfigError) as error:
        Taskonomy(tmp_path, **SPLIT).setup(TASKS)  # check="auto": a tiny tree is checked at setup
    message = str(error.value)
    assert "\n" not in message
    # The first three in reading order (view by view; rgb, then the tasks' domains, then the mask's).
    assert message.startswith(
        f"Taskonomy files under {tmp_path}: 4 bad files of 28 checked: {files[3]}: unreadable: empty file "
        f"(0 bytes); {files[0]}: 4x4, its RGB image is 8x8; {files[1]}: holds class ids [18, 40, 255]; "
    )
    assert str(files[2]) not in message
    assert message.endswith("; and 1 more; list them all with `python -m mas_lightning check-data -c <config>`")


def test_auto_skips_a_large_tree_with_a_warning_and_full_checks_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    write_taskonomy(tmp_path, BUILDINGS, size=SIZE)
    path, _ = damage(tmp_path, "garbage")
    monkeypatch.setattr(taskonomy, "AUTO_CHECK_MAX_FILES", 27)  # the tree holds 28 files
    with caplog.at_level(logging.WARNING):
        data = Taskonomy(tmp_path, **SPLIT).setup(TASKS)
    assert "28 files, more than the 27 that check='auto' decodes at setup" in caplog.text
    with pytest.raises(ValueError, match=f"cannot read {path}"):  # left to the lazy reader
        data.clients[0][1]
    with pytest.raises(ConfigError, match=f"1 bad file of 28 checked: {path}: unreadable"):
        Taskonomy(tmp_path, **SPLIT, check="full").setup(TASKS)
    monkeypatch.setattr(taskonomy, "AUTO_CHECK_MAX_FILES", 28)
    with pytest.raises(ConfigError, match=str(path)):
        Taskonomy(tmp_path, **SPLIT).setup(TASKS)
    with pytest.raises(ValueError, match="check must be 'auto', 'full' or 'off', got 'yes'"):
        Taskonomy(tmp_path, check="yes")  # type: ignore[arg-type]


def test_plain_progress_lines_off_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_taskonomy(tmp_path, BUILDINGS, size=SIZE)
    Taskonomy(tmp_path, **SPLIT).check_files(TASKS)
    assert capsys.readouterr().err == ""  # a check shorter than PLAIN_EVERY_S prints nothing
    monkeypatch.setattr(taskonomy_check, "PLAIN_EVERY_S", 0.0)
    Taskonomy(tmp_path, **SPLIT).check_files(TASKS, workers=1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 7 and lines[-1].startswith("checking files: 28/28, 0 bad, ")


def write_config(tmp_path: Path, root: Path) -> Path:
    """A complete fit config: check-data must accept every fit option and use only data and tasks."""
    config = tmp_path / "fit.yaml"
    config.write_text(
        f"data:\n  class_path: mas_lightning.data.Taskonomy\n  init_args:\n    root: {root}\n"
        "    val_buildings: [vb]\n    test_buildings: [tb]\n    resolution: 8\n"
        f"tasks: {TASKS}\nrounds: 3\nengine: {{clients_per_round: 2, batch_size: 4}}\n"
        "method:\n  class_path: mas_lightning.methods.MAS\n  init_args: {split_round: 1}\n"
        f"out: {tmp_path / 'runs'}\nseed: 1\n"
    )
    return config


def test_check_data_command_exits_2_listing_every_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "taskonomy"
    write_taskonomy(root, BUILDINGS, size=SIZE)
    config = write_config(tmp_path, root)
    assert main(["check-data", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{root}: all 28 files are good (") and out.count("\n") == 1

    spoiled = [
        damage(root, "truncated", "a", VIEW)[0],
        damage(root, "class_ids", "vb", sorted_views(1)[0])[0],
        damage(root, "missing", "b", sorted_views(2)[0])[0],
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(["check-data", "-c", str(config)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 3 and sorted(line.split(": ", 1)[0] for line in lines) == sorted(map(str, spoiled))
    assert f"{spoiled[2]}: missing: its rgb image" in captured.out
    assert captured.err.splitlines() == [
        f"error: invalid configuration for 'check-data': data: 3 bad files of 28 checked under {root} "
        "(listed above, one per line)"
    ]
    # Overrides work as in fit: keypoints alone read neither depth nor segmentation.
    assert main(["check-data", "-c", str(config), "--tasks=k", "--data.init_args.max_images_per_building=1"]) == 0
    assert capsys.readouterr().out.startswith(f"{root}: all 8 files are good (")


def test_check_data_command_on_other_sources_and_a_missing_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    synthetic = ["--data", '{"class_path": "mas_lightning.data.synthetic.SyntheticData"}']
    assert main(["check-data", *synthetic, "--tasks=dn"]) == 0
    assert capsys.readouterr().out == "SyntheticData makes its images in memory: no files to check\n"
    with pytest.raises(SystemExit) as exit_info:
        main(["check-data", "-c", str(write_config(tmp_path, tmp_path / "nowhere"))])
    assert exit_info.value.code == 2 and f"{tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
