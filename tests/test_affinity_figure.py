"""The affinity heatmap a paper can use: its title names the averaged rounds, the split's groups are boxed,
every cell has the same number of decimals, and it is written as PNG, PDF and SVG."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from matplotlib.image import imread
from matplotlib.patches import Rectangle

from mas_lightning.report.affinity_files import AffinityFiles, affinity_figure, describe_rounds, write_affinity

TASKS = ["segment_semantic", "depth_zbuffer", "normal", "keypoints2d"]
GROUPS = [["depth_zbuffer", "keypoints2d"], ["segment_semantic", "normal"]]


def _matrix(scale: float) -> torch.Tensor:
    z = torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * scale
    return z.fill_diagonal_(20 * scale)


@pytest.mark.parametrize("scale", [3e-3, 0.4, 7.0, 5e4])
def test_cells_share_one_number_of_decimals_and_show_the_values(scale: float) -> None:
    matrix = _matrix(scale)
    ax = affinity_figure(TASKS, matrix, rounds=[4, 5, 6]).axes[0]
    cells = [t.get_text() for t in ax.texts]
    assert len(cells) == 16
    decimals = {len(c.split(".")[1]) if "." in c else 0 for c in cells}
    assert len(decimals) == 1, cells
    unit = re.search(r"x 1e(-?\d+)", ax.get_title())
    factor = 10.0 ** int(unit.group(1)) if unit else 1.0
    shown = torch.tensor([float(c) for c in cells], dtype=torch.float64).view(4, 4) * factor
    off = ~torch.eye(4, dtype=torch.bool)
    largest = float(matrix[off].abs().max())
    # Three significant digits for the largest off-diagonal value: every cell is within half a unit of the
    # third significant digit of that value.
    third_digit = 10.0 ** (math.floor(math.log10(largest)) - 2)
    assert float((shown - matrix).abs().max()) <= 0.5 * third_digit * (1 + 1e-9)


def test_title_names_the_averaged_rounds_and_groups_are_boxed() -> None:
    figure = affinity_figure(TASKS, _matrix(0.01), rounds=[7, 8, 9, 12], groups=GROUPS)
    ax = figure.axes[0]
    assert "mean of rounds 7-9, 12" in ax.get_title()
    assert "boxes: the split's groups" in ax.get_title()
    # Tasks are ordered group by group; each group is a square on the diagonal.
    assert [t.get_text().split()[1] for t in ax.get_yticklabels()] == [t for g in GROUPS for t in g]
    boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert [(b.get_xy(), b.get_width()) for b in boxes] == [((-0.5, -0.5), 2), ((1.5, 1.5), 2)]
    assert "boxes" not in affinity_figure(TASKS, _matrix(0.01), rounds=[3]).axes[0].get_title()
    assert describe_rounds([3]) == "round 3"


def test_files_in_three_formats_with_the_figure_size(tmp_path: Path) -> None:
    matrix = _matrix(0.01)
    affinity = {"tasks": TASKS, "matrix": matrix.tolist(), "rounds_averaged": [1, 2], "per_round": []}
    write_affinity(affinity, tmp_path, groups=GROUPS)
    png = imread(tmp_path / "affinity.png")
    assert png.shape[:2] == (round(120 * (1.2 + 0.7 * 4)), round(120 * (1.6 + 0.8 * 4)))
    assert (tmp_path / "affinity.pdf").read_bytes().startswith(b"%PDF")
    assert b"<svg" in (tmp_path / "affinity.svg").read_bytes()[:2000]
    assert "mean of rounds 1-2" in (tmp_path / "affinity.svg").read_text()


def test_callback_redraws_with_the_split_once_it_is_decided(tmp_path: Path) -> None:
    affinity = {"tasks": TASKS, "matrix": _matrix(0.01).tolist(), "rounds_averaged": [5], "per_round": []}
    engine = SimpleNamespace(fabric=SimpleNamespace(global_rank=0), run_dir=tmp_path)
    undecided = SimpleNamespace(engine=engine, state={"history": [{"affinity": affinity}]})
    AffinityFiles().on_fit_end(undecided)  # type: ignore[arg-type]
    assert not (tmp_path / "affinity.svg").exists()  # nothing decided: on_stage_end has drawn it already
    decided = SimpleNamespace(engine=engine, state={"history": [{"affinity": affinity, "split": {"groups": GROUPS}}]})
    AffinityFiles().on_stage_start(decided)  # type: ignore[arg-type]
    assert "boxes: the split" in (tmp_path / "affinity.svg").read_text()
