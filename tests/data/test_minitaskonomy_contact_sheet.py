"""The contact sheet: one row per sample (labelled with its building), one column per key present, a legend of
the semantic classes shown, a depth colour bar in metres, and PNG, PDF and SVG files."""

from __future__ import annotations

import math

import pytest
import torch
from matplotlib.image import imread

from mas_lightning.data.contact_sheet import DEPTH_UNITS, contact_sheet, contact_sheet_figure, depth_metres
from mas_lightning.data.minitaskonomy import SEMANTIC_CLASSES, render_batch, sample_style


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return render_batch(sample_style(g), 4, 32, g)


def test_sheet_has_a_row_per_sample_and_a_column_per_key(tmp_path, batch):
    full = imread(contact_sheet(batch, tmp_path / "deep" / "all.png", max_samples=3))
    two_rows = imread(contact_sheet(batch, tmp_path / "two.png", max_samples=2))
    few = imread(contact_sheet({k: batch[k] for k in ("rgb", "normal")}, tmp_path / "few.png", max_samples=3))
    assert full.shape[0] - two_rows.shape[0] == 130  # one row of 1.3 in at 100 dpi
    assert full.shape[1] == two_rows.shape[1] == round(100 * (0.3 + 1.25 * 11))  # label margin + 11 columns
    assert few.shape == (round(100 * (0.3 + 1.3 * 3)), round(100 * (0.3 + 1.25 * 2)), 4)  # no legend band
    assert full.std() > 0.05  # something was drawn
    for suffix in ("pdf", "svg"):
        assert (tmp_path / "deep" / f"all.{suffix}").stat().st_size > 1000
    assert (tmp_path / "deep" / "all.pdf").read_bytes().startswith(b"%PDF")
    assert b"<svg" in (tmp_path / "deep" / "all.svg").read_bytes()[:2000]


def test_legend_names_the_classes_shown_and_rows_name_their_building(batch):
    figure = contact_sheet_figure(batch, 3, row_labels=["b0", "b1", "b2"], class_names=SEMANTIC_CLASSES)
    shown = sorted({int(c) for c in batch["segment_semantic"][:3].unique()})
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == [SEMANTIC_CLASSES[c] for c in shown]
    assert len(shown) >= 3
    labels = [figure.axes[r * 11].get_ylabel() for r in range(3)]  # first column of each row
    assert labels == ["b0", "b1", "b2"]
    colour_bar = figure.axes[-1]
    assert colour_bar.get_xlabel() == DEPTH_UNITS == "depth (m)"
    seen = torch.cat([torch.where(batch["mask"][r, 0], depth_metres(batch["depth_zbuffer"][r, 0]), torch.nan).flatten()
                      for r in range(3)])
    seen = seen[~seen.isnan()]
    assert colour_bar.get_xlim() == pytest.approx((float(seen.min()), float(seen.max())), rel=1e-5)


def test_depth_metres_inverts_the_encoding():
    z = torch.tensor([0.5, 2.0, 10.0])
    assert depth_metres(torch.log1p(512 * z) / math.log(65536)) == pytest.approx(z.tolist(), rel=1e-5)


def test_sheet_rejects_bad_input(tmp_path, batch):
    with pytest.raises(ValueError, match="'rgb'"):
        contact_sheet({"normal": batch["normal"]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="max_samples=0"):
        contact_sheet(batch, tmp_path / "x.png", max_samples=0)
    with pytest.raises(ValueError, match="1 row labels for 3 rows"):
        contact_sheet(batch, tmp_path / "x.png", max_samples=3, row_labels=["a"])
