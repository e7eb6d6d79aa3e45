"""The static check's definition, against the tracker's per-frame version of it.

``PeopleTracker`` decides "static" every frame for every confirmed track, so it takes shortcuts
(a walker is told apart by the first and last points of its window). This test holds it to the
definition in the module docstring, written the plain way: the centre's extent on each axis over
the points of the last ``static_after_s`` (plus half a frame) is at most ``static_max_motion`` x
the box diagonal; fewer than two points, or a history shorter than the window, is not static.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from config.schema import TrackingConfig
from pipeline.tracking import PeopleTracker, _TrackState

FPS = 30.0


def _definition(s: _TrackState, now: float, cfg: TrackingConfig) -> bool:
    window = cfg.static_after_s
    if now - s.static_origin_pts < window or not s.motion:
        return False
    pts = np.array([(x, y) for t, x, y in s.motion if t >= now - window - 0.5 / FPS], np.float64).reshape(-1, 2)
    if len(pts) < 2:
        return False
    extent = pts.max(axis=0) - pts.min(axis=0)
    diag = float(np.hypot(s.xyxy[2] - s.xyxy[0], s.xyxy[3] - s.xyxy[1]))
    return bool(np.all(extent <= cfg.static_max_motion * diag))


def _state(rng: np.random.Generator, n: int, step: float, now: float, gap_frames: int) -> _TrackState:
    """A track seen on ``n`` frames up to ``now`` (``gap_frames`` missed at the end), its centre a
    random walk of ``step`` px a frame (and sometimes one jump), kept as the tracker keeps it."""
    t = now - (np.arange(n)[::-1] + gap_frames) / FPS
    xy = np.cumsum(rng.normal(0, step, (n, 2)), axis=0) + 500.0
    if rng.random() < 0.3:
        xy[rng.integers(0, n):] += rng.normal(0, 40.0, 2)  # a jump: ends far from where it began, or not
    xy = xy.astype(np.float32)  # the tracker's centres come from float32 boxes
    w, h = float(rng.uniform(20, 80)), float(rng.uniform(60, 200))
    box = np.array([500 - w / 2, 500 - h, 500 + w / 2, 500], np.float32)
    motion = deque((float(a), float(b), float(c)) for a, b, c in zip(t, xy[:, 0].tolist(), xy[:, 1].tolist(), strict=True))
    return _TrackState(
        id=1, first_index=0, first_pts=float(t[0]), last_index=n, last_pts=float(t[-1]), xyxy=box,
        class_id=0, score=0.9, motion=motion, static_origin_pts=float(rng.choice([t[0], now - 100.0])),
    )


@pytest.mark.parametrize("static_after_s", [0.5, 2.0, 8.0])
def test_the_per_frame_static_check_is_the_definition(static_after_s: float) -> None:
    cfg = TrackingConfig(static_after_s=static_after_s)
    tracker = PeopleTracker(cfg, FPS)
    rng = np.random.default_rng(int(static_after_s * 10))
    window_frames = int(static_after_s * FPS)
    outcomes = {True: 0, False: 0}
    for _ in range(3000):
        n = int(rng.integers(1, window_frames + 4))
        now = float(rng.uniform(100.0, 200.0))
        s = _state(rng, n, step=float(rng.choice([0.05, 0.5, 2.0, 6.0])), now=now, gap_frames=int(rng.integers(0, 3)))
        want = _definition(s, now, cfg)
        assert tracker._is_static(s, now) is want, (n, s.motion[0], s.motion[-1], s.xyxy)
        outcomes[want] += 1
    # both outcomes occur often enough for the test to mean something
    assert min(outcomes.values()) > 300, outcomes
