"""ByteTrack on arrays: supervision 0.30's ``ByteTrack`` with its per-track Python objects replaced
by one structure of arrays, so that a frame of 130 people costs a few milliseconds, not 25-50.

supervision's ``ByteTrack`` keeps one ``STrack`` object per track and runs the Kalman filter's
correction one track at a time (a SciPy Cholesky per track), and reads every box through Python
properties; at 130 people on a 4K frame that is 25 ms a frame on a quiet core and 54 ms on a loaded
one, on the thread that publishes counts. :class:`ArrayByteTrack` is the same algorithm (Zhang et
al. 2022, as supervision 0.30 implements it, step for step: the two score bands, the first
association on fused IoU-score cost, the second on IoU alone at 0.5, unconfirmed tracks matched at
0.7, new tracks above ``activation + 0.1``, lost tracks kept ``lost_track_buffer`` frames, duplicate
removal between tracked and lost tracks, the final IoU re-match of detections to output tracks at
0.5, internal and external id counters) with the Kalman predict and correct steps batched over all
tracks (NumPy ``matmul`` / ``linalg.solve`` instead of per-track ``cho_solve``). The iteration
orders that decide ties (Python ``set`` orders of unmatched indices, list orders of tracked and lost
tracks) are kept, so the ids are the ones supervision gives: ``tests/test_bytetrack.py`` runs both
on the same detections (synthetic walkers, 130 people; real detections of vtest.avi) and compares
every id of every frame. Floating point differs in the last bits (batched vs per-track
linear algebra); an exact tie in a cost matrix could then break the other way.

``update(xyxy, score) -> ids``: (N,) int64, the external id of each detection's track or -1, as
``ByteTrack.update_with_detections(...).tracker_id`` scattered back to the input order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

__all__ = ["ArrayByteTrack"]

NEW, TRACKED, LOST, REMOVED = 0, 1, 2, 3

_STD_POS = 1.0 / 20
_STD_VEL = 1.0 / 160
_F = np.eye(8)
_F[:4, 4:] = np.eye(4)
_H = np.eye(4, 8)


def _iou(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.float32]:
    """(N, M) IoU of float32 xyxy boxes, computed in float64 and returned as float32 (as
    supervision's ``box_iou_batch`` does)."""
    if len(a) == 0 or len(b) == 0:
        return np.empty((len(a), len(b)), np.float32)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    iw = np.clip(np.minimum(a64[:, None, 2], b64[None, :, 2]) - np.maximum(a64[:, None, 0], b64[None, :, 0]), 0.0, None)
    ih = np.clip(np.minimum(a64[:, None, 3], b64[None, :, 3]) - np.maximum(a64[:, None, 1], b64[None, :, 1]), 0.0, None)
    inter = iw * ih
    area_a = (a64[:, 2] - a64[:, 0]) * (a64[:, 3] - a64[:, 1])
    area_b = (b64[:, 2] - b64[:, 0]) * (b64[:, 3] - b64[:, 1])
    norm = area_a[:, None] + area_b[None, :] - inter
    out = np.zeros(inter.shape, np.float32)
    np.divide(inter, norm, out=out, where=norm > 0)
    return out


def _assign(cost: NDArray[np.float32], thresh: float) -> tuple[list[tuple[int, int]], tuple[int, ...], tuple[int, ...]]:
    """supervision's ``matching.linear_assignment``: matches (row order), and the unmatched rows
    and columns as ``tuple(set(...) - set(...))`` (the same iteration order as there)."""
    if cost.size == 0:
        return [], tuple(range(cost.shape[0])), tuple(range(cost.shape[1]))
    clipped = cost.copy()
    clipped[clipped > thresh] = thresh + 1e-4
    rows, cols = linear_sum_assignment(clipped)
    keep = cost[rows, cols] <= thresh
    matches = [(int(r), int(c)) for r, c in zip(rows[keep], cols[keep], strict=True)]
    unmatched_a = tuple(set(range(cost.shape[0])) - {r for r, _ in matches})
    unmatched_b = tuple(set(range(cost.shape[1])) - {c for _, c in matches})
    return matches, unmatched_a, unmatched_b


def _xyah(tlbr: NDArray[np.float32]) -> NDArray[np.float32]:
    """(K, 4) float32 tlbr -> (center x, center y, w / h, h), in float32 through tlwh (as STrack)."""
    tlwh = tlbr.copy()
    tlwh[:, 2:] -= tlwh[:, :2]
    out = tlwh.copy()
    out[:, :2] += out[:, 2:] / 2
    out[:, 2] /= out[:, 3]
    return out


def _det_tlbr(tlbr: NDArray[np.float32]) -> NDArray[np.float32]:
    """A detection's box as STrack gives it back (tlbr -> tlwh -> tlbr in float32)."""
    tlwh = tlbr.copy()
    tlwh[:, 2:] -= tlwh[:, :2]
    out = tlwh.copy()
    out[:, 2:] += out[:, :2]
    return out


@dataclass(slots=True)
class _Dets:
    """One score band's detections: tlbr as a track made of them reads them, xyah, score."""

    tlbr: NDArray[np.float32]
    xyah: NDArray[np.float32]
    score: NDArray[np.float32]

    @classmethod
    def of(cls, tlbr: NDArray[np.float32], score: NDArray[np.float32]) -> _Dets:
        return cls(_det_tlbr(tlbr), _xyah(tlbr), score)

    def take(self, idx: list[int] | tuple[int, ...]) -> _Dets:
        i = np.asarray(idx, np.int64)
        return _Dets(self.tlbr[i].reshape(-1, 4), self.xyah[i].reshape(-1, 4), self.score[i])

    def __len__(self) -> int:
        return len(self.score)


class ArrayByteTrack:
    """supervision 0.30 ``ByteTrack`` (same parameters, same ids), tracks held in arrays.

    Track ``k`` (a slot) has ``mean`` (8,), ``cov`` (8, 8), ``state`` (NEW/TRACKED/LOST/REMOVED),
    ``activated``, ``tracklet_len``, ``frame_id``, ``start_frame``, ``internal`` and ``external``
    ids and ``score``. ``_tracked`` and ``_lost`` are lists of slots in supervision's list orders.
    A slot is freed when its track is removed.
    """

    def __init__(
        self,
        track_activation_threshold: float = 0.25,
        lost_track_buffer: int = 30,
        minimum_matching_threshold: float = 0.8,
        frame_rate: float = 30.0,
        minimum_consecutive_frames: int = 1,
    ) -> None:
        self.track_activation_threshold = float(track_activation_threshold)
        self.minimum_matching_threshold = float(minimum_matching_threshold)
        self.det_thresh = self.track_activation_threshold + 0.1
        if self.det_thresh > 1.0:
            self.det_thresh = self.track_activation_threshold
        self.max_time_lost = int(frame_rate / 30.0 * lost_track_buffer)
        self.minimum_consecutive_frames = int(minimum_consecutive_frames)
        self.frame_id = 0
        self._next_internal = 0
        self._next_external = 1
        cap = 64
        self._mean = np.zeros((cap, 8))
        self._cov = np.zeros((cap, 8, 8))
        self._state = np.zeros(cap, np.int8)
        self._activated = np.zeros(cap, bool)
        self._tracklet_len = np.zeros(cap, np.int64)
        self._frame = np.zeros(cap, np.int64)
        self._start = np.zeros(cap, np.int64)
        self._internal = np.full(cap, -1, np.int64)
        self._external = np.full(cap, -1, np.int64)
        self._score = np.zeros(cap, np.float32)
        self._free: list[int] = list(range(cap - 1, -1, -1))
        self._tracked: list[int] = []
        self._lost: list[int] = []
        self._removed_prev: set[int] = set()  # internal ids removed on the previous frame

    # ----------------------------------------------------------------------------------------
    # track storage

    def _alloc(self) -> int:
        if not self._free:
            cap = len(self._state)
            for name in ("_mean", "_cov", "_state", "_activated", "_tracklet_len", "_frame", "_start", "_internal", "_external", "_score"):
                arr = getattr(self, name)
                grown = np.zeros((2 * cap, *arr.shape[1:]), arr.dtype)
                grown[:cap] = arr
                setattr(self, name, grown)
            self._free = list(range(2 * cap - 1, cap - 1, -1))
        return self._free.pop()

    def _tlbr(self, slots: list[int], f32: bool = True) -> NDArray[np.floating]:
        """(K, 4) boxes of tracks from their means (STrack.tlbr); float32 as ``iou_distance``
        passes them, float64 as the final re-match in ``update_with_detections`` does."""
        if not slots:
            return np.zeros((0, 4), np.float32)
        m = self._mean[np.asarray(slots, np.int64), :4].copy()
        m[:, 2] *= m[:, 3]
        m[:, :2] -= m[:, 2:] / 2
        m[:, 2:] += m[:, :2]
        return m.astype(np.float32) if f32 else m

    # ----------------------------------------------------------------------------------------
    # Kalman filter, batched

    def _predict(self, slots: list[int]) -> None:
        if not slots:
            return
        idx = np.asarray(slots, np.int64)
        mean = self._mean[idx].copy()
        mean[self._state[idx] != TRACKED, 7] = 0.0
        h = mean[:, 3]
        std = np.stack([_STD_POS * h, _STD_POS * h, np.full_like(h, 1e-2), _STD_POS * h,
                        _STD_VEL * h, _STD_VEL * h, np.full_like(h, 1e-5), _STD_VEL * h], axis=1)
        q = np.zeros((len(idx), 8, 8))
        q[:, np.arange(8), np.arange(8)] = np.square(std)
        self._mean[idx] = mean @ _F.T
        self._cov[idx] = _F @ self._cov[idx] @ _F.T + q

    def _correct(self, slots: list[int], xyah: NDArray[np.float32]) -> None:
        if not slots:
            return
        idx = np.asarray(slots, np.int64)
        mean, cov = self._mean[idx], self._cov[idx]
        h = mean[:, 3]
        r = np.zeros((len(idx), 4, 4))
        r[:, np.arange(4), np.arange(4)] = np.square(np.stack([_STD_POS * h, _STD_POS * h, np.full_like(h, 1e-1), _STD_POS * h], axis=1))
        s = cov[:, :4, :4] + r  # H P H^T + R
        pht = cov[:, :, :4]  # P H^T (8, 4)
        gain = np.linalg.solve(s, pht.transpose(0, 2, 1)).transpose(0, 2, 1)  # (K, 8, 4)
        innovation = xyah.astype(np.float64) - mean[:, :4]
        self._mean[idx] = mean + np.einsum("ki,kji->kj", innovation, gain)
        self._cov[idx] = cov - gain @ s @ gain.transpose(0, 2, 1)

    def _initiate(self, slot: int, xyah: NDArray[np.float32]) -> None:
        h = np.float32(xyah[3])  # the deviations in float32, as KalmanFilter.initiate makes them
        p, v = np.float32(2 * _STD_POS) * h, np.float32(10 * _STD_VEL) * h
        std = np.array([p, p, 1e-2, p, v, v, 1e-5, v], np.float64)
        self._mean[slot] = np.r_[xyah.astype(np.float64), np.zeros(4)]
        self._cov[slot] = np.diag(np.square(std))

    # ----------------------------------------------------------------------------------------
    # the steps of STrack

    def _update_track(self, slot: int) -> None:
        """STrack.update after the Kalman correction: length, state, activation, external id."""
        self._frame[slot] = self.frame_id
        self._tracklet_len[slot] += 1
        self._state[slot] = TRACKED
        if self._tracklet_len[slot] >= self.minimum_consecutive_frames:
            self._activated[slot] = True
            if self._external[slot] == -1:
                self._external[slot] = self._next_external
                self._next_external += 1

    def _apply_matches(self, slots: list[int], dets: _Dets, matches: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
        """Matched pairs: Kalman correction of all at once, then update (tracked) or re-activate
        (lost), in match order. Returns (activated, refound) slots."""
        if not matches:
            return [], []
        ms = [slots[i] for i, _ in matches]
        di = [d for _, d in matches]
        self._correct(ms, dets.xyah[np.asarray(di, np.int64)])
        activated: list[int] = []
        refound: list[int] = []
        for slot, d in zip(ms, di, strict=True):
            if self._state[slot] == TRACKED:
                self._update_track(slot)
                activated.append(slot)
            else:  # STrack.re_activate
                self._tracklet_len[slot] = 0
                self._state[slot] = TRACKED
                self._frame[slot] = self.frame_id
                refound.append(slot)
            self._score[slot] = dets.score[d]
        return activated, refound

    def _cost(self, slots: list[int], dets: _Dets, fuse: bool) -> NDArray[np.float32]:
        cost = np.asarray(1 - _iou(self._tlbr(slots), dets.tlbr), np.float32)
        if fuse and cost.size:
            cost = np.asarray(1 - (1 - cost) * dets.score[None, :], np.float32)
        return cost

    # ----------------------------------------------------------------------------------------

    def update(self, xyxy: NDArray[np.floating], score: NDArray[np.floating]) -> NDArray[np.int64]:
        """One frame: (N, 4) boxes and (N,) scores -> (N,) external track id per box, -1 for none."""
        boxes_in = np.asarray(xyxy, np.float32).reshape(-1, 4)
        scores_in = np.asarray(score, np.float32).reshape(-1)
        self.frame_id += 1
        tensors = np.hstack([boxes_in, scores_in[:, None]])
        w, h = tensors[:, 2] - tensors[:, 0], tensors[:, 3] - tensors[:, 1]
        valid = np.isfinite(tensors).all(axis=1) & (w > 0) & (h > 0)
        boxes, scores = boxes_in[valid], scores_in[valid]
        high = scores >= self.track_activation_threshold
        second = (scores > 0.1) & (scores < self.track_activation_threshold)
        dets = _Dets.of(boxes[high], scores[high])
        dets_second = _Dets.of(boxes[second], scores[second])

        unconfirmed = [s for s in self._tracked if not self._activated[s]]
        tracked = [s for s in self._tracked if self._activated[s]]
        pool = _joint(tracked, self._lost, self._internal)
        self._predict(pool)

        # first association: high-score detections, IoU fused with the score
        matches, u_track, u_det = _assign(self._cost(pool, dets, fuse=True), self.minimum_matching_threshold)
        activated, refound = self._apply_matches(pool, dets, matches)

        # second association: the remaining tracked tracks with the low-score detections
        r_tracked = [pool[i] for i in u_track if self._state[pool[i]] == TRACKED]
        matches, u_track2, _ = _assign(self._cost(r_tracked, dets_second, fuse=False), 0.5)
        a2, f2 = self._apply_matches(r_tracked, dets_second, matches)
        activated += a2
        refound += f2
        lost_now: list[int] = []
        for i in u_track2:
            slot = r_tracked[i]
            if self._state[slot] != LOST:
                self._state[slot] = LOST
                lost_now.append(slot)

        # unconfirmed tracks (one frame old) with the high-score detections left
        rest = dets.take(u_det)
        matches, u_unconf, u_new = _assign(self._cost(unconfirmed, rest, fuse=True), 0.7)
        if matches:
            ms = [unconfirmed[i] for i, _ in matches]
            self._correct(ms, rest.xyah[np.asarray([d for _, d in matches], np.int64)])
            for slot, (_, d) in zip(ms, matches, strict=True):
                self._update_track(slot)
                self._score[slot] = rest.score[d]
                activated.append(slot)
        removed_now: list[int] = []
        for i in u_unconf:
            self._state[unconfirmed[i]] = REMOVED
            removed_now.append(unconfirmed[i])

        # new tracks
        for i in u_new:
            if rest.score[i] < self.det_thresh:
                continue
            slot = self._alloc()
            self._initiate(slot, rest.xyah[i])
            self._internal[slot] = self._next_internal
            self._next_internal += 1
            self._external[slot] = -1
            self._tracklet_len[slot] = 1
            self._state[slot] = TRACKED
            self._activated[slot] = False
            if self.frame_id == 1 and self._tracklet_len[slot] >= self.minimum_consecutive_frames:
                self._activated[slot] = True
                self._external[slot] = self._next_external
                self._next_external += 1
            self._frame[slot] = self.frame_id
            self._start[slot] = self.frame_id
            self._score[slot] = rest.score[i]
            activated.append(slot)

        for slot in self._lost:
            if self.frame_id - self._frame[slot] > self.max_time_lost:
                self._state[slot] = REMOVED
                removed_now.append(slot)

        new_tracked = [s for s in self._tracked if self._state[s] == TRACKED]
        new_tracked = _joint(new_tracked, activated, self._internal)
        new_tracked = _joint(new_tracked, refound, self._internal)
        lost = _sub(self._lost, {int(self._internal[t]) for t in new_tracked}, self._internal)
        lost.extend(lost_now)
        # as supervision does: the lost list loses the tracks removed on the *previous* frame, so a
        # track removed now stays in it (state REMOVED) for one more frame, where it can be refound
        lost = _sub(lost, self._removed_prev, self._internal)
        self._removed_prev = {int(self._internal[t]) for t in removed_now}
        new_tracked, lost = self._remove_duplicates(new_tracked, lost)
        alive = set(new_tracked) | set(lost)
        self._free.extend(s for s in set(self._tracked) | set(self._lost) | set(removed_now) if s not in alive)
        # (a slot is freed once its track is in neither list; ids of removed tracks are kept as ids)
        self._tracked, self._lost = new_tracked, lost

        # the detections' ids: output tracks re-matched to all the input boxes by IoU
        ids = np.full(len(boxes_in), -1, np.int64)
        out = [s for s in self._tracked if self._activated[s]]
        if out:
            cost = 1 - _iou(boxes_in, self._tlbr(out, f32=False))
            matches, _, _ = _assign(cost, 0.5)
            for d, t in matches:
                ids[d] = self._external[out[t]]
        return ids

    def _remove_duplicates(self, a: list[int], b: list[int]) -> tuple[list[int], list[int]]:
        if not a or not b:
            return a, b
        dist = 1 - _iou(self._tlbr(a), self._tlbr(b))
        dup_a: set[int] = set()
        dup_b: set[int] = set()
        for i, j in zip(*np.where(dist < 0.05), strict=True):
            time_a = self._frame[a[i]] - self._start[a[i]]
            time_b = self._frame[b[j]] - self._start[b[j]]
            if time_a > time_b:
                dup_b.add(int(j))
            else:
                dup_a.add(int(i))
        return [s for k, s in enumerate(a) if k not in dup_a], [s for k, s in enumerate(b) if k not in dup_b]


def _joint(a: list[int], b: list[int], internal: NDArray[np.int64]) -> list[int]:
    """a + b without repeated internal ids, first kept (supervision's ``joint_tracks``)."""
    seen: set[int] = set()
    out: list[int] = []
    for s in a + b:
        tid = int(internal[s])
        if tid not in seen:
            seen.add(tid)
            out.append(s)
    return out


def _sub(a: list[int], ids: set[int], internal: NDArray[np.int64]) -> list[int]:
    """a without the tracks of internal ids ``ids``, in a's order (supervision's ``sub_tracks``)."""
    tracks = {int(internal[s]): s for s in a}
    for tid in ids:
        tracks.pop(tid, None)
    return list(tracks.values())
