"""NumPy reference preprocessor: frame -> one NCHW tensor per input spec.

This is the contract the fused CuPy kernels in ``gpu/`` must reproduce (parity tests compare
them). For each tensor pixel (see :mod:`pipeline.geometry`) the frame is sampled bilinearly with
half-pixel centres and edge clamping, in float32 RGB 0..255; an NV12 frame is first converted to
float RGB with nearest chroma (each 2x2 block shares its UV sample), with the frame's
:class:`ColourSpec` (matrix and range from the stream's metadata), without rounding. Then
``(rgb / 255 - mean) / std`` and a cast to the spec's dtype. Pad pixels are
``(pad_value / 255 - mean) / std``.

Colour rule (both paths, CPU and GPU, use it, so they feed the models the same pixels): the matrix
(BT.601 or BT.709) and the range (limited or full) come from the stream (``colorspace`` /
``color_range`` of the codec context, read by :func:`colour_from_av`); a stream that does not say
gets BT.709 when it is HD (``width >= 1280`` or ``height > 576``) and BT.601 otherwise, and
limited range: what players (mpv, VLC, browsers) do. FFmpeg's swscale alone takes BT.601 for
every unspecified stream, so PyAV's plain ``to_ndarray(format="rgb24")`` is not used.
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

_LUMA_WEIGHTS = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}
"""(Kr, Kb) of each matrix (ITU-R BT.601 and BT.709)."""

# AVColorSpace / AVColorRange codes (FFmpeg's pixfmt.h), as PyAV reports them.
_AV_MATRIX = {1: "bt709", 5: "bt601", 6: "bt601"}  # BT709, BT470BG, SMPTE170M
_AV_RANGE = {1: "limited", 2: "full"}  # MPEG, JPEG


@dataclass(frozen=True, slots=True)
class ColourSpec:
    """How a YUV frame's values map to RGB: the matrix and the range.

    ``matrix``: ``"bt601"`` or ``"bt709"``; ``range``: ``"limited"`` (Y 16..235, UV 16..240) or
    ``"full"`` (0..255). :meth:`coefficients` gives the 3x3 matrix on ``(Y - y_offset, U - 128,
    V - 128)`` to RGB 0..255 that both the NumPy reference and the GPU kernel use.
    """

    matrix: Literal["bt601", "bt709"] = "bt709"
    range: Literal["limited", "full"] = "limited"

    def __post_init__(self) -> None:
        if self.matrix not in _LUMA_WEIGHTS:
            raise ValueError(f"ColourSpec.matrix: expected 'bt601' or 'bt709', got {self.matrix!r}")
        if self.range not in ("limited", "full"):
            raise ValueError(f"ColourSpec.range: expected 'limited' or 'full', got {self.range!r}")

    @classmethod
    def default_for(cls, width: int, height: int) -> ColourSpec:
        """The rule for a stream that does not say: BT.709 for HD and larger (``width >= 1280`` or
        ``height > 576``), BT.601 for SD; limited range."""
        return cls("bt709" if width >= 1280 or height > 576 else "bt601", "limited")

    @property
    def y_offset(self) -> float:
        return 16.0 if self.range == "limited" else 0.0

    def coefficients(self) -> tuple[tuple[float, float, float], ...]:
        """Rows R, G, B of the matrix on ``(Y - y_offset, U - 128, V - 128)`` -> RGB 0..255."""
        kr, kb = _LUMA_WEIGHTS[self.matrix]
        kg = 1.0 - kr - kb
        ys, cs = (255.0 / 219.0, 255.0 / 224.0) if self.range == "limited" else (1.0, 1.0)
        return (
            (ys, 0.0, cs * 2.0 * (1.0 - kr)),
            (ys, -cs * 2.0 * kb * (1.0 - kb) / kg, -cs * 2.0 * kr * (1.0 - kr) / kg),
            (ys, cs * 2.0 * (1.0 - kb), 0.0),
        )


def colour_from_av(colorspace: int | None, color_range: int | None, width: int, height: int) -> ColourSpec:
    """The :class:`ColourSpec` of a stream from FFmpeg's codes (PyAV's ``frame.colorspace`` /
    ``frame.color_range``, or the codec context's); what it does not say follows
    :meth:`ColourSpec.default_for`. Matrices other than BT.601/BT.709 (BT.2020...) fall back to
    the rule too."""
    guess = ColourSpec.default_for(width, height)
    matrix = _AV_MATRIX.get(int(colorspace or 0), guess.matrix)
    rng = _AV_RANGE.get(int(color_range or 0), guess.range)
    return ColourSpec(matrix, rng)  # type: ignore[arg-type]


YUV_MATRIX_BT709 = ColourSpec("bt709", "limited").coefficients()
"""BT.709 limited range YUV -> RGB (0..255): R = 1.1644(Y-16) + 1.7927(V-128), ..."""


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
    upscale: float = 1.0
    """grid: each cell shows ``width / upscale x height / upscale`` frame pixels, resized
    (bilinear) to ``width x height`` (:func:`pipeline.geometry.plan_grid`); 1 for other kinds."""

    def __post_init__(self) -> None:
        if not self.upscale >= 1.0:
            raise ValueError(f"InputSpec {self.name!r}: upscale must be >= 1, got {self.upscale}")
        if self.upscale != 1.0 and self.kind != "grid":
            raise ValueError(f"InputSpec {self.name!r}: upscale {self.upscale} is for grid inputs only, not {self.kind}")

    @classmethod
    def from_config(cls, name: str, cfg: InputSpecConfig) -> InputSpec:
        """The spec of config entry ``preprocess.<name>``."""
        return cls(
            name=name, kind=cfg.kind, width=cfg.width, height=cfg.height, overlap=cfg.overlap, dtype=cfg.dtype,
            mean=cfg.mean, std=cfg.std, pad_value=cfg.pad_value, upscale=cfg.upscale,
        )  # fmt: skip

    def plan(self, frame_w: int, frame_h: int) -> PreprocessPlan:
        whole = plan_spec(self.kind, frame_w, frame_h, self.width, self.height, self.overlap, self.upscale)
        if self.phase is None:
            return whole
        k, n = self.phase
        return whole.subset(np.arange(k, whole.count, n))

    def pad_normalised(self) -> NDArray[np.float32]:
        """(3,) the normalised value of a pad pixel, per channel."""
        return ((np.float32(self.pad_value) / 255.0 - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)).astype(np.float32)


def nv12_to_rgb_float(
    nv12: NDArray[np.uint8], width: int, height: int, colour: ColourSpec | None = None
) -> NDArray[np.float32]:
    """(H*3/2, W) NV12 -> (H, W, 3) float32 RGB in 0..255 (nearest chroma, clipped, not rounded).

    ``colour``: the stream's matrix and range; None: :meth:`ColourSpec.default_for` the size.
    """
    uv = nv12[height : height + height // 2].reshape(height // 2, width // 2, 2)
    return yuv420_to_rgb_float(nv12[:height], uv[..., 0], uv[..., 1], colour)


def yuv420_to_rgb_float(
    y_plane: NDArray[np.uint8], u_plane: NDArray[np.uint8], v_plane: NDArray[np.uint8], colour: ColourSpec | None = None
) -> NDArray[np.float32]:
    """Planes (H, W), (H/2, W/2), (H/2, W/2) uint8 -> (H, W, 3) float32 RGB 0..255: what
    :func:`nv12_to_rgb_float` does, for planar 4:2:0 (PyAV's ``yuv420p``)."""
    height, width = y_plane.shape
    colour = colour or ColourSpec.default_for(width, height)
    m = colour.coefficients()
    y = y_plane.astype(np.float32) - np.float32(colour.y_offset)
    u = u_plane.astype(np.float32).repeat(2, axis=0).repeat(2, axis=1)[:height, :width] - np.float32(128.0)
    v = v_plane.astype(np.float32).repeat(2, axis=0).repeat(2, axis=1)[:height, :width] - np.float32(128.0)
    # float32 coefficients, as the GPU kernel's: the two paths then differ only by fused multiply-adds
    c = [[np.float32(x) for x in row] for row in m]
    rgb = np.stack(
        [c[0][0] * y + c[0][2] * v, c[1][0] * y + c[1][1] * u + c[1][2] * v, c[2][0] * y + c[2][1] * u], axis=-1
    )
    return np.clip(rgb, 0.0, 255.0).astype(np.float32)


def yuv420_to_rgb_uint8(
    y_plane: NDArray[np.uint8], u_plane: NDArray[np.uint8], v_plane: NDArray[np.uint8], colour: ColourSpec | None = None
) -> NDArray[np.uint8]:
    """:func:`yuv420_to_rgb_float` rounded to (H, W, 3) uint8 RGB (the CPU decoder's frames).

    The same float32 terms by lookup table (256 entries per term, chroma terms at chroma
    resolution); green sums its terms in another order, so a value may differ from the rounded
    float reference by one level where that is exactly halfway (never seen on the demo clips).
    """
    height, width = y_plane.shape
    colour = colour or ColourSpec.default_for(width, height)
    if height % 2 or width % 2:  # odd sizes: the chroma grid does not tile; the plain way
        return np.rint(yuv420_to_rgb_float(y_plane, u_plane, v_plane, colour)).astype(np.uint8)
    m = [[np.float32(x) for x in row] for row in colour.coefficients()]
    levels = np.arange(256, dtype=np.float32)
    luma = (m[0][0] * (levels - np.float32(colour.y_offset)))[y_plane]
    chroma = levels - np.float32(128.0)
    u_plane, v_plane = u_plane[: height // 2, : width // 2], v_plane[: height // 2, : width // 2]
    terms = (
        (m[0][2] * chroma)[v_plane],
        (m[1][1] * chroma)[u_plane] + (m[1][2] * chroma)[v_plane],
        (m[2][1] * chroma)[u_plane],
    )
    h2, w2 = height // 2, width // 2
    luma4 = luma.reshape(h2, 2, w2, 2)
    out = np.empty((height, width, 3), np.uint8)
    out4 = out.reshape(h2, 2, w2, 2, 3)
    val = np.empty_like(luma4)
    for ch, term in enumerate(terms):
        np.add(luma4, term[:, None, :, None], out=val)  # each chroma sample covers its 2x2 block
        np.clip(val, 0.0, 255.0, out=val)
        np.rint(val, out=val)
        out4[..., ch] = val
    return out


def frame_rgb_float(frame: Frame) -> NDArray[np.float32]:
    """The frame as (H, W, 3) float32 RGB 0..255 on the host."""
    if frame.device != "cpu":
        raise ValueError("the NumPy preprocessor takes host frames; use gpu.preprocess for GPU frames")
    if frame.layout == "nv12":
        return nv12_to_rgb_float(frame.image, frame.meta.width, frame.meta.height, frame.colour)
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


def _content_range(n_out: int, pad: int, content: int, scale: float, origin: float, limit: int) -> tuple[int, int]:
    """[a, b): the tensor pixels along one axis that show the frame (the rest is padding); the
    ``inside`` mask of :func:`_axis_samples` as a range (it is one interval)."""
    _, _, _, inside = _axis_samples(n_out, pad, content, scale, origin, limit)
    idx = np.flatnonzero(inside)
    return (int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, 0)


def _normalised_lut(spec: InputSpec) -> NDArray[np.float32]:
    """(3, 256): ``(v / 255 - mean) * inv_std`` of every uint8 value, per channel, with the float32
    operations of the general path (so a uint8 frame gives the same bits either way)."""
    v = np.arange(256, dtype=np.float32)[None, :]
    mean = np.array(spec.mean, np.float32)[:, None]
    inv_std = (1.0 / np.array(spec.std, np.float32))[:, None]
    return ((v / np.float32(255.0) - mean) * inv_std).astype(np.float32)


def _normalise_chw(rgb: NDArray[np.generic], spec: InputSpec, lut: NDArray[np.float32] | None) -> NDArray[np.float32]:
    """(H, W, 3) uint8 or float RGB 0..255 -> (3, H, W) float32 normalised, whole array at once."""
    if rgb.dtype == np.uint8 and lut is not None:
        return np.stack([lut[c][rgb[..., c]] for c in range(3)])
    img = rgb.astype(np.float32, copy=False).transpose(2, 0, 1)
    mean = np.array(spec.mean, np.float32)[:, None, None]
    inv_std = (1.0 / np.array(spec.std, np.float32))[:, None, None]
    return ((img / np.float32(255.0) - mean) * inv_std).astype(np.float32, copy=False)


def _is_identity(spec: InputSpec) -> bool:
    """Mean 0 and std 1 on every channel: the normalisation is ``v / 255`` alone (YOLO inputs)."""
    return all(m == 0.0 for m in spec.mean) and all(d == 1.0 for d in spec.std)


def _is_crop(plan: PreprocessPlan) -> bool:
    """Scale 1 and integer origins: every tensor pixel is one frame pixel (tiles, grid)."""
    return plan.scale == (1.0, 1.0) and bool(np.all(np.mod(plan.origins, 1.0) == 0.0))


def _frame_pixels(frame: Frame) -> NDArray[np.generic]:
    """(H, W, 3) RGB 0..255 of a host frame: the uint8 image of an RGB frame as it is (the LUT
    path normalises it), the float conversion of an NV12 frame."""
    if frame.device == "cpu" and frame.layout == "rgb" and frame.image.dtype == np.uint8:
        return frame.image
    return frame_rgb_float(frame)


def preprocess_numpy(
    frame: Frame, spec: InputSpec, plan: PreprocessPlan | None = None, *, lut: NDArray[np.float32] | None = None
) -> PreprocessOutput:
    """Build the (N, 3, H, W) tensor of ``spec`` for ``frame`` (host arrays).

    Whole-array NumPy, no per-pixel Python: crops (tiles, grid) normalise the part of the frame
    the plan covers once, in CHW, and slice every tensor out of it; the letterbox resamples the
    content rectangle only (gathering each needed source row once). ``lut``: the
    :func:`_normalised_lut` of ``spec`` (a :class:`NumpyPreprocessor` keeps it; made here if
    None). The values are those of the per-tile formula in the module docstring, bit for bit."""
    width, height = frame.meta.width, frame.meta.height
    plan = plan or spec.plan(width, height)
    src = _frame_pixels(frame)
    if lut is None and src.dtype == np.uint8:
        lut = _normalised_lut(spec)
    out_w, out_h = plan.out_wh
    tensor = np.empty((plan.count, 3, out_h, out_w), np.float32)
    sx, sy = plan.scale
    px, py = plan.pad
    rects = []
    for i in range(plan.count):
        ox, oy = plan.origins[i]
        cw, ch = plan.content_wh[i]
        xa, xb = _content_range(out_w, px, int(cw), sx, ox, width)
        ya, yb = _content_range(out_h, py, int(ch), sy, oy, height)
        rects.append((xa, xb, ya, yb))
        if (xa, xb, ya, yb) != (0, out_w, 0, out_h):
            tensor[i] = spec.pad_normalised()[:, None, None]  # the content is written over it below
    if plan.count and _is_crop(plan):
        # frame pixel of tensor pixel u is u - pad + origin
        fx = [(int(plan.origins[i][0]) + xa - px, int(plan.origins[i][0]) + xb - px) for i, (xa, xb, _, _) in enumerate(rects)]
        fy = [(int(plan.origins[i][1]) + ya - py, int(plan.origins[i][1]) + yb - py) for i, (_, _, ya, yb) in enumerate(rects)]
        if src.dtype == np.uint8 and _is_identity(spec):
            # v / 255 in float32 is the LUT's value bit for bit ((v / 255 - 0) * 1); one divide per
            # crop straight into the tensor is 2x faster than gathering the LUT over the union
            # and slicing it (4K, 32 tiles: 98 against 203 ms on 2 cores)
            for i, (xa, xb, ya, yb) in enumerate(rects):
                if xb > xa and yb > ya:
                    (fxa, fxb), (fya, fyb) = fx[i], fy[i]
                    np.divide(src[fya:fyb, fxa:fxb].transpose(2, 0, 1), np.float32(255.0), out=tensor[i, :, ya:yb, xa:xb], dtype=np.float32)
        else:
            # the union of the crops normalised once
            x_lo, x_hi = min(a for a, _ in fx), max(b for _, b in fx)
            y_lo, y_hi = min(a for a, _ in fy), max(b for _, b in fy)
            if x_hi > x_lo and y_hi > y_lo:
                norm = _normalise_chw(src[y_lo:y_hi, x_lo:x_hi], spec, lut)
                for i, (xa, xb, ya, yb) in enumerate(rects):
                    if xb > xa and yb > ya:
                        (fxa, fxb), (fya, fyb) = fx[i], fy[i]
                        tensor[i, :, ya:yb, xa:xb] = norm[:, fya - y_lo : fyb - y_lo, fxa - x_lo : fxb - x_lo]
    else:
        for i, (xa, xb, ya, yb) in enumerate(rects):
            if xb > xa and yb > ya:
                tensor[i, :, ya:yb, xa:xb] = _resample(src, spec, lut, plan, i, (xa, xb, ya, yb))
    return PreprocessOutput(spec_name=spec.name, tensor=tensor.astype(spec.dtype, copy=False), plan=plan)


def _resample(
    src: NDArray[np.generic], spec: InputSpec, lut: NDArray[np.float32] | None, plan: PreprocessPlan, i: int,
    rect: tuple[int, int, int, int],
) -> NDArray[np.float32]:
    """(3, yb-ya, xb-xa) bilinear samples of tensor ``i``'s content rectangle, normalised: the
    reference formula (columns blended on the low and the high source row, then the rows), each
    needed source row gathered once, in uint8 when the frame is uint8."""
    width, height = plan.frame_wh
    out_w, out_h = plan.out_wh
    ox, oy = plan.origins[i]
    cw, ch = plan.content_wh[i]
    x0, x1, wx, _ = _axis_samples(out_w, plan.pad[0], int(cw), plan.scale[0], ox, width)
    y0, y1, wy, _ = _axis_samples(out_h, plan.pad[1], int(ch), plan.scale[1], oy, height)
    xa, xb, ya, yb = rect
    x0, x1, wx = x0[xa:xb], x1[xa:xb], wx[xa:xb]
    y0, y1, wy = y0[ya:yb], y1[ya:yb], wy[ya:yb]
    rows = np.unique(np.concatenate([y0, y1]))
    picked = src[rows]  # (R, W, 3), only the rows the samples read
    where0, where1 = np.searchsorted(rows, y0), np.searchsorted(rows, y1)
    cols0, cols1 = picked[:, x0].astype(np.float32), picked[:, x1].astype(np.float32)  # (R, w, 3)
    ax, bx = (1 - wx)[None, :, None], wx[None, :, None]
    blended = cols0 * ax + cols1 * bx  # per source row, columns blended
    top, bot = blended[where0], blended[where1]
    img = top * (1 - wy)[:, None, None] + bot * wy[:, None, None]
    mean = np.array(spec.mean, np.float32)
    inv_std = 1.0 / np.array(spec.std, np.float32)
    norm = (img / np.float32(255.0) - mean) * inv_std
    return np.ascontiguousarray(norm.transpose(2, 0, 1), dtype=np.float32)


class NumpyPreprocessor:
    """``run(frame) -> PreprocessOutput`` for one spec on the CPU; plans are cached per frame size."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self._plans: dict[tuple[int, int], PreprocessPlan] = {}
        self._lut = _normalised_lut(spec)

    def run(self, frame: Frame) -> PreprocessOutput:
        key = (frame.meta.width, frame.meta.height)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self.spec.plan(*key)
        return preprocess_numpy(frame, self.spec, plan, lut=self._lut)
