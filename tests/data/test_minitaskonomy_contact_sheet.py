"""The contact sheet: a PNG with one row per sample and one column per key present."""

from __future__ import annotations

import pytest
import torch
from matplotlib.image import imread

from mas_lightning.data.contact_sheet import contact_sheet
from mas_lightning.data.minitaskonomy import render_batch, sample_style


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return render_batch(sample_style(g), 4, 32, g)


def test_sheet_has_a_row_per_sample_and_a_column_per_key(tmp_path, batch):
    full = imread(contact_sheet(batch, tmp_path / "deep" / "all.png", max_samples=3))
    two_rows = imread(contact_sheet(batch, tmp_path / "two.png", max_samples=2))
    few = imread(contact_sheet({k: batch[k] for k in ("rgb", "normal")}, tmp_path / "few.png", max_samples=3))
    assert full.shape[0] > two_rows.shape[0]  # rows follow max_samples
    assert full.shape[1] == two_rows.shape[1] == pytest.approx(11 * few.shape[1] / 2, rel=0.02)  # 11 vs 2 columns
    assert full.std() > 0.05  # something was drawn


def test_sheet_rejects_bad_input(tmp_path, batch):
    with pytest.raises(ValueError, match="'rgb'"):
        contact_sheet({"normal": batch["normal"]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="max_samples=0"):
        contact_sheet(batch, tmp_path / "x.png", max_samples=0)
