"""Density adapter: grid tiles stitched into one frame map, padding excluded, letterbox resampled."""

from __future__ import annotations

import math

import numpy as np
import pytest

from config.errors import ModelLoadError
from config.schema import ModelConfig
from models.density import DensityAdapter
from pipeline.geometry import PreprocessPlan, plan_grid, plan_letterbox, plan_tiles
from pipeline.types import PreprocessOutput

S = 8  # CSRNet output stride


def make_adapter(scale: float = 1.0) -> DensityAdapter:
    return DensityAdapter(ModelConfig(path="unused.onnx", kind="density", output_stride=S, density_scale=scale))


def make_pre(plan: PreprocessPlan) -> PreprocessOutput:
    w, h = plan.out_wh
    return PreprocessOutput(spec_name="density", tensor=np.zeros((plan.count, 3, h, w), np.float32), plan=plan)


def tile_maps(plan: PreprocessPlan) -> np.ndarray:
    """(N, 1, H/8, W/8): every cell of tile i holds (i + 1) / 100 people."""
    w, h = plan.out_wh
    return np.stack([np.full((1, h // S, w // S), (i + 1) / 100, np.float32) for i in range(plan.count)])


@pytest.mark.parametrize(
    ("frame_wh", "grid", "valid_cells"),
    [
        # (rows, cols); valid (rows, cols) of cells per tile row / tile column
        ((1920, 1440), (2, 3), ([90, 90], [80, 80, 80])),
        ((1800, 1000), (2, 3), ([90, 35], [80, 80, 65])),  # 280 px -> 35 cells, 520 px -> 65 cells
        ((1804, 1003), (2, 3), ([90, 36], [80, 80, 66])),  # a cell straddling the edge keeps its value
        ((3840, 2160), (3, 6), ([90, 90, 90], [80] * 6)),
    ],
)
def test_grid_stitching_excludes_padding(frame_wh: tuple[int, int], grid: tuple[int, int], valid_cells: tuple[list[int], list[int]]) -> None:
    plan = plan_grid(*frame_wh, 640, 720)
    assert plan.grid_shape == grid
    dmap = make_adapter().decode({"density": tile_maps(plan)}, make_pre(plan))
    rows, cols = grid
    assert dmap.stride == S
    assert dmap.density.shape == (rows * 90, cols * 80)
    vr, vc = valid_cells
    want = sum((r * cols + c + 1) / 100 * vr[r] * vc[c] for r in range(rows) for c in range(cols))
    assert dmap.count == pytest.approx(want, rel=1e-5)
    # the cells that touch the frame hold it all; cells wholly past the edge are 0
    w, h = frame_wh
    assert dmap.integral(0, 0, S * math.ceil(w / S), S * math.ceil(h / S)) == pytest.approx(want, rel=1e-5)
    assert dmap.density[math.ceil(h / S) :, :].sum() == 0
    assert dmap.density[:, math.ceil(w / S) :].sum() == 0


def test_grid_tile_lands_where_it_was() -> None:
    plan = plan_grid(1800, 1000, 640, 720)
    maps = np.zeros((6, 1, 90, 80), np.float32)
    maps[4, 0, 3, 5] = 2.5  # tile 4 = row 1, col 1: frame origin (640, 720)
    dmap = make_adapter(scale=2.0).decode({"out": maps}, make_pre(plan))
    assert dmap.density[90 + 3, 80 + 5] == pytest.approx(5.0)  # density_scale applied
    assert dmap.integral(640 + 40, 720 + 24, 640 + 48, 720 + 32) == pytest.approx(5.0)
    assert dmap.count == pytest.approx(5.0)


def test_grid_accepts_three_dim_output() -> None:
    plan = plan_grid(1280, 720, 640, 720)
    dmap = make_adapter().decode({"out": tile_maps(plan)[:, 0]}, make_pre(plan))
    assert dmap.count == pytest.approx(0.01 * 7200 + 0.02 * 7200, rel=1e-5)


@pytest.mark.parametrize(("frame_wh", "out_stride"), [((768, 576), 10), ((3840, 2160), 48), ((640, 640), 8), ((576, 768), 10)])
def test_letterbox_resampled_sum_preserving(frame_wh: tuple[int, int], out_stride: int) -> None:
    plan = plan_letterbox(*frame_wh, 640, 640)
    px, py = plan.pad
    cw, ch = plan.content_wh[0]
    dmap_in = np.zeros((1, 1, 80, 80), np.float32)
    # a person in the middle of the content, and mass in the padding (if any) that must not count
    r, c = (py + ch // 2) // S, (px + cw // 2) // S
    dmap_in[0, 0, r, c] = 1.0
    if py >= S:
        dmap_in[0, 0, 0, :] = 5.0
    if px >= S:
        dmap_in[0, 0, :, 0] = 5.0
    dmap = make_adapter().decode({"out": dmap_in}, make_pre(plan))
    assert dmap.stride == out_stride
    assert dmap.count == pytest.approx(1.0, rel=1e-5)
    # the mass sits where tensor cell (r, c) shows the frame (plus a cell of slack)
    box = plan.tensor_to_frame(np.array([[c * S, r * S, (c + 1) * S, (r + 1) * S]], np.float32), 0)[0]
    slack = out_stride
    got = dmap.integral(box[0] - slack, box[1] - slack, box[2] + slack, box[3] + slack)
    assert got == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize(
    ("outputs", "needle"),
    [
        ({"out": np.zeros((6, 1, 45, 80), np.float32)}, "'out' has shape [6, 1, 45, 80]; expected [6, 1, 90, 80]"),
        ({"out": np.zeros((5, 1, 90, 80), np.float32)}, "[5, 1, 90, 80]"),
        ({"a": np.zeros((6, 1, 90, 80)), "b": np.zeros(1)}, "exactly one output"),
    ],
)
def test_bad_output_shape(outputs: dict, needle: str) -> None:
    with pytest.raises(ModelLoadError) as err:
        make_adapter().decode(outputs, make_pre(plan_grid(1800, 1000, 640, 720)))
    assert needle in str(err.value)


def test_overlapping_tiles_refused() -> None:
    plan = plan_tiles(1280, 720, 640, 640, 0.2)
    with pytest.raises(ModelLoadError, match="count people twice"):
        make_adapter().decode({"out": np.zeros((plan.count, 1, 80, 80), np.float32)}, make_pre(plan))


@pytest.mark.parametrize(
    ("value", "needle"),
    [(np.nan, "holds 1 NaN and 0 infinite values of 43200"), (np.inf, "holds 0 NaN and 1 infinite values"), (-np.inf, "1 infinite")],
)
def test_non_finite_density_names_the_model(value: float, needle: str) -> None:
    """A NaN map would make every density count NaN, an Inf one infinite: refused, naming the model."""
    plan = plan_grid(1800, 1000, 640, 720)
    maps = tile_maps(plan)
    maps[4, 0, 10, 20] = value
    adapter = DensityAdapter(ModelConfig(path="models/csrnet_fp16.onnx", kind="density", output_stride=S))
    with pytest.raises(ModelLoadError) as err:
        adapter.decode({"density": maps}, make_pre(plan))
    assert str(err.value).startswith("density model models/csrnet_fp16.onnx: output 'density' [6, 1, 90, 80] ")
    assert needle in str(err.value)


def test_density_output_checks_finiteness_for_every_caller() -> None:
    """density_output is shared with the spread (rolling) density branch, which names no path."""
    from models.density import density_output

    plan = plan_grid(1800, 1000, 640, 720)
    maps = tile_maps(plan)
    assert density_output({"density": maps}, plan, S).shape == (6, 90, 80)
    maps[0, 0, 0, 0] = np.nan
    with pytest.raises(ModelLoadError, match=r"^density model: output 'density' \[6, 1, 90, 80\] holds 1 NaN"):
        density_output({"density": maps}, plan, S)


def test_negative_density_is_clamped_and_cell_contrast_is_measured() -> None:
    """CSRNet's output layer has no ReLU: a negative cell is no count. Contrast: grey-level std per cell."""
    plan = plan_grid(1280, 720, 640, 720)
    maps = np.full((2, 1, 90, 80), -0.01, np.float32)
    maps[0, 0, 0, 0] = 1.0
    grey = np.full((2, 720, 640), 100.0, np.float32)
    grey[0, :8, :8] = np.tile([[90.0, 110.0], [110.0, 90.0]], (4, 4))  # cell (0, 0): std 10
    std = (0.229, 0.224, 0.225)
    tensor = np.stack([(grey / 255 - m) / s for m, s in zip((0.485, 0.456, 0.406), std, strict=True)], axis=1)
    pre = PreprocessOutput(spec_name="density", tensor=tensor.astype(np.float32), plan=plan)
    dmap = make_adapter().decode({"density": maps}, pre)
    assert dmap.density.min() == 0.0 and dmap.count == pytest.approx(1.0)
    assert dmap.contrast is not None and dmap.contrast.shape == dmap.density.shape
    assert dmap.contrast[0, 0] == pytest.approx(10.0, rel=1e-3)
    assert dmap.contrast.sum() == pytest.approx(10.0, abs=0.05)  # every other cell is flat (float rounding)
