"""Fused CuPy kernel: an NV12 (or RGB) device frame straight to the NCHW tensors of input specs.

One launch builds every tensor of a spec (the letterbox: 1; the tiles: 32 on 4K; the density
grid: 18, or 72 upscaled 2x), or of several specs at once. Each tensor is one *job*: a small record (out pointer,
geometry, normalisation, dtype) in a device table; ``blockIdx.z`` picks the job. Per output pixel
the kernel does exactly what :func:`pipeline.preprocess.preprocess_numpy` does:

1. source coordinate ``src = (u - pad + 0.5) / scale - 0.5 + origin`` in float64 (as the
   reference), content test, clamp to the frame, ``lo = floor``, ``hi = min(lo + 1, limit - 1)``,
   weight ``(src - lo)`` cast to float32;
2. each of the (up to) four taps converted to float RGB 0..255 (NV12: the frame's
   :class:`~pipeline.preprocess.ColourSpec`, matrix and range compiled in as constants; one
   kernel per colour spec, cached; nearest chroma, clipped), then bilinear in float32 in the
   reference's order;
3. ``rgb * (1 / (255 * std)) - mean / std`` (or the pad value), stored as float32 or float16.

A tensor whose scale is 1 and whose origin is integral (tiles, grid) reads one tap per pixel
(the weights are zero, so the result is the same); an upscaled grid's cells (scale ``upscale``,
origins at multiples of ``width / upscale``) take the bilinear path, as the letterbox does. A thread makes 8 consecutive pixels of one row
and stores them per channel with 16-byte stores (float16: one ``uint4``; float32: two ``float4``)
when the row width is a multiple of 8.

Only this module and the rest of ``gpu/`` import CuPy, and only inside functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pipeline.geometry import PreprocessPlan
from pipeline.preprocess import ColourSpec, InputSpec

if TYPE_CHECKING:
    import cupy

# Thread block: 16 threads x 8 px = 128 px across, 16 rows down (640 = 5 x 128; 640 and 720 = 40 and 45 x 16).
BLOCK_X = 16
BLOCK_Y = 16
PIX_PER_THREAD = 8

FLAG_HALF = 1
FLAG_EXACT = 2
FLAG_VEC = 4
FLAG_ALIGNED = 8

JOB_DTYPE = np.dtype(
    [
        ("out", np.uint64),
        ("ox", np.float64),
        ("oy", np.float64),
        ("sx", np.float64),
        ("sy", np.float64),
        ("out_w", np.int32),
        ("out_h", np.int32),
        ("pad_x", np.int32),
        ("pad_y", np.int32),
        ("cw", np.int32),
        ("ch", np.int32),
        ("flags", np.int32),
        ("_pad0", np.int32),
        ("mul", np.float32, (3,)),
        ("add", np.float32, (3,)),
        ("padv", np.float32, (3,)),
        ("_pad1", np.int32),
    ],
    align=True,
)
"""One tensor to build; mirrors ``struct Job`` in the kernel source (checked at compile time)."""

_KERNEL_SOURCE = r"""
#include <cuda_fp16.h>

struct Job {
    unsigned long long out;
    double ox, oy, sx, sy;
    int out_w, out_h, pad_x, pad_y, cw, ch, flags, _pad0;
    float mul[3];
    float add[3];
    float padv[3];
    int _pad1;
};
static_assert(sizeof(Job) == JOB_SIZE, "Job layout differs from gpu.kernels.JOB_DTYPE");

#define FLAG_HALF 1
#define FLAG_EXACT 2
#define FLAG_VEC 4
#define FLAG_ALIGNED 8

struct Axis { int lo, hi; float w; bool inside; };

// One axis of the sampling formula, in float64 like pipeline.preprocess._axis_samples.
__device__ __forceinline__ Axis axis_sample(int u, int pad, int content, double scale, double origin, int limit) {
    Axis a;
    double src = ((double)(u - pad) + 0.5) / scale - 0.5 + origin;
    a.inside = (u >= pad) && (u < pad + content) && (src > -0.5) && (src < (double)limit - 0.5);
    src = fmin(fmax(src, 0.0), (double)(limit - 1));
    double lo = floor(src);
    a.lo = (int)lo;
    a.hi = min(a.lo + 1, limit - 1);
    a.w = (float)(src - lo);
    return a;
}

__device__ __forceinline__ float clip255(float v) { return fminf(fmaxf(v, 0.0f), 255.0f); }

// Float RGB 0..255 of frame pixel (x, y).
__device__ __forceinline__ void tap_rgb(const unsigned char* __restrict__ img, int width, int height,
                                        int x, int y, float& r, float& g, float& b) {
#if LAYOUT_NV12
    const float yy = (float)__ldg(img + (size_t)y * width + x) - Y_OFF;
    const unsigned char* uvp = img + (size_t)height * width + (size_t)(y >> 1) * width + (x & ~1);
    const float uu = (float)__ldg(uvp) - 128.0f;
    const float vv = (float)__ldg(uvp + 1) - 128.0f;
    r = clip255(M00 * yy + M02 * vv);
    g = clip255(M10 * yy + M11 * uu + M12 * vv);
    b = clip255(M20 * yy + M21 * uu);
#else
    const unsigned char* p = img + ((size_t)y * width + x) * 3;
    r = (float)__ldg(p); g = (float)__ldg(p + 1); b = (float)__ldg(p + 2);
#endif
}

extern "C" __global__ void __launch_bounds__(BLOCK_X * BLOCK_Y)
preprocess_jobs(const unsigned char* __restrict__ img, int width, int height, const Job* __restrict__ jobs,
                unsigned char* __restrict__ out_base) {
    const Job& job = jobs[blockIdx.z];
    const int out_w = job.out_w, out_h = job.out_h;
    const int v = blockIdx.y * BLOCK_Y + threadIdx.y;
    const int u0 = (blockIdx.x * BLOCK_X + threadIdx.x) * PIX;
    if (v >= out_h || u0 >= out_w) return;

    const Axis ay = axis_sample(v, job.pad_y, job.ch, job.sy, job.oy, height);
    float vals[3][PIX];
    const bool exact = job.flags & FLAG_EXACT;
#if LAYOUT_NV12
    // Fast path of a crop (tiles, grid): 8 pixels of one row fully inside the frame, 8-byte
    // aligned: one 8-byte load of Y and one of the 4 UV pairs instead of 16 byte loads.
    const int fx = (int)job.ox + u0;  // exact: origin is integral and scale 1
    bool done = false;
    if (exact && ay.inside && (job.flags & FLAG_ALIGNED) && u0 + PIX <= job.cw && fx + PIX <= width) {
        const uint2 ys = __ldg(reinterpret_cast<const uint2*>(img + (size_t)ay.lo * width + fx));
        const uint2 uvs = __ldg(reinterpret_cast<const uint2*>(img + (size_t)height * width + (size_t)(ay.lo >> 1) * width + fx));
        const unsigned char* yb = reinterpret_cast<const unsigned char*>(&ys);
        const unsigned char* cb = reinterpret_cast<const unsigned char*>(&uvs);
#pragma unroll
        for (int k = 0; k < PIX; ++k) {
            const float yy = (float)yb[k] - Y_OFF;
            const float uu = (float)cb[k & ~1] - 128.0f;
            const float vv = (float)cb[(k & ~1) + 1] - 128.0f;
            vals[0][k] = clip255(M00 * yy + M02 * vv) * job.mul[0] + job.add[0];
            vals[1][k] = clip255(M10 * yy + M11 * uu + M12 * vv) * job.mul[1] + job.add[1];
            vals[2][k] = clip255(M20 * yy + M21 * uu) * job.mul[2] + job.add[2];
        }
        done = true;
    }
#else
    const bool done = false;
#endif
    if (!done) {
#pragma unroll
    for (int k = 0; k < PIX; ++k) {
        const int u = u0 + k;
        float r, g, b;
        bool inside = false;
        if (u < out_w) {
            const Axis ax = axis_sample(u, job.pad_x, job.cw, job.sx, job.ox, width);
            inside = ax.inside && ay.inside;
            if (inside) {
                if (exact) {
                    tap_rgb(img, width, height, ax.lo, ay.lo, r, g, b);
                } else {
                    float r00, g00, b00, r01, g01, b01, r10, g10, b10, r11, g11, b11;
                    tap_rgb(img, width, height, ax.lo, ay.lo, r00, g00, b00);
                    tap_rgb(img, width, height, ax.hi, ay.lo, r01, g01, b01);
                    tap_rgb(img, width, height, ax.lo, ay.hi, r10, g10, b10);
                    tap_rgb(img, width, height, ax.hi, ay.hi, r11, g11, b11);
                    const float wx = ax.w, wy = ay.w, cx = 1.0f - ax.w, cy = 1.0f - ay.w;
                    // The reference's order: rows first (top, bottom), then between them.
                    r = (r00 * cx + r01 * wx) * cy + (r10 * cx + r11 * wx) * wy;
                    g = (g00 * cx + g01 * wx) * cy + (g10 * cx + g11 * wx) * wy;
                    b = (b00 * cx + b01 * wx) * cy + (b10 * cx + b11 * wx) * wy;
                }
            }
        }
        vals[0][k] = inside ? r * job.mul[0] + job.add[0] : job.padv[0];
        vals[1][k] = inside ? g * job.mul[1] + job.add[1] : job.padv[1];
        vals[2][k] = inside ? b * job.mul[2] + job.add[2] : job.padv[2];
    }
    }

    const size_t plane = (size_t)out_w * out_h;
    const size_t base = (size_t)v * out_w + u0;
    if (job.flags & FLAG_HALF) {
        __half* out = reinterpret_cast<__half*>(out_base + job.out);
#pragma unroll
        for (int c = 0; c < 3; ++c) {
            __half* dst = out + c * plane + base;
            if (job.flags & FLAG_VEC) {
                __align__(16) __half h[PIX];
#pragma unroll
                for (int k = 0; k < PIX; ++k) h[k] = __float2half_rn(vals[c][k]);
                *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(h);
            } else {
                for (int k = 0; k < PIX && u0 + k < out_w; ++k) dst[k] = __float2half_rn(vals[c][k]);
            }
        }
    } else {
        float* out = reinterpret_cast<float*>(out_base + job.out);
#pragma unroll
        for (int c = 0; c < 3; ++c) {
            float* dst = out + c * plane + base;
            if (job.flags & FLAG_VEC) {
#pragma unroll
                for (int k = 0; k < PIX; k += 4)
                    *reinterpret_cast<float4*>(dst + k) = make_float4(vals[c][k], vals[c][k + 1], vals[c][k + 2], vals[c][k + 3]);
            } else {
                for (int k = 0; k < PIX && u0 + k < out_w; ++k) dst[k] = vals[c][k];
            }
        }
    }
}
"""


@dataclass(frozen=True, slots=True)
class OutputSlot:
    """Where one spec's (N, 3, H, W) tensor lies in the launch's single output buffer."""

    offset: int
    shape: tuple[int, int, int, int]
    dtype: str


@dataclass(frozen=True, slots=True)
class JobTable:
    """Job records of one or more specs on one frame size, and the launch grid.

    Every output lives in one buffer of ``total_bytes``; ``records['out']`` are byte offsets into
    it (16-byte aligned), so the table does not change between frames and is uploaded once.
    """

    records: np.ndarray
    grid: tuple[int, int, int]
    slots: tuple[OutputSlot, ...]
    total_bytes: int


def job_records(spec: InputSpec, plan: PreprocessPlan, offset: int = 0) -> np.ndarray:
    """The N job records of one spec; tensor k starts ``offset + k * tensor_bytes`` into the output."""
    n = plan.count
    rec = np.zeros(n, JOB_DTYPE)
    out_w, out_h = plan.out_wh
    sx, sy = plan.scale
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    inv_std = np.float32(1.0) / std
    tensor_bytes = 3 * out_w * out_h * np.dtype(spec.dtype).itemsize
    rec["out"] = offset + np.arange(n, dtype=np.uint64) * np.uint64(tensor_bytes)
    rec["ox"] = plan.origins[:, 0]
    rec["oy"] = plan.origins[:, 1]
    rec["sx"] = sx
    rec["sy"] = sy
    rec["out_w"] = out_w
    rec["out_h"] = out_h
    rec["pad_x"] = plan.pad[0]
    rec["pad_y"] = plan.pad[1]
    rec["cw"] = plan.content_wh[:, 0]
    rec["ch"] = plan.content_wh[:, 1]
    # (rgb / 255 - mean) / std  ==  rgb * mul + add
    rec["mul"] = (inv_std / np.float32(255.0)).astype(np.float32)
    rec["add"] = (-mean * inv_std).astype(np.float32)
    rec["padv"] = spec.pad_normalised()
    exact = (sx == 1.0 and sy == 1.0) & (np.floor(plan.origins) == plan.origins).all(axis=1)
    flags = np.where(exact, FLAG_EXACT, 0)
    if spec.dtype == "float16":
        flags |= FLAG_HALF
    if out_w % PIX_PER_THREAD == 0:
        flags |= FLAG_VEC
    frame_w = plan.frame_wh[0]
    aligned = exact & (plan.origins[:, 0] % PIX_PER_THREAD == 0) & (frame_w % PIX_PER_THREAD == 0)
    flags = np.where(aligned, flags | FLAG_ALIGNED, flags)
    rec["flags"] = flags
    return rec


def build_jobs(specs_plans: Sequence[tuple[InputSpec, PreprocessPlan]]) -> JobTable:
    """The job table of one or several (spec, plan) pairs, filled by one launch."""
    parts = []
    slots = []
    offset = 0
    for spec, plan in specs_plans:
        out_w, out_h = plan.out_wh
        shape = (plan.count, 3, out_h, out_w)
        parts.append(job_records(spec, plan, offset))
        slots.append(OutputSlot(offset=offset, shape=shape, dtype=spec.dtype))
        nbytes = int(np.prod(shape)) * np.dtype(spec.dtype).itemsize
        offset += -(-nbytes // 256) * 256
    records = np.concatenate(parts)
    max_w = max(int(p.out_wh[0]) for _, p in specs_plans)
    max_h = max(int(p.out_wh[1]) for _, p in specs_plans)
    gx = -(-max_w // (BLOCK_X * PIX_PER_THREAD))
    gy = -(-max_h // BLOCK_Y)
    return JobTable(records=records, grid=(gx, gy, len(records)), slots=tuple(slots), total_bytes=offset)


@cache
def _kernel(layout: Literal["nv12", "rgb"], colour: ColourSpec) -> Any:
    import cupy

    m = colour.coefficients()
    defines = {
        "Y_OFF": f"{colour.y_offset!r}f",
        "LAYOUT_NV12": 1 if layout == "nv12" else 0,
        "BLOCK_X": BLOCK_X,
        "BLOCK_Y": BLOCK_Y,
        "PIX": PIX_PER_THREAD,
        "JOB_SIZE": JOB_DTYPE.itemsize,
        "M00": f"{m[0][0]!r}f", "M02": f"{m[0][2]!r}f",
        "M10": f"{m[1][0]!r}f", "M11": f"{m[1][1]!r}f", "M12": f"{m[1][2]!r}f",
        "M20": f"{m[2][0]!r}f", "M21": f"{m[2][1]!r}f",
    }  # fmt: skip
    header = "".join(f"#define {k} {v}\n" for k, v in defines.items())
    module = cupy.RawModule(code=header + _KERNEL_SOURCE, options=("--std=c++17",))
    return module.get_function("preprocess_jobs")


def launch(
    image: cupy.ndarray,
    layout: Literal["nv12", "rgb"],
    width: int,
    height: int,
    jobs_device: cupy.ndarray,
    grid: tuple[int, int, int],
    out: cupy.ndarray,
    stream: cupy.cuda.Stream | None = None,
    colour: ColourSpec | None = None,
) -> None:
    """Enqueue one launch filling every job of ``jobs_device`` (the records' bytes on the device)
    into ``out`` (a device buffer of at least the table's ``total_bytes``). ``colour``: an NV12
    frame's matrix and range (None: :meth:`ColourSpec.default_for` the size); unused for RGB."""
    import cupy

    if image.dtype != cupy.uint8 or not image.flags.c_contiguous:
        raise ValueError(
            f"frame image must be a C-contiguous uint8 CuPy array, got {image.dtype} contiguous={image.flags.c_contiguous}"
        )
    if image.data.ptr % 16:
        with stream or cupy.cuda.get_current_stream():
            image = image.copy()  # the crop fast path reads 8-byte words
    if layout == "nv12":
        kernel = _kernel(layout, colour or ColourSpec.default_for(width, height))
    else:
        kernel = _kernel(layout, ColourSpec())  # no conversion: one RGB kernel
    kernel(grid, (BLOCK_X, BLOCK_Y, 1), (image, np.int32(width), np.int32(height), jobs_device, out), stream=stream)


def memory_floor_bytes(specs_plans: Sequence[tuple[InputSpec, PreprocessPlan]], frame_bytes: int) -> int:
    """Fewest bytes one launch must move: every output written once plus the frame read once."""
    total = frame_bytes
    for spec, plan in specs_plans:
        w, h = plan.out_wh
        total += plan.count * 3 * w * h * np.dtype(spec.dtype).itemsize
    return int(total)
