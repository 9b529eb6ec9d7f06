"""The mini-Taskonomy cache checks each file's CRC-32: bytes changed on disk make the folder be rendered again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from corruption import flip_tensor_byte
from data.test_minitaskonomy_source import TINY, RenderCounter

from mas_lightning.data.minitaskonomy import MiniTaskonomy
from mas_lightning.data.minitaskonomy.cache import MANIFEST, file_checksum

IMAGES = 34
"""Images rendered for TINY: its three clients and four evaluation buildings."""


def test_flipped_bytes_in_a_cache_file_make_the_folder_be_rebuilt(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    counter = RenderCounter(monkeypatch)
    fresh = MiniTaskonomy(**TINY, cache_dir=tmp_path).setup("all").clients[1].arrays
    fresh = {k: v.clone() for k, v in fresh.items()}
    folder = next((tmp_path / "minitaskonomy").iterdir())
    victim = folder / "building01.pt"
    size = victim.stat().st_size
    flip_tensor_byte(victim)
    assert victim.stat().st_size == size  # a size check alone cannot see it
    damaged = torch.load(victim, weights_only=True)  # and torch reads it without complaint
    assert any(not torch.equal(damaged[k], fresh[k]) for k in damaged)
    counter.images = 0

    rebuilt = MiniTaskonomy(**TINY, cache_dir=tmp_path).setup("all").clients[1].arrays
    assert counter.images == IMAGES  # rendered again, not served from the damaged folder
    assert rebuilt.keys() == fresh.keys() and all(torch.equal(rebuilt[k], fresh[k]) for k in fresh)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["crc32"]["building01.pt"] == file_checksum(victim)


def test_a_manifest_without_the_file_checksums_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    MiniTaskonomy(**TINY, cache_dir=tmp_path).setup("d")
    manifest_path = next((tmp_path / "minitaskonomy").iterdir()) / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    del manifest["crc32"]["building02.pt"]
    manifest_path.write_text(json.dumps(manifest))
    counter = RenderCounter(monkeypatch)
    MiniTaskonomy(**TINY, cache_dir=tmp_path).setup("d")
    assert counter.images == IMAGES
    assert "building02.pt" in json.loads(manifest_path.read_text())["crc32"]
