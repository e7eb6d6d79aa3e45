"""GPU side of YOLO post-processing: score filtering and mask assembly on the device.

What leaves the GPU is small: the candidates that pass the score filter (instead of the whole
[B, C, A] or [B, N, C] prediction) and the boolean masks of the kept detections (instead of the
[B, 32, h, w] protos: 108 MB for 33 tiles).

Everything runs on the calling thread's current CuPy stream (the branch's, under
:func:`models.branch.run_branch`); each host copy waits for that stream only (:func:`gpu.events.to_host`).

- :func:`compact_v8` / :func:`compact_e2e` keep, per image, the anchors/rows that pass the
  person-score threshold, in their original order, padded to the largest count with rows that
  fail it; one device-to-host copy. Decoding the compact array with the NumPy decoders of
  :mod:`models.yolo` gives exactly what decoding the full output gives (same rows, same order,
  same values).
- :func:`decode_v8_nms` does the whole v8 decode on the device (score filter, best class, box
  decode, sort, greedy class-agnostic NMS, the ``max_detections`` cap) in one kernel, one block per
  image, and copies only the kept rows to the host (one copy): the same rows, in the same order,
  with the same float32 values as :func:`models.yolo.decode_v8` (IEEE float32 throughout, no fused
  multiply-adds, ties broken by anchor index as NumPy's stable sort does). An image with more than
  :data:`NMS_CAPACITY` candidates returns ``None`` (the caller then decodes the compact array).
- :func:`assemble_masks` computes ``coef @ protos`` only at the bilinear taps each kept
  detection's mask pixels need (one kernel for all detections) and thresholds at logit 0; one
  device-to-host copy of the packed masks. The taps (which proto cells, which weights) are the
  host-side geometry of ``models.yolo`` (``_AxisTaps``), passed in as arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gpu.events import to_host

_FAIL = -1.0
"""Score of padding rows: below any threshold in [0, 1]."""


def compact_v8(pred: Any, person_rows: Sequence[int] | NDArray[np.integer[Any]], score_threshold: float) -> NDArray[np.float32]:
    """``pred`` (CuPy [B, C, A]) -> host [B, C, K]: the anchors whose best person score passes.

    K is the largest per-image count (at least 1); padding columns score ``-1`` in every class row.
    """
    import cupy

    b, c, _ = pred.shape
    rows = cupy.asarray(np.asarray(person_rows, np.int64))
    best = pred[:, rows, :].max(axis=1)  # (B, A)
    ok = best >= score_threshold
    counts = ok.sum(axis=1)
    k = max(int(to_host(counts.max())), 1) if b else 1  # the one small sync: how wide the compact array is
    # position of each kept anchor within its image, in anchor order
    pos = cupy.cumsum(ok, axis=1) - 1
    bi, ai = cupy.nonzero(ok)
    # work in (B, A, C) so that the two index arrays are adjacent (no mixed-indexing ambiguity)
    out = cupy.zeros((b, k, c), pred.dtype)
    out[:, :, 4:] = _FAIL
    out[bi, pos[bi, ai]] = pred.transpose(0, 2, 1)[bi, ai]
    return to_host(cupy.ascontiguousarray(out.transpose(0, 2, 1))).astype(np.float32, copy=False)


def compact_e2e(pred: Any, score_threshold: float) -> NDArray[np.float32]:
    """``pred`` (CuPy [B, N, C], column 4 the score) -> host [B, K, C] of the rows that pass."""
    import cupy

    b, _, c = pred.shape
    ok = pred[:, :, 4] >= score_threshold
    k = max(int(to_host(ok.sum(axis=1).max())), 1) if b else 1
    pos = cupy.cumsum(ok, axis=1) - 1
    bi, ni = cupy.nonzero(ok)
    out = cupy.zeros((b, k, c), pred.dtype)
    out[:, :, 4] = _FAIL
    out[bi, pos[bi, ni]] = pred[bi, ni]
    return to_host(out).astype(np.float32, copy=False)


NMS_CAPACITY = 4096
"""Candidates per image the one-kernel v8 decode sorts in shared memory (more: ``None``)."""

_V8_NMS_KERNEL = (
    f"#define CAP {NMS_CAPACITY}\n"
    + r"""
extern "C" __global__ void v8_decode_nms(
    const float* __restrict__ pred, int C, int A, int nc, const unsigned char* __restrict__ is_person,
    int n_coef, float score_thr, float iou_thr, int max_det, int width,
    float* __restrict__ boxes, float* __restrict__ out) {
    // out: B x 2 int32 header (kept, candidates), then B x max_det x width float32 rows
    __shared__ unsigned long long keys[CAP];
    __shared__ unsigned char supp[CAP];
    __shared__ int n;
    const int b = blockIdx.x, tid = threadIdx.x, bd = blockDim.x;
    const float* P = pred + (size_t)b * C * A;
    int* header = (int*)out;
    float* rows = out + 2 * gridDim.x + (size_t)b * max_det * width;
    if (tid == 0) n = 0;
    __syncthreads();
    for (int a = tid; a < A; a += bd) {
        float bp = __int_as_float(0xff800000), bo = bp;  // -inf
        for (int c = 0; c < nc; ++c) {
            const float v = P[(size_t)(4 + c) * A + a];
            if (is_person[c]) { if (v > bp) bp = v; } else { if (v > bo) bo = v; }
        }
        // models.yolo.decode_v8: best person score passes, the best class is a person, w, h > 0
        if (bp >= score_thr && bp >= bo && P[(size_t)2 * A + a] > 0.f && P[(size_t)3 * A + a] > 0.f) {
            const int i = atomicAdd(&n, 1);
            if (i < CAP) {
                const unsigned int s = __float_as_uint(bp == 0.f ? 0.f : bp);  // scores >= 0: bits order as values
                keys[i] = ((unsigned long long)(0xFFFFFFFFu - s) << 32) | (unsigned int)a;
            }
        }
    }
    __syncthreads();
    const int m = n;
    if (m > CAP) {  // too many to sort here: the caller decodes on the host
        if (tid == 0) { header[2 * b] = 0; header[2 * b + 1] = m; }
        return;
    }
    int p2 = 1;
    while (p2 < m) p2 <<= 1;
    for (int i = m + tid; i < p2; i += bd) keys[i] = 0xFFFFFFFFFFFFFFFFull;
    __syncthreads();
    // bitonic sort, ascending key = score descending, then anchor ascending (NumPy's stable order)
    for (int k = 2; k <= p2; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int i = tid; i < p2; i += bd) {
                const int ixj = i ^ j;
                if (ixj > i) {
                    const unsigned long long k0 = keys[i], k1 = keys[ixj];
                    if (((i & k) == 0) ? (k0 > k1) : (k0 < k1)) { keys[i] = k1; keys[ixj] = k0; }
                }
            }
            __syncthreads();
        }
    }
    float* Bx = boxes + (size_t)b * CAP * 5;
    for (int i = tid; i < m; i += bd) {
        const int a = (int)(keys[i] & 0xFFFFFFFFull);
        const float cx = P[a], cy = P[(size_t)A + a];
        const float hw = __fmul_rn(P[(size_t)2 * A + a], 0.5f), hh = __fmul_rn(P[(size_t)3 * A + a], 0.5f);
        const float x1 = __fsub_rn(cx, hw), y1 = __fsub_rn(cy, hh), x2 = __fadd_rn(cx, hw), y2 = __fadd_rn(cy, hh);
        Bx[5 * i] = x1; Bx[5 * i + 1] = y1; Bx[5 * i + 2] = x2; Bx[5 * i + 3] = y2;
        Bx[5 * i + 4] = __fmul_rn(fmaxf(__fsub_rn(x2, x1), 0.f), fmaxf(__fsub_rn(y2, y1), 0.f));
        supp[i] = 0;
    }
    __syncthreads();
    int kept = 0;
    for (int i = 0; i < m && kept < max_det; ++i) {
        if (supp[i]) continue;  // the same for every thread: read after the last barrier
        const float x1 = Bx[5 * i], y1 = Bx[5 * i + 1], x2 = Bx[5 * i + 2], y2 = Bx[5 * i + 3], ai = Bx[5 * i + 4];
        const int a = (int)(keys[i] & 0xFFFFFFFFull);
        float* row = rows + (size_t)kept * width;
        if (tid == 0) {
            float best = __int_as_float(0xff800000);
            int cls = 0;
            for (int c = 0; c < nc; ++c) {
                const float v = P[(size_t)(4 + c) * A + a];
                if (is_person[c] && v > best) { best = v; cls = c; }  // the first of equal scores, as argmax
            }
            row[0] = x1; row[1] = y1; row[2] = x2; row[3] = y2;
            row[4] = __uint_as_float(0xFFFFFFFFu - (unsigned int)(keys[i] >> 32));
            row[5] = (float)cls;
        }
        for (int k = tid; k < n_coef; k += bd) row[6 + k] = P[(size_t)(4 + nc + k) * A + a];
        for (int j = i + 1 + tid; j < m; j += bd) {
            if (supp[j]) continue;
            const float iw = fmaxf(__fsub_rn(fminf(x2, Bx[5 * j + 2]), fmaxf(x1, Bx[5 * j])), 0.f);
            const float ih = fmaxf(__fsub_rn(fminf(y2, Bx[5 * j + 3]), fmaxf(y1, Bx[5 * j + 1])), 0.f);
            const float inter = __fmul_rn(iw, ih);
            const float den = fmaxf(__fsub_rn(__fadd_rn(ai, Bx[5 * j + 4]), inter), 1e-9f);
            if (__fdiv_rn(inter, den) > iou_thr) supp[j] = 1;
        }
        ++kept;
        __syncthreads();
    }
    if (tid == 0) { header[2 * b] = kept; header[2 * b + 1] = m; }
}
"""
)


@cache
def _v8_nms_kernel() -> Any:
    import cupy

    return cupy.RawKernel(_V8_NMS_KERNEL, "v8_decode_nms")


def decode_v8_nms(
    pred: Any,
    person_rows: Sequence[int] | NDArray[np.integer[Any]],
    n_coef: int,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> tuple[NDArray[np.float32], NDArray[np.int64]] | None:
    """A v8 head's detections decoded on the device: ``pred`` CuPy [B, 4+nc(+32), A].

    Returns host ``(rows, image)``: rows (M, 6 + n_coef) float32 ``x1, y1, x2, y2, score, class,
    coefs`` in tensor pixels, grouped by image (ascending), score descending within an image, the
    rows :func:`models.yolo.decode_v8` keeps; ``image`` (M,) the batch index of each row. ``None``
    when an image has more than :data:`NMS_CAPACITY` candidates. One kernel, one host copy.
    """
    import cupy

    pred = cupy.ascontiguousarray(pred, dtype=cupy.float32)
    b, c, a = pred.shape
    nc = c - 4 - n_coef
    is_person = np.zeros(nc, np.uint8)
    is_person[np.asarray(person_rows, np.int64) - 4] = 1
    width = 6 + n_coef
    if b == 0:
        return np.zeros((0, width), np.float32), np.zeros(0, np.int64)
    scratch = cupy.empty((b, NMS_CAPACITY, 5), cupy.float32)
    out = cupy.empty(2 * b + b * max_detections * width, cupy.float32)
    _v8_nms_kernel()(
        (b, 1, 1), (512, 1, 1),
        (pred, np.int32(c), np.int32(a), np.int32(nc), cupy.asarray(is_person), np.int32(n_coef),
         np.float32(score_threshold), np.float32(iou_threshold), np.int32(max_detections), np.int32(width),
         scratch, out),
    )  # fmt: skip
    host = to_host(out)
    header = host[: 2 * b].view(np.int32).reshape(b, 2)
    if (header[:, 1] > NMS_CAPACITY).any():
        return None
    rows = host[2 * b :].reshape(b, max_detections, width)
    kept = np.arange(max_detections)[None, :] < header[:, :1]
    image, _ = np.nonzero(kept)
    return rows[kept], image.astype(np.int64)


_MASK_KERNEL = r"""
extern "C" __global__ void assemble_masks(
    const float* __restrict__ protos, int n_coef, int ph, int pw,
    const float* __restrict__ coef, const long long* __restrict__ image,
    const long long* __restrict__ ystart, const long long* __restrict__ xstart,
    const int* __restrict__ yq0, const int* __restrict__ yq1, const float* __restrict__ yw, const unsigned char* __restrict__ yin,
    const int* __restrict__ xq0, const int* __restrict__ xq1, const float* __restrict__ xw, const unsigned char* __restrict__ xin,
    const long long* __restrict__ out_start, unsigned char* __restrict__ out) {
    const int m = blockIdx.y;
    const long long y0 = ystart[m], x0 = xstart[m];
    const int mh = (int)(ystart[m + 1] - y0), mw = (int)(xstart[m + 1] - x0);
    const float* P = protos + (size_t)image[m] * n_coef * ph * pw;
    const float* C = coef + (size_t)m * n_coef;
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < mh * mw; p += gridDim.x * blockDim.x) {
        const int i = p / mw, j = p % mw;
        const int a0 = yq0[y0 + i], a1 = yq1[y0 + i], b0 = xq0[x0 + j], b1 = xq1[x0 + j];
        float l00 = 0.f, l01 = 0.f, l10 = 0.f, l11 = 0.f;
        for (int k = 0; k < n_coef; ++k) {
            const float* Pk = P + (size_t)k * ph * pw;
            const float ck = C[k];
            l00 += ck * Pk[a0 * pw + b0];
            l01 += ck * Pk[a0 * pw + b1];
            l10 += ck * Pk[a1 * pw + b0];
            l11 += ck * Pk[a1 * pw + b1];
        }
        const float wy = yw[y0 + i], wx = xw[x0 + j];
        // models.yolo.decode_masks' order: along y first (rows), then along x
        const float r0 = l00 * (1.f - wy) + l10 * wy;
        const float r1 = l01 * (1.f - wy) + l11 * wy;
        const float v = r0 * (1.f - wx) + r1 * wx;
        out[out_start[m] + p] = (v > 0.f) && yin[y0 + i] && xin[x0 + j];
    }
}
"""


@cache
def _mask_kernel() -> Any:
    import cupy

    return cupy.RawKernel(_MASK_KERNEL, "assemble_masks")


def assemble_masks(protos: Any, image: NDArray[np.int64], coef: NDArray[np.float32], ty: Any, tx: Any) -> tuple[NDArray[np.bool_], ...]:
    """Masks of M kept detections: ``protos`` CuPy [B, 32, h, w]; ``image`` (M,), ``coef`` (M, 32)
    host arrays; ``ty``/``tx`` the per-axis taps (``start`` (M+1,), ``lo``, ``q0``, ``q1`` relative
    to ``lo``, ``w``, ``inside``) of ``models.yolo``. Returns M bool arrays (mh, mw)."""
    import cupy

    m = len(image)
    if m == 0:
        return ()
    protos = cupy.ascontiguousarray(protos, dtype=cupy.float32)
    _, n_coef, ph, pw = protos.shape
    ydet = np.repeat(np.arange(m), np.diff(ty.start))
    xdet = np.repeat(np.arange(m), np.diff(tx.start))
    mh = np.diff(ty.start)
    mw = np.diff(tx.start)
    sizes = mh * mw
    out_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    host = {
        "coef": np.ascontiguousarray(coef, np.float32),
        "image": np.asarray(image, np.int64),
        "ystart": np.asarray(ty.start, np.int64),
        "xstart": np.asarray(tx.start, np.int64),
        "yq0": (ty.q0 + ty.lo[ydet]).astype(np.int32),
        "yq1": (ty.q1 + ty.lo[ydet]).astype(np.int32),
        "yw": np.asarray(ty.w, np.float32),
        "yin": np.asarray(ty.inside, np.uint8),
        "xq0": (tx.q0 + tx.lo[xdet]).astype(np.int32),
        "xq1": (tx.q1 + tx.lo[xdet]).astype(np.int32),
        "xw": np.asarray(tx.w, np.float32),
        "xin": np.asarray(tx.inside, np.uint8),
        "out_start": out_start,
    }
    dev = {k: cupy.asarray(v) for k, v in host.items()}
    out = cupy.empty(int(out_start[-1]), cupy.uint8)
    threads = 128
    grid_x = max(1, min(64, -(-int(sizes.max()) // threads)))
    _mask_kernel()(
        (grid_x, m, 1), (threads, 1, 1),
        (protos, np.int32(n_coef), np.int32(ph), np.int32(pw), dev["coef"], dev["image"], dev["ystart"], dev["xstart"],
         dev["yq0"], dev["yq1"], dev["yw"], dev["yin"], dev["xq0"], dev["xq1"], dev["xw"], dev["xin"],
         dev["out_start"], out),
    )  # fmt: skip
    flat = to_host(out).astype(bool)
    return tuple(flat[out_start[i] : out_start[i + 1]].reshape(int(mh[i]), int(mw[i])) for i in range(m))
