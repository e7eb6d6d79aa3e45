"""An upscaled density grid (``preprocess.<name>.upscale``): the plan, the NumPy reference, the
frame map (people, frame cells), the config key, and the spread branch's contrast."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from app.build import make_branches
from config import ConfigError, load_pipeline_config
from config.schema import InputSpecConfig, ModelConfig, PipelineConfig
from models.backends import create_backend
from models.branch import ModelBranch, RollingDensityBranch
from models.density import DensityAdapter, frame_cells, stitch_grid
from models.runner import ModelRunner
from pipeline.geometry import PreprocessPlan, plan_grid
from pipeline.preprocess import InputSpec, NumpyPreprocessor, preprocess_numpy
from pipeline.types import Frame, FrameMeta, PreprocessOutput

ROOT = Path(__file__).resolve().parents[1]
CSRNET = ROOT / ".cache/assets/models/csrnet_fp32.onnx"
needs_csrnet = pytest.mark.skipif(not CSRNET.exists(), reason="CSRNet not built (run `make run` or `python main.py fetch-assets`)")

S = 8  # CSRNet output stride
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
UPSCALES = [1.0, 1.5, 2.0, 3.0]
SIZES = [(3840, 2160), (1920, 1152), (1804, 1003), (250, 130)]


def frame(image: np.ndarray, index: int = 0) -> Frame:
    return Frame(FrameMeta("t", index, index / 30, 0.0, image.shape[1], image.shape[0]), image)


def spec(upscale: float, w: int = 640, h: int = 720, **kw: object) -> InputSpec:
    return InputSpec("density", "grid", w, h, mean=MEAN, std=STD, pad_value=0, upscale=upscale, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- plan


@pytest.mark.parametrize("upscale", UPSCALES)
@pytest.mark.parametrize(("w", "h"), SIZES)
def test_cells_cover_the_frame_exactly_once(w: int, h: int, upscale: float) -> None:
    plan = plan_grid(w, h, 640, 720, upscale)
    rects = plan.content_rects()
    assert plan.scale == (upscale, upscale)
    rows, cols = plan.grid_shape
    assert (rows, cols) == (math.ceil(h * upscale / 720 - 1e-9), math.ceil(w * upscale / 640 - 1e-9))
    # every cell but those on the right/bottom edge shows exactly 640/u x 720/u frame pixels
    inner = (rects[:, 2] < w) & (rects[:, 3] < h)
    np.testing.assert_allclose(rects[inner, 2] - rects[inner, 0], 640 / upscale)
    np.testing.assert_allclose(rects[inner, 3] - rects[inner, 1], 720 / upscale)
    # each frame pixel centre lies in exactly one cell, and the areas add up to the frame's
    xs, ys = np.arange(w) + 0.5, np.arange(h) + 0.5
    in_x = (xs[None, :] >= rects[:, 0:1]) & (xs[None, :] < rects[:, 2:3])  # (N, W)
    in_y = (ys[None, :] >= rects[:, 1:2]) & (ys[None, :] < rects[:, 3:4])  # (N, H)
    cover = np.einsum("nh,nw->hw", in_y.astype(np.int32), in_x.astype(np.int32))
    assert cover.min() == 1 and cover.max() == 1
    assert ((rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])).sum() == pytest.approx(w * h)


def test_upscale_two_quadruples_the_cells_of_a_4k_frame() -> None:
    assert plan_grid(3840, 2160, 640, 720).count == 18
    assert plan_grid(3840, 2160, 640, 720, 2.0).count == 72
    assert spec(2.0).plan(3840, 2160).count == 72


def test_upscale_one_is_the_plain_crop_grid() -> None:
    plan = plan_grid(1804, 1003, 640, 720, 1.0)
    assert plan.scale == (1.0, 1.0)
    assert plan.origins.tolist() == [[x, y] for y in (0, 720) for x in (0, 640, 1280)]
    assert plan.content_wh.tolist() == [[640, 720], [640, 720], [524, 720], [640, 283], [640, 283], [524, 283]]


def test_upscale_below_one_or_on_another_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="upscale"):
        plan_grid(640, 720, 640, 720, 0.5)
    with pytest.raises(ValueError, match="upscale"):
        InputSpec("g", "letterbox", 640, 640, upscale=2.0)
    with pytest.raises(ValueError, match="upscale"):
        spec(0.9)


# ----------------------------------------------------------------------------- NumPy reference


@pytest.mark.parametrize("upscale", [1.5, 2.0, 3.0])
def test_a_constant_image_gives_a_constant_tensor(upscale: float) -> None:
    sp = spec(upscale, 64, 72)
    img = np.full((130, 250, 3), (10, 120, 230), np.uint8)
    out = preprocess_numpy(frame(img), sp)
    want = ((np.array([10, 120, 230], np.float32) / 255 - np.array(MEAN, np.float32)) / np.array(STD, np.float32))
    pad = sp.pad_normalised()
    plan = out.plan
    for i in range(plan.count):
        cw, ch = (int(v) for v in plan.content_wh[i])
        t = out.tensor[i]
        # content: the constant (bilinear of equal taps); the last pixel whose centre falls past
        # the frame edge is padding, as everything beyond the content
        xs = (np.arange(64) + 0.5) / upscale - 0.5 + plan.origins[i, 0] < 250 - 0.5
        ys = (np.arange(72) + 0.5) / upscale - 0.5 + plan.origins[i, 1] < 130 - 0.5
        xs &= np.arange(64) < cw
        ys &= np.arange(72) < ch
        inside = ys[:, None] & xs[None, :]
        for c in range(3):
            np.testing.assert_allclose(t[c][inside], want[c], atol=1e-5)
            np.testing.assert_allclose(t[c][~inside], pad[c], atol=0)
        assert inside.any()


def _denormalise(t: np.ndarray) -> np.ndarray:
    """(3, H, W) normalised -> (H, W, 3) RGB 0..255."""
    return ((t * np.array(STD, np.float32)[:, None, None] + np.array(MEAN, np.float32)[:, None, None]) * 255).transpose(1, 2, 0)


@pytest.mark.parametrize("upscale", [2.0, 3.0])
def test_cells_are_crops_of_the_frame_resized_by_the_upscale(upscale: float) -> None:
    """An integral upscale: the cells are the crops of the frame resized u times (PIL's bilinear,
    an independent implementation: same half-pixel centres, rounded to uint8)."""
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (17, 31, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((250, 130), Image.Resampling.BICUBIC))  # smooth, varied
    sp = spec(upscale, 64, 72)
    out = preprocess_numpy(frame(img), sp)
    big = np.asarray(Image.fromarray(img).resize((round(250 * upscale), round(130 * upscale)), Image.Resampling.BILINEAR), np.float32)
    cols = out.plan.grid_shape[1]
    for i in range(out.plan.count):
        r, c = divmod(i, cols)
        crop = big[r * 72 : (r + 1) * 72, c * 64 : (c + 1) * 64]
        got = _denormalise(out.tensor[i])[: crop.shape[0], : crop.shape[1]]
        assert np.abs(got - crop).max() <= 1.01, f"cell {i}"


def test_a_known_pattern_lands_where_expected() -> None:
    """A white square in a black frame, upscale 2: in the cell holding it, at twice its offset
    from the cell's origin, twice its size (bilinear blurs one tensor pixel at each edge)."""
    img = np.zeros((130, 250, 3), np.uint8)
    img[40:50, 100:110] = 255  # frame x 100..110, y 40..50
    out = preprocess_numpy(frame(img), spec(2.0, 64, 72))
    plan = out.plan
    assert plan.grid_shape == (4, 8)  # cells of 32 x 36 frame pixels
    cell = 1 * 8 + 3  # row 1 (y 36..72), column 3 (x 96..128)
    assert plan.origins[cell].tolist() == [96.0, 36.0]
    lum = _denormalise(out.tensor[cell]).mean(axis=-1)
    ys, xs = (2 * (40 - 36), 2 * (50 - 36)), (2 * (100 - 96), 2 * (110 - 96))  # tensor 8..28, 8..28
    np.testing.assert_allclose(lum[ys[0] + 1 : ys[1] - 1, xs[0] + 1 : xs[1] - 1], 255, atol=1e-3)
    outside = np.ones_like(lum, bool)
    outside[ys[0] - 1 : ys[1] + 1, xs[0] - 1 : xs[1] + 1] = False
    np.testing.assert_allclose(lum[outside], 0, atol=1e-3)
    # every other cell is black
    for i in range(plan.count):
        if i != cell:
            assert _denormalise(out.tensor[i]).max() <= 1e-3, f"cell {i}"


def test_whole_array_upscaled_grid_matches_the_per_pixel_formula() -> None:
    """The reference's vectorised resampling against the geometry's formula, pixel by pixel, on a
    random frame (bilinear, half-pixel centres, edge clamp)."""
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    sp = spec(1.5, 32, 24)
    out = preprocess_numpy(frame(img), sp)
    plan = out.plan
    src = img.astype(np.float64)
    for i in range(plan.count):
        for v in range(0, 24, 5):
            for u in range(0, 32, 3):
                x = (u + 0.5) / 1.5 - 0.5 + plan.origins[i, 0]
                y = (v + 0.5) / 1.5 - 0.5 + plan.origins[i, 1]
                if not (x < 70 - 0.5 and y < 50 - 0.5 and u < plan.content_wh[i, 0] and v < plan.content_wh[i, 1]):
                    continue
                x, y = min(max(x, 0), 69), min(max(y, 0), 49)
                x0, y0 = math.floor(x), math.floor(y)
                x1, y1 = min(x0 + 1, 69), min(y0 + 1, 49)
                ax, ay = x - x0, y - y0
                rgb = (src[y0, x0] * (1 - ax) + src[y0, x1] * ax) * (1 - ay) + (src[y1, x0] * (1 - ax) + src[y1, x1] * ax) * ay
                np.testing.assert_allclose(_denormalise(out.tensor[i])[v, u], rgb, atol=2e-3)


# ------------------------------------------------------------------------ the frame's density map


def adapter() -> DensityAdapter:
    return DensityAdapter(ModelConfig(path="unused.onnx", kind="density", output_stride=S), input_std=STD)


def make_pre(plan: PreprocessPlan, tensor: np.ndarray | None = None) -> PreprocessOutput:
    w, h = plan.out_wh
    t = np.zeros((plan.count, 3, h, w), np.float32) if tensor is None else tensor
    return PreprocessOutput(spec_name="density", tensor=t, plan=plan)


@pytest.mark.parametrize("upscale", UPSCALES)
@pytest.mark.parametrize(("w", "h"), [(1920, 1152), (1804, 1003)])
def test_the_map_is_on_frame_cells_and_keeps_the_models_people(w: int, h: int, upscale: float) -> None:
    """Whatever the upscale, the map has frame cells of the output stride (the s = 1 geometry) and
    its total is what the model reported for the frame's cells: people, not upscaled pixels."""
    plan = plan_grid(w, h, 640, 720, upscale)
    rng = np.random.default_rng(int(upscale * 10))
    maps = rng.random((plan.count, 1, 90, 80)).astype(np.float32) / 100
    dmap = adapter().decode({"density": maps}, make_pre(plan))
    assert dmap.stride == S
    kept = stitch_grid(maps[:, 0], plan, S)  # the model's cells that saw the frame
    assert dmap.count == pytest.approx(float(kept.sum(dtype=np.float64)), rel=1e-5)
    if upscale != 1.0:
        assert dmap.density.shape == (math.ceil(h / S), math.ceil(w / S))
    # the cells wholly past the frame hold nothing
    assert dmap.density[math.ceil(h / S) :].sum() == 0 and dmap.density[:, math.ceil(w / S) :].sum() == 0


def test_one_person_of_an_upscaled_cell_lands_in_its_frame_cell() -> None:
    """Upscale 2: one person in tensor cell (row 13, col 21) of grid cell (1, 2) is at frame pixels
    x = 2 * 320 + 21 * 4 .. + 4, y = 360 + 13 * 4 .. + 4: frame cell (row 51, col 90), 1 person."""
    plan = plan_grid(1920, 1152, 640, 720, 2.0)
    maps = np.zeros((plan.count, 90, 80), np.float32)
    maps[1 * 6 + 2, 13, 21] = 1.0
    dmap = adapter().decode({"density": maps}, make_pre(plan))
    assert dmap.count == pytest.approx(1.0)
    r, c = np.unravel_index(np.argmax(dmap.density), dmap.density.shape)
    assert (r, c) == ((360 + 13 * 4) // 8, (640 + 21 * 4) // 8)
    assert dmap.density[r, c] == pytest.approx(1.0)
    assert dmap.integral(640 + 84, 360 + 52, 640 + 88, 360 + 56) == pytest.approx(1.0)  # the cell whose centre is in it


def test_a_non_integral_upscale_splits_a_cell_by_area() -> None:
    """Upscale 1.6: map cells of 5 frame pixels onto frame cells of 8; cell 1 (x 5..10) gives 3/5 to
    frame cell 0 and 2/5 to frame cell 1."""
    plan = plan_grid(640, 720, 640, 720, 1.6)
    grid = np.zeros((plan.grid_shape[0] * 90, plan.grid_shape[1] * 80), np.float32)
    grid[0, 1] = 1.0
    out = frame_cells(grid, plan, S, "sum")
    assert out.shape == (90, 80)
    assert out[0, 0] == pytest.approx(0.6) and out[0, 1] == pytest.approx(0.4) and out.sum() == pytest.approx(1.0)
    contrast = frame_cells(grid * 7, plan, S, "max")
    assert contrast[0, 0] == pytest.approx(7) and contrast[0, 1] == pytest.approx(7) and contrast[0, 2] == 0


def test_integral_upscale_sums_blocks() -> None:
    plan = plan_grid(64, 72, 32, 40, 2.0)  # 4 x 4 cells of 16 x 20 frame px; map cells of 4 px
    assert plan.grid_shape == (4, 4)
    rng = np.random.default_rng(2)
    grid = rng.random((4 * 5, 4 * 4)).astype(np.float32)  # 40 / 8 and 32 / 8 map cells per grid cell
    out = frame_cells(grid, plan, S, "sum")
    h, w = math.ceil(72 / S), math.ceil(64 / S)
    assert out.shape == (h, w)
    want = grid[: 2 * h, : 2 * w].reshape(h, 2, w, 2).sum(axis=(1, 3))
    np.testing.assert_allclose(out, want, rtol=1e-6)


# ------------------------------------------------------------------------------------- config


def test_upscale_is_a_grid_key_with_default_one() -> None:
    assert InputSpecConfig(kind="grid").upscale == 1.0
    assert InputSpecConfig(kind="grid", upscale=2).upscale == 2.0
    cfg = load_pipeline_config(ROOT / "config/pipeline.yaml")
    assert cfg.preprocess["density"].upscale == 1.0  # the shipped default: the frame's own resolution
    assert InputSpec.from_config("density", cfg.preprocess["density"].model_copy(update={"upscale": 2.0})).upscale == 2.0


@pytest.mark.parametrize(("spec_name", "value", "message"), [
    ("yolo_global", 2.0, "upscale 2 is only for inputs of kind grid (this one is letterbox)"),
    ("yolo_tiles", 1.5, "upscale 1.5 is only for inputs of kind grid (this one is tiles)"),
    ("density", 0.5, "greater than or equal to 1"),
])  # fmt: skip
def test_upscale_elsewhere_or_below_one_is_a_config_error_naming_the_key(tmp_path: Path, spec_name: str, value: float, message: str) -> None:
    data = load_pipeline_config(ROOT / "config/pipeline.yaml").model_dump(mode="json")
    data["preprocess"][spec_name]["upscale"] = value  # the shipped config but for this key
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_pipeline_config(path)
    text = str(info.value)
    assert str(path) in text and f"preprocess.{spec_name}.upscale" in text and message in text


# ------------------------------------------------------------------- branches: adapter, spread


def density_config(upscale: float = 1.0, std: tuple[float, float, float] = STD) -> PipelineConfig:
    data = load_pipeline_config(ROOT / "config/pipeline.yaml").model_dump(mode="json")
    data["models"]["density"]["path"] = str(CSRNET)
    data["preprocess"]["density"].update(upscale=upscale, std=list(std))
    return PipelineConfig.model_validate(data)


@needs_csrnet
def test_the_density_adapter_reads_contrast_through_the_specs_std() -> None:
    std = (0.25, 0.25, 0.25)
    (branch,) = make_branches(density_config(std=std), only={"density"})
    try:
        assert isinstance(branch, ModelBranch) and isinstance(branch.adapter, DensityAdapter)
        assert branch.adapter.input_std == std
        # a pixel checkerboard of 0 and 255: every cell's grey-level std is 127.5, when read
        # back through the std the tensor was made with (CSRNet's own would give ~115)
        img = np.zeros((720, 640, 3), np.uint8)
        img[(np.arange(720)[:, None] + np.arange(640)[None, :]) % 2 == 1] = 255
        res = branch.run(frame(img))
        assert res.error is None and res.density is not None and res.density.contrast is not None
        np.testing.assert_allclose(res.density.contrast, 127.5, rtol=1e-4)
    finally:
        branch.close()


@needs_csrnet
@pytest.mark.parametrize("upscale", [1.0, 2.0])
def test_spread_branch_has_the_whole_grids_map_and_contrast(upscale: float) -> None:
    """Spread over 3 frames, once every tile ran: the same map and the same contrast as the whole
    grid through the DensityAdapter (the calibration's flat-cell gate works on both), upscaled too."""
    rng = np.random.default_rng(7)
    image = np.asarray(Image.fromarray(rng.integers(0, 256, (13, 25, 3), dtype=np.uint8)).resize((125, 65)))
    image = np.array(image)  # writable
    image[:, 100:] = 90  # a flat strip: contrast 0 there
    sp = spec(upscale, 64, 72)
    runner = ModelRunner(create_backend("onnxruntime", str(CSRNET)), "density")
    model = ModelConfig(path=str(CSRNET), kind="density")
    whole = ModelBranch("whole", preprocessor=NumpyPreprocessor(sp), runner=runner, adapter=DensityAdapter(model, input_std=STD))
    rolling = RollingDensityBranch(
        "rolling",
        preprocessors=[NumpyPreprocessor(dataclasses.replace(sp, phase=(k, 3))) for k in range(3)],
        whole_spec=sp,
        runner=runner,
        stride=S,
    )
    try:
        expected = whole.run(frame(image)).density
        results = [rolling.run(frame(image, i)) for i in range(3)]
    finally:
        runner.backend.close()
    assert expected is not None and expected.contrast is not None
    got = results[-1].density
    assert got is not None and got.contrast is not None
    np.testing.assert_allclose(got.density, expected.density, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.contrast, expected.contrast, rtol=1e-4, atol=1e-4)
    # the flat strip (a cell off its edge: bilinear taps), in cells wholly inside the frame (a cell
    # straddling the bottom edge holds content and padding)
    inside = got.contrast[: 65 // S]
    assert inside[:, 100 // S + 2 : 125 // S].max() < 0.5
    assert inside[:, : 100 // S].min() > 2.0
    if upscale == 2.0:
        assert got.density.shape == (math.ceil(65 / S), math.ceil(125 / S))
