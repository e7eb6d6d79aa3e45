"""NumPy reference preprocessor: layout, normalisation, letterbox resampling, padding, NV12."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.preprocess import InputSpec, nv12_to_rgb_float, preprocess_numpy
from pipeline.types import Frame, FrameMeta


def make_frame(w: int, h: int, seed: int = 0, image: np.ndarray | None = None) -> Frame:
    rng = np.random.default_rng(seed)
    img = image if image is not None else rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Frame(FrameMeta("t", 0, 0.0, 0.0, w, h), img)


YOLO = InputSpec("g", "letterbox", 640, 640)
TILES = InputSpec("t", "tiles", 640, 640, overlap=0.2)
DENSITY = InputSpec("d", "grid", 640, 720, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), pad_value=0)


@pytest.mark.parametrize(("spec", "w", "h", "n"), [(YOLO, 1282, 722, 1), (TILES, 1282, 722, 6), (DENSITY, 1282, 722, 6), (TILES, 768, 576, 2)])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_shapes_and_dtype(spec: InputSpec, w: int, h: int, n: int, dtype: str) -> None:
    spec = dataclasses.replace(spec, dtype=dtype)
    out = preprocess_numpy(make_frame(w, h), spec)
    assert out.tensor.shape == (n, 3, spec.height, spec.width)
    assert out.tensor.dtype == np.dtype(dtype)
    assert np.isfinite(out.tensor).all()


def test_tiles_are_exact_crops_in_rgb_order() -> None:
    frame = make_frame(1282, 722, seed=3)
    out = preprocess_numpy(frame, TILES)
    for i, (x0, y0) in enumerate(out.plan.origins.astype(int)):
        crop = frame.image[y0 : y0 + 640, x0 : x0 + 640].astype(np.float32) / 255
        np.testing.assert_allclose(out.tensor[i].transpose(1, 2, 0), crop, atol=1e-6)


def test_letterbox_pads_and_resamples_a_flat_image_to_itself() -> None:
    img = np.full((576, 768, 3), (10, 200, 60), np.uint8)
    out = preprocess_numpy(make_frame(768, 576, image=img), YOLO)
    t = out.tensor[0]
    colour = np.broadcast_to(np.array([10, 200, 60], np.float32)[:, None, None] / 255, (3, 480, 640))
    np.testing.assert_allclose(t[:, 80:560, :], colour, atol=1e-5)
    np.testing.assert_allclose(t[:, :80, :], 114 / 255, atol=1e-6)
    np.testing.assert_allclose(t[:, 560:, :], 114 / 255, atol=1e-6)


def test_letterbox_upscale_of_a_ramp_is_linear() -> None:
    ramp = np.tile(np.arange(320, dtype=np.float64)[None, :, None] * (255 / 319), (240, 1, 3)).round().astype(np.uint8)
    out = preprocess_numpy(make_frame(320, 240, image=ramp), YOLO)
    row = out.tensor[0, 0, 320, :] * 255  # scale 2: interior samples are means of neighbours
    interior = row[2:-2]
    assert np.all(np.diff(interior) >= -1e-3)
    assert abs(row[1] - (ramp[0, 0, 0] * 0.75 + ramp[0, 1, 0] * 0.25)) < 1e-3


def test_density_grid_normalises_and_zero_pads() -> None:
    frame = make_frame(1282, 722, seed=1)
    out = preprocess_numpy(frame, DENSITY)
    mean = np.array(DENSITY.mean, np.float32)[:, None, None]
    std = np.array(DENSITY.std, np.float32)[:, None, None]
    first = (frame.image[:720, :640].transpose(2, 0, 1) / 255.0 - mean) / std
    np.testing.assert_allclose(out.tensor[0], first, atol=1e-5)
    # the last cell shows a 2x2 corner of the frame, the rest is padding (pixel value 0)
    last = out.tensor[-1]
    np.testing.assert_allclose(last[:, 2:, :], np.broadcast_to(-mean / std, (3, 718, 640)), atol=1e-5)


def test_nv12_conversion_of_known_colours() -> None:
    w, h = 4, 2
    nv12 = np.zeros((3, 4), np.uint8)
    nv12[:2] = [[16, 235, 16, 235], [16, 235, 16, 235]]
    nv12[2] = [128, 128, 128, 128]  # neutral chroma: grey levels
    rgb = nv12_to_rgb_float(nv12, w, h)
    np.testing.assert_allclose(rgb[0, 0], [0, 0, 0], atol=1e-3)
    np.testing.assert_allclose(rgb[0, 1], [255, 255, 255], atol=1e-3)
    red = np.array([[81, 81], [81, 81], [90, 240]], np.uint8)  # BT.709 red: Y=63? use V>128 for red dominance
    out = nv12_to_rgb_float(red, 2, 2)[0, 0]
    assert out[0] > out[1] and out[0] > out[2]


def test_nv12_frame_preprocesses_like_its_rgb_conversion() -> None:
    rng = np.random.default_rng(5)
    w, h = 1282, 722
    nv12 = rng.integers(16, 236, (h * 3 // 2, w), dtype=np.uint8)
    f_nv12 = Frame(FrameMeta("t", 0, 0.0, 0.0, w, h), nv12, layout="nv12")
    rgb = nv12_to_rgb_float(nv12, w, h)
    for spec in (YOLO, TILES):
        a = preprocess_numpy(f_nv12, spec).tensor
        b = preprocess_numpy(make_frame(w, h, image=rgb.round().clip(0, 255).astype(np.uint8)), spec).tensor
        assert np.abs(a - b).max() < 0.5 / 255 + 1e-6  # differ only by the rounding of b's RGB


# --- whole-array preprocessing against the per-tile reference (issue 13) ---------------------------


def _reference_preprocess(frame: Frame, spec: InputSpec) -> np.ndarray:
    """The per-tile loop the vectorised ``preprocess_numpy`` replaced, kept here as the oracle."""
    from pipeline.preprocess import _axis_samples, frame_rgb_float

    width, height = frame.meta.width, frame.meta.height
    plan = spec.plan(width, height)
    rgb = frame_rgb_float(frame)
    out_w, out_h = plan.out_wh
    mean = np.array(spec.mean, np.float32)
    inv_std = 1.0 / np.array(spec.std, np.float32)
    pad_val = spec.pad_normalised()
    tensor = np.empty((plan.count, 3, out_h, out_w), np.float32)
    sx, sy = plan.scale
    px, py = plan.pad
    for i in range(plan.count):
        ox, oy = plan.origins[i]
        cw, ch = plan.content_wh[i]
        x0, x1, wx, in_x = _axis_samples(out_w, px, int(cw), sx, ox, width)
        y0, y1, wy, in_y = _axis_samples(out_h, py, int(ch), sy, oy, height)
        if sx == 1.0 and sy == 1.0 and float(ox).is_integer() and float(oy).is_integer():
            img = rgb[y0][:, x0]
        else:
            top = rgb[y0][:, x0] * (1 - wx)[None, :, None] + rgb[y0][:, x1] * wx[None, :, None]
            bot = rgb[y1][:, x0] * (1 - wx)[None, :, None] + rgb[y1][:, x1] * wx[None, :, None]
            img = top * (1 - wy)[:, None, None] + bot * wy[:, None, None]
        norm = (img / np.float32(255.0) - mean) * inv_std
        valid = in_y[:, None] & in_x[None, :]
        tensor[i] = np.where(valid[..., None], norm, pad_val).transpose(2, 0, 1)
    return tensor.astype(spec.dtype, copy=False)


def _nv12_frame(w: int, h: int, seed: int) -> Frame:
    img = np.random.default_rng(seed).integers(0, 256, (h * 3 // 2, w), dtype=np.uint8)
    return Frame(FrameMeta("t", 0, 0.0, 0.0, w, h), img, layout="nv12")


@pytest.mark.parametrize("spec", [YOLO, TILES, DENSITY, dataclasses.replace(DENSITY, phase=(2, 5))], ids=lambda s: f"{s.kind}{s.phase or ''}")
@pytest.mark.parametrize(("w", "h"), [(3840, 2160), (1282, 722), (768, 576), (500, 300)])
@pytest.mark.parametrize("layout", ["rgb", "nv12"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_whole_array_preprocess_is_bitwise_the_per_tile_reference(spec: InputSpec, w: int, h: int, layout: str, dtype: str) -> None:
    spec = dataclasses.replace(spec, dtype=dtype)
    frame = make_frame(w, h, seed=w + h) if layout == "rgb" else _nv12_frame(w, h, seed=w + h)
    got = preprocess_numpy(frame, spec).tensor
    ref = _reference_preprocess(frame, spec)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert np.array_equal(got, ref), f"max abs difference {np.abs(got.astype(np.float32) - ref.astype(np.float32)).max()}"


def test_preprocessor_reuses_its_lut_and_plan_with_the_same_result() -> None:
    from pipeline.preprocess import NumpyPreprocessor

    frame = make_frame(1282, 722, seed=5)
    pre = NumpyPreprocessor(DENSITY)
    first, second = pre.run(frame).tensor, pre.run(frame).tensor
    assert np.array_equal(first, second)
    assert np.array_equal(first, _reference_preprocess(frame, DENSITY))
