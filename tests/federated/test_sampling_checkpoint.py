"""Client sampling is reproducible and valid; checkpoints are atomic and load without code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mas_lightning.federated.checkpoint import find_resume, load_checkpoint, save_checkpoint
from mas_lightning.federated.sampling import clients_per_round, derive_seed, sample_clients


def test_sampling_is_reproducible_and_varies_by_round() -> None:
    a = sample_clients(0, 0, 3, num_clients=10, count=4, dropout=0.0)
    assert a == sample_clients(0, 0, 3, num_clients=10, count=4, dropout=0.0)
    assert len(a) == 4 and len(set(a)) == 4 and all(0 <= c < 10 for c in a) and a == sorted(a)
    rounds = {tuple(sample_clients(0, 0, r, 10, 4, 0.0)) for r in range(10)}
    assert len(rounds) > 5
    assert derive_seed(1, "x") != derive_seed(2, "x")


def test_dropout_removes_about_the_asked_share() -> None:
    kept = sum(len(sample_clients(0, 0, r, 100, 100, dropout=0.3)) for r in range(20))
    assert 0.65 * 2000 < kept < 0.75 * 2000


def test_clients_per_round_counts_and_fractions() -> None:
    assert clients_per_round(3, 8) == 3
    assert clients_per_round(0.25, 8) == 2
    assert clients_per_round(0.01, 8) == 1
    with pytest.raises(ValueError, match=r"\[1, 8\]"):
        clients_per_round(9, 8)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        clients_per_round(1.5, 8)


def test_checkpoint_roundtrip_and_no_temp_files_left(tmp_path: Path) -> None:
    state = {"round": 3, "weights": [{"w": torch.arange(4.0)}], "names": ["a"], "cost": {"wall_s": 1.5}}
    path = save_checkpoint(state, tmp_path)
    loaded = load_checkpoint(path)
    assert loaded["round"] == 3 and torch.equal(loaded["weights"][0]["w"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoint_refuses_pickled_code(tmp_path: Path) -> None:
    torch.save({"evil": print}, tmp_path / "last.pt")  # an arbitrary Python object, not data
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_checkpoint(tmp_path / "last.pt")


def test_find_resume_modes(tmp_path: Path) -> None:
    assert find_resume(False, tmp_path) is None
    assert find_resume("auto", tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        find_resume(True, tmp_path)
    save_checkpoint({"round": 1}, tmp_path)
    assert find_resume("auto", tmp_path) == tmp_path / "last.pt"
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        find_resume(tmp_path / "missing.pt", tmp_path)
