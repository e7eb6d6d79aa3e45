"""Fused preprocessing kernels against the NumPy reference, on seeded random frames."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from pipeline.preprocess import InputSpec, preprocess_numpy
from pipeline.types import Frame, FrameMeta

GLOBAL = InputSpec("yolo_global", "letterbox", 640, 640)
TILES = InputSpec("yolo_tiles", "tiles", 640, 640, overlap=0.2)
DENSITY = InputSpec("density", "grid", 640, 720, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), pad_value=0)
SPECS = (GLOBAL, TILES, DENSITY)

SIZES = [(3840, 2160), (1920, 1080), (768, 576), (1282, 722)]
MAX_ERR = {"float32": 2e-5}  # float16: at most one float16 step of the reference value (see check)


def host_frame(w: int, h: int, layout: str, seed: int) -> Frame:
    rng = np.random.default_rng(seed)
    # Smooth-ish content plus noise, so that bilinear weights matter and values span 0..255.
    shape = (h * 3 // 2, w) if layout == "nv12" else (h, w, 3)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    return Frame(FrameMeta("t", 0, 0.0, 0.0, w, h), img, layout=layout)  # type: ignore[arg-type]


def device_frame(cp: Any, frame: Frame) -> Frame:
    return Frame(frame.meta, cp.asarray(frame.image), layout=frame.layout, device="gpu", colour=frame.colour)


def poison_pool(cp: Any, nbytes: int) -> None:
    """Leave a NaN-filled block of ``nbytes`` in CuPy's pool, so an unwritten output shows as NaN."""
    junk = cp.full(nbytes, 0xFF, cp.uint8)
    del junk


def check(gpu: np.ndarray, ref32: np.ndarray, dtype: str, what: str) -> None:
    assert gpu.shape == ref32.shape, f"{what}: shape {gpu.shape} != {ref32.shape}"
    assert np.isfinite(gpu.astype(np.float32)).all(), f"{what}: non-finite values (unwritten output?)"
    if dtype == "float32":
        err = float(np.abs(gpu - ref32).max())
        assert err <= MAX_ERR["float32"], f"{what}: max abs error {err:.3g} > {MAX_ERR['float32']}"
    else:
        ref16 = ref32.astype(np.float16)
        step = np.spacing(np.abs(ref16)).astype(np.float32)
        err = np.abs(gpu.astype(np.float32) - ref16.astype(np.float32))
        # one float16 step of the reference value (a rounding flip), plus 1e-4 for values near zero
        worst = float((err / (step + 1e-4)).max())
        assert worst <= 1.0, f"{what}: max error {worst:.2f} float16 steps (max abs {float(err.max()):.3g}) > 1"


@pytest.mark.parametrize("layout", ["nv12", "rgb"])
@pytest.mark.parametrize(("w", "h"), SIZES)
def test_each_spec_matches_numpy_reference(cp: Any, w: int, h: int, layout: str) -> None:
    from gpu.kernels import memory_floor_bytes
    from gpu.preprocess import GpuMultiPreprocessor, GpuPreprocessor

    frame = host_frame(w, h, layout, seed=w * 7 + h)
    dframe = device_frame(cp, frame)
    refs = {spec.name: preprocess_numpy(frame, spec).tensor for spec in SPECS}
    for dtype in ("float32", "float16"):
        specs = [dataclasses.replace(s, dtype=dtype) for s in SPECS]
        for spec in specs:
            pre = GpuPreprocessor(spec)
            plan = spec.plan(w, h)
            poison_pool(cp, memory_floor_bytes([(spec, plan)], 0) + 4096)
            out = pre.run(dframe)
            assert out.tensor.dtype == np.dtype(dtype)
            assert out.plan.count == out.tensor.shape[0]
            check(cp.asnumpy(out.tensor), refs[spec.name], dtype, f"{spec.name} {dtype} {w}x{h} {layout}")
        # all three specs in one launch
        multi = GpuMultiPreprocessor(specs).run_all(dframe)
        for spec in specs:
            check(cp.asnumpy(multi[spec.name].tensor), refs[spec.name], dtype, f"one launch: {spec.name} {dtype} {w}x{h} {layout}")


def test_fresh_random_frames_each_call(cp: Any) -> None:
    """Cached job tables must not tie the result to the first frame."""
    from gpu.preprocess import GpuPreprocessor

    pre = GpuPreprocessor(GLOBAL)
    for seed in (1, 2):
        frame = host_frame(1920, 1080, "nv12", seed)
        got = cp.asnumpy(pre.run(device_frame(cp, frame)).tensor)
        check(got, preprocess_numpy(frame, GLOBAL).tensor, "float32", f"seed {seed}")


def test_host_frame_is_refused(cp: Any) -> None:
    from gpu.preprocess import GpuPreprocessor

    with pytest.raises(ValueError, match="GPU frames"):
        GpuPreprocessor(GLOBAL).run(host_frame(64, 64, "rgb", 0))


REAL_CLIPS = {
    "vtest": (".cache/assets/video/vtest.avi",),
    "demo_4k": (".devcarry/v/demo_4k_hevc.mp4", ".cache/assets/video/demo_4k_hevc.mp4"),
}


def real_nv12_frames(path: Any, n: int = 2) -> list[Frame]:
    """The first ``n`` frames of a clip as host NV12 frames with the stream's colour (PyAV decode,
    the planes NVDEC would give)."""
    av = pytest.importorskip("av")
    from pipeline.preprocess import colour_from_av

    out = []
    with av.open(str(path)) as container:
        for i, vf in enumerate(container.decode(video=0)):
            nv = vf.reformat(format="nv12")
            h, w = nv.height, nv.width
            y = np.frombuffer(nv.planes[0], np.uint8).reshape(-1, nv.planes[0].line_size)[:h, :w]
            uv = np.frombuffer(nv.planes[1], np.uint8).reshape(-1, nv.planes[1].line_size)[: h // 2, :w]
            colour = colour_from_av(vf.colorspace, vf.color_range, w, h)
            out.append(Frame(FrameMeta("t", i, 0.0, 0.0, w, h), np.concatenate([y, uv]), layout="nv12", colour=colour))
            if len(out) == n:
                break
    return out


@pytest.mark.parametrize("name", sorted(REAL_CLIPS))
def test_kernel_matches_reference_on_real_frames_with_their_colour(cp: Any, name: str) -> None:
    """Issue 13: the kernel converts with the frame's ColourSpec (BT.601 for vtest, BT.709 for
    the 4K demo), as the NumPy reference does; and an explicit other spec is honoured too."""
    from gpu.preprocess import GpuMultiPreprocessor
    from pipeline.preprocess import ColourSpec
    from tests.gpu.conftest import asset

    frames = real_nv12_frames(asset(*REAL_CLIPS[name]))
    for frame in frames:
        for colour in (frame.colour, ColourSpec("bt709", "full"), ColourSpec("bt601", "limited")):
            f = dataclasses.replace(frame, colour=colour)
            refs = {spec.name: preprocess_numpy(f, spec).tensor for spec in SPECS}
            multi = GpuMultiPreprocessor(SPECS).run_all(device_frame(cp, f))
            for spec in SPECS:
                check(cp.asnumpy(multi[spec.name].tensor), refs[spec.name], "float32", f"{name} {colour} {spec.name}")
