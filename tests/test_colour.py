"""The colour contract: the CPU path (PyAV frames -> RGB) and the NV12 reference (the GPU path's
contract) convert YUV with the same matrix and range, read from the stream (issue 13).

Measured on this machine (frames 0, 1, 2 of each clip; levels of 0..255):

- the NumPy reference of the decoded planes against swscale told the same matrix and range:
  mean 1.04 (vtest) / 1.04 (4K), max 2.94 / 2.93 (swscale's unscaled path truncates);
- against PyAV's plain ``rgb24`` (swscale's BT.601 for the unspecified 4K stream, the old CPU
  path): mean 1.67, max 22.2 on the 4K demo;
- the CPU source's frames (:func:`pipeline.sources.av_frame_rgb`) against the reference: max 0.5
  (rounding), mean 0.24.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from pipeline.preprocess import (
    YUV_MATRIX_BT709,
    ColourSpec,
    InputSpec,
    colour_from_av,
    nv12_to_rgb_float,
    preprocess_numpy,
    yuv420_to_rgb_float,
    yuv420_to_rgb_uint8,
)
from pipeline.sources import PyAVSource, av_frame_rgb
from pipeline.types import Frame, FrameMeta

av = pytest.importorskip("av")

ROOT = Path(__file__).resolve().parents[1]
CLIPS = {
    "vtest": ROOT / ".cache/assets/video/vtest.avi",
    "demo_4k": ROOT / ".cache/assets/video/demo_4k_hevc.mp4",
}
FRAMES = 3


def clip(name: str) -> Path:
    path = CLIPS[name]
    if not path.is_file():
        pytest.skip(f"{path} missing (fetch with `python -m app.assets`; the 4K clip: `python -m app.demo_clip`)")
    return path


def planes(vf: Any) -> tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint8]]:
    h, w = vf.height, vf.width

    def plane(k: int, ph: int, pw: int) -> NDArray[np.uint8]:
        p = vf.planes[k]
        return np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:ph, :pw]

    return plane(0, h, w), plane(1, h // 2, w // 2), plane(2, h // 2, w // 2)


def first_frames(path: Path, n: int = FRAMES) -> list[Any]:
    out = []
    with av.open(str(path)) as container:
        for vf in container.decode(video=0):
            out.append(vf)
            if len(out) == n:
                break
    return out


def stream_colour(vf: Any) -> ColourSpec:
    return colour_from_av(vf.colorspace, vf.color_range, vf.width, vf.height)


# ------------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    ("colorspace", "color_range", "size", "want"),
    [
        (2, 0, (768, 576), ColourSpec("bt601", "limited")),  # unspecified SD
        (2, 1, (3840, 2160), ColourSpec("bt709", "limited")),  # unspecified HD (the 4K demo)
        (2, 0, (1280, 720), ColourSpec("bt709", "limited")),
        (2, 0, (720, 576), ColourSpec("bt601", "limited")),
        (2, 0, (1024, 600), ColourSpec("bt709", "limited")),  # taller than 576: HD
        (1, 0, (768, 576), ColourSpec("bt709", "limited")),  # BT.709 said: kept on SD
        (5, 1, (1920, 1080), ColourSpec("bt601", "limited")),  # BT.470BG said: kept on HD
        (6, 2, (1920, 1080), ColourSpec("bt601", "full")),  # SMPTE 170M, JPEG range
        (9, 0, (3840, 2160), ColourSpec("bt709", "limited")),  # BT.2020: not supported, the rule
        (None, None, (640, 480), ColourSpec("bt601", "limited")),
    ],
)
def test_colour_rule(colorspace: int | None, color_range: int | None, size: tuple[int, int], want: ColourSpec) -> None:
    assert colour_from_av(colorspace, color_range, *size) == want


def test_coefficients() -> None:
    np.testing.assert_allclose(
        YUV_MATRIX_BT709,
        [[1.164383562, 0.0, 1.792741071], [1.164383562, -0.213248614, -0.532909329], [1.164383562, 2.112401786, 0.0]],
        atol=1e-8,
    )
    bt601 = ColourSpec("bt601", "limited").coefficients()
    np.testing.assert_allclose(
        bt601, [[1.164383562, 0.0, 1.596026786], [1.164383562, -0.391762290, -0.812967647], [1.164383562, 2.017232143, 0.0]],
        atol=1e-8,
    )  # fmt: skip
    full = ColourSpec("bt709", "full")
    assert full.y_offset == 0.0 and full.coefficients()[0][0] == 1.0
    with pytest.raises(ValueError, match="matrix"):
        ColourSpec("bt2020", "limited")  # type: ignore[arg-type]


@pytest.mark.parametrize("colour", [ColourSpec("bt601", "limited"), ColourSpec("bt709", "full")])
def test_nv12_conversion_takes_the_colour(colour: ColourSpec) -> None:
    rng = np.random.default_rng(3)
    w, h = 64, 32
    nv12 = rng.integers(0, 256, (h * 3 // 2, w), dtype=np.uint8)
    got = nv12_to_rgb_float(nv12, w, h, colour)
    y = nv12[:h].astype(np.float64) - colour.y_offset
    uv = nv12[h:].reshape(h // 2, w // 2, 2).astype(np.float64).repeat(2, 0).repeat(2, 1) - 128.0
    m = np.array(colour.coefficients())
    want = np.clip(np.einsum("ck,hwk->hwc", m, np.stack([y, uv[..., 0], uv[..., 1]], -1)), 0, 255)
    np.testing.assert_allclose(got, want, atol=2e-4)
    # a different matrix gives different pixels: the parameter is used
    other = ColourSpec("bt709" if colour.matrix == "bt601" else "bt601", colour.range)
    assert np.abs(nv12_to_rgb_float(nv12, w, h, other) - got).max() > 10


# ------------------------------------------------------------------------------- real frames


@pytest.mark.parametrize("name", ["vtest", "demo_4k"])
def test_reference_matches_swscale_told_the_same_matrix(name: str) -> None:
    from av.video.reformatter import ColorRange, Colorspace

    for vf in first_frames(clip(name)):
        colour = stream_colour(vf)
        ref = yuv420_to_rgb_float(*planes(vf), colour)
        sws = vf.reformat(
            format="rgb24",
            src_colorspace=Colorspace.ITU709 if colour.matrix == "bt709" else Colorspace.ITU601,
            src_color_range=ColorRange.MPEG if colour.range == "limited" else ColorRange.JPEG,
        ).to_ndarray()
        diff = np.abs(sws.astype(np.float32) - ref)
        assert diff.mean() < 1.3, f"{name} frame {vf.pts}: mean {diff.mean():.3f} levels"
        assert diff.max() < 3.5, f"{name} frame {vf.pts}: max {diff.max():.2f} levels"


def test_plain_rgb24_of_the_4k_demo_used_the_wrong_matrix() -> None:
    """What the CPU path did before: swscale's BT.601 for an unspecified HD stream, far off."""
    vf = first_frames(clip("demo_4k"), 1)[0]
    ref = yuv420_to_rgb_float(*planes(vf), stream_colour(vf))
    diff = np.abs(vf.to_ndarray(format="rgb24").astype(np.float32) - ref)
    assert diff.mean() > 1.5 and diff.max() > 15


@pytest.mark.parametrize("name", ["vtest", "demo_4k"])
def test_cpu_source_frames_are_the_reference_rounded(name: str) -> None:
    path = clip(name)
    refs = [yuv420_to_rgb_float(*planes(vf), stream_colour(vf)) for vf in first_frames(path)]
    with PyAVSource(str(path)) as src:
        for frame, ref in zip(src.frames(), refs, strict=False):
            diff = np.abs(frame.image.astype(np.float32) - ref)
            assert diff.max() <= 0.5 + 1e-3, f"{name} frame {frame.meta.frame_index}: max {diff.max():.3f}"
            assert diff.mean() < 0.3


def test_uint8_conversion_is_the_rounded_reference_on_odd_sizes_too() -> None:
    rng = np.random.default_rng(11)
    for h, w in ((6, 8), (7, 9)):
        y = rng.integers(0, 256, (h, w), dtype=np.uint8)
        u = rng.integers(0, 256, ((h + 1) // 2, (w + 1) // 2), dtype=np.uint8)
        v = rng.integers(0, 256, ((h + 1) // 2, (w + 1) // 2), dtype=np.uint8)
        for colour in (ColourSpec("bt601", "limited"), ColourSpec("bt709", "full")):
            ref = yuv420_to_rgb_float(y, u, v, colour)
            assert np.abs(yuv420_to_rgb_uint8(y, u, v, colour).astype(np.float32) - ref).max() <= 0.5 + 1e-3


def test_av_frame_rgb_of_a_full_range_j_format() -> None:
    """yuvj420p says full range by its format even when the frame does not."""
    vf = first_frames(clip("vtest"), 1)[0]
    j = vf.reformat(format="yuvj420p")
    y, u, v = planes(j)
    got = av_frame_rgb(j)
    colour = colour_from_av(j.colorspace, 2, j.width, j.height)
    assert colour.range == "full"
    assert np.abs(got.astype(np.float32) - yuv420_to_rgb_float(y, u, v, colour)).max() <= 0.5 + 1e-3


@pytest.mark.parametrize("name", ["vtest", "demo_4k"])
def test_cpu_and_nv12_paths_feed_the_model_the_same_pixels(name: str) -> None:
    """The NV12 frame (as NVDEC makes it, with the stream's colour) and the CPU source's RGB frame
    give the same model input, within the RGB frame's rounding."""
    path = clip(name)
    vf = first_frames(path, 1)[0]
    nv = vf.reformat(format="nv12")
    h, w = nv.height, nv.width
    y = np.frombuffer(nv.planes[0], np.uint8).reshape(-1, nv.planes[0].line_size)[:h, :w]
    uv = np.frombuffer(nv.planes[1], np.uint8).reshape(-1, nv.planes[1].line_size)[: h // 2, :w]
    meta = FrameMeta("t", 0, 0.0, 0.0, w, h)
    nv12_frame = Frame(meta, np.concatenate([y, uv]), layout="nv12", colour=stream_colour(vf))
    with PyAVSource(str(path)) as src:
        rgb_frame = next(iter(src.frames()))
    spec = InputSpec("g", "letterbox", 320, 320)
    a = preprocess_numpy(nv12_frame, spec).tensor
    b = preprocess_numpy(rgb_frame, spec).tensor
    assert np.abs(a - b).max() <= 0.5 / 255 + 1e-6
