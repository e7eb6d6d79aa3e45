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
