"""NumPy reference preprocessor: frame -> one NCHW tensor per input spec.

This is the contract the fused CuPy kernels in ``gpu/`` must reproduce (parity tests compare
them). For each tensor pixel (see :mod:`pipeline.geometry`) the frame is sampled bilinearly with
half-pixel centres and edge clamping, in float32 RGB 0..255; an NV12 frame is first converted to
float RGB with nearest chroma (each 2x2 block shares its UV sample), BT.709 limited range, without
rounding. Then ``(rgb / 255 - mean) / std`` and a cast to the spec's dtype. Pad pixels are
``(pad_value / 255 - mean) / std``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import NDArray

from pipeline.geometry import PreprocessPlan, plan_spec
from pipeline.types import Frame, PreprocessOutput

if TYPE_CHECKING:
    from config.schema import InputSpecConfig

# BT.709 limited range YUV -> RGB (0..255): R = 1.1644(Y-16) + 1.7927(V-128), ...
YUV_MATRIX_BT709: tuple[tuple[float, float, float], ...] = (
    (1.164383562, 0.0, 1.792741071),
    (1.164383562, -0.213248614, -0.532909329),
    (1.164383562, 2.112401786, 0.0),
)


@dataclass(frozen=True, slots=True)
class InputSpec:
    """A model input: how to cut and scale the frame, and how to normalise it."""

    name: str
    kind: Literal["letterbox", "tiles", "grid"]
    width: int
    height: int
    overlap: float = 0.2
    dtype: Literal["float32", "float16"] = "float32"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    pad_value: int = 114
    phase: tuple[int, int] | None = None
    """(k, n): only the tiles i of the whole plan with i % n == k (a density grid spread over n
    frames); None for all tiles."""

    @classmethod
    def from_config(cls, name: str, cfg: InputSpecConfig) -> InputSpec:
        """The spec of config entry ``preprocess.<name>``."""
        return cls(
            name=name, kind=cfg.kind, width=cfg.width, height=cfg.height, overlap=cfg.overlap, dtype=cfg.dtype,
            mean=cfg.mean, std=cfg.std, pad_value=cfg.pad_value,
        )  # fmt: skip

    def plan(self, frame_w: int, frame_h: int) -> PreprocessPlan:
        whole = plan_spec(self.kind, frame_w, frame_h, self.width, self.height, self.overlap)
        if self.phase is None:
            return whole
        k, n = self.phase
        return whole.subset(np.arange(k, whole.count, n))

    def pad_normalised(self) -> NDArray[np.float32]:
        """(3,) the normalised value of a pad pixel, per channel."""
        return ((np.float32(self.pad_value) / 255.0 - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)).astype(np.float32)


def nv12_to_rgb_float(nv12: NDArray[np.uint8], width: int, height: int) -> NDArray[np.float32]:
    """(H*3/2, W) NV12 -> (H, W, 3) float32 RGB in 0..255 (BT.709 limited, nearest chroma, clipped)."""
    y = nv12[:height].astype(np.float32) - 16.0
    uv = nv12[height : height + height // 2].reshape(height // 2, width // 2, 2).astype(np.float32) - 128.0
    uv = uv.repeat(2, axis=0).repeat(2, axis=1)[:height, :width]
    u, v = uv[..., 0], uv[..., 1]
    m = YUV_MATRIX_BT709
    rgb = np.stack(
        [m[0][0] * y + m[0][2] * v, m[1][0] * y + m[1][1] * u + m[1][2] * v, m[2][0] * y + m[2][1] * u], axis=-1
    )
    return np.clip(rgb, 0.0, 255.0).astype(np.float32)


def frame_rgb_float(frame: Frame) -> NDArray[np.float32]:
    """The frame as (H, W, 3) float32 RGB 0..255 on the host."""
    if frame.device != "cpu":
        raise ValueError("the NumPy preprocessor takes host frames; use gpu.preprocess for GPU frames")
    if frame.layout == "nv12":
        return nv12_to_rgb_float(frame.image, frame.meta.width, frame.meta.height)
    return frame.image.astype(np.float32)


def _axis_samples(n_out: int, pad: int, content: int, scale: float, origin: float, limit: int) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32], NDArray[np.bool_]]:
    """For one axis: low/high source index, weight of high, and which outputs are content."""
    u = np.arange(n_out, dtype=np.float64)
    inside = (u >= pad) & (u < pad + content)
    src = (u - pad + 0.5) / scale - 0.5 + origin
    inside &= (src > -0.5) & (src < limit - 0.5)  # grid/tiles past the frame edge are padding
    src = np.clip(src, 0.0, limit - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, limit - 1)
    w = (src - lo).astype(np.float32)
    return lo, hi, w, inside


def preprocess_numpy(frame: Frame, spec: InputSpec, plan: PreprocessPlan | None = None) -> PreprocessOutput:
    """Build the (N, 3, H, W) tensor of ``spec`` for ``frame`` (host arrays)."""
    width, height = frame.meta.width, frame.meta.height
    plan = plan or spec.plan(width, height)
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
        img: NDArray[np.floating]
        if sx == 1.0 and sy == 1.0 and float(ox).is_integer() and float(oy).is_integer():
            img = rgb[y0][:, x0]  # exact crop: weights are zero
        else:
            top = rgb[y0][:, x0] * (1 - wx)[None, :, None] + rgb[y0][:, x1] * wx[None, :, None]
            bot = rgb[y1][:, x0] * (1 - wx)[None, :, None] + rgb[y1][:, x1] * wx[None, :, None]
            img = top * (1 - wy)[:, None, None] + bot * wy[:, None, None]
        norm = (img / np.float32(255.0) - mean) * inv_std
        valid = in_y[:, None] & in_x[None, :]
        norm = np.where(valid[..., None], norm, pad_val)
        tensor[i] = norm.transpose(2, 0, 1)
    return PreprocessOutput(spec_name=spec.name, tensor=tensor.astype(spec.dtype, copy=False), plan=plan)


class NumpyPreprocessor:
    """``run(frame) -> PreprocessOutput`` for one spec on the CPU; plans are cached per frame size."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self._plans: dict[tuple[int, int], PreprocessPlan] = {}

    def run(self, frame: Frame) -> PreprocessOutput:
        key = (frame.meta.width, frame.meta.height)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self.spec.plan(*key)
        return preprocess_numpy(frame, self.spec, plan)
