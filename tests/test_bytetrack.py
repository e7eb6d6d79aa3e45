"""pipeline.bytetrack.ArrayByteTrack gives the ids supervision 0.30's ByteTrack gives, frame for
frame, on the same detections (the real clip's detections: tests/test_tracking.py)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest

from pipeline.bytetrack import ArrayByteTrack

PARAMS = {"track_activation_threshold": 0.25, "lost_track_buffer": 30, "minimum_matching_threshold": 0.8,
          "frame_rate": 10.0, "minimum_consecutive_frames": 1}


def supervision_tracker(**kw: float) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import supervision as sv

        return sv.ByteTrack(**{**PARAMS, **kw})


def supervision_ids(tracker: object, xyxy: np.ndarray, score: np.ndarray) -> np.ndarray:
    import supervision as sv

    d = sv.Detections(xyxy=xyxy.copy(), confidence=score.copy(), class_id=np.zeros(len(score), int),
                      data={"index": np.arange(len(score))})
    out = tracker.update_with_detections(d)  # type: ignore[attr-defined]
    ids = np.full(len(score), -1, np.int64)
    if len(out):
        ids[np.asarray(out.data["index"], np.int64)] = out.tracker_id
    return ids


def walkers(people: int, frames: int, seed: int, miss: float = 0.05, wh: tuple[int, int] = (3840, 2160),
            person_h: float = 100.0, fps: float = 10.0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """People walking with jitter, some missed each frame, scores across both ByteTrack bands."""
    rng = np.random.default_rng(seed)
    w, h = wh
    pos = rng.uniform([0, person_h], [w, h], size=(people, 2))
    speed = person_h / 1.7 * 1.2 / fps
    heading = rng.uniform(0, 2 * np.pi, people)
    for _ in range(frames):
        heading += rng.normal(0, 0.05, people)
        pos += speed * np.stack([np.cos(heading), np.sin(heading)], axis=1)
        pos[:, 0] %= w
        pos[:, 1] = np.clip(pos[:, 1], person_h, h)
        xyxy = np.stack([pos[:, 0] - person_h / 5, pos[:, 1] - person_h, pos[:, 0] + person_h / 5, pos[:, 1]], axis=1)
        xyxy += rng.normal(0, 2, size=(people, 4))
        keep = rng.random(people) > miss
        yield xyxy[keep].astype(np.float32), rng.uniform(0.05, 0.9, int(keep.sum())).astype(np.float32)


@pytest.mark.parametrize(("people", "seed", "miss"), [(130, 0, 0.05), (40, 1, 0.3), (5, 2, 0.5)])
def test_the_same_ids_as_supervision_on_walkers(people: int, seed: int, miss: float) -> None:
    ref, ours = supervision_tracker(), ArrayByteTrack(**PARAMS)
    tracked = 0
    for k, (xyxy, score) in enumerate(walkers(people, 120, seed, miss)):
        expected = supervision_ids(ref, xyxy, score)
        got = ours.update(xyxy, score)
        assert np.array_equal(got, expected), f"frame {k}: {np.flatnonzero(got != expected)[:10]}"
        tracked += int((got >= 0).sum())
    assert tracked > people * 120 * 0.3  # many detections had ids: the comparison compared ids


def test_empty_frames_bad_boxes_and_people_who_leave() -> None:
    """Frames without detections (all tracks lost, then removed after the buffer), NaN and
    zero-size boxes (ignored, id -1), and a crowd coming back: the same ids as supervision."""
    ref, ours = supervision_tracker(lost_track_buffer=5), ArrayByteTrack(**{**PARAMS, "lost_track_buffer": 5})
    frames = list(walkers(20, 60, 3, 0.1))
    for k, (xyxy, score) in enumerate(frames):
        if 20 <= k < 24 or 40 <= k < 50:  # gaps: shorter, then longer than the lost buffer
            xyxy, score = xyxy[:0], score[:0]
        elif k % 7 == 0:
            xyxy = xyxy.copy()
            xyxy[0] = np.nan
            xyxy[1, 2] = xyxy[1, 0]  # zero width
        expected = supervision_ids(ref, xyxy, score)
        got = ours.update(xyxy, score)
        assert np.array_equal(got, expected), f"frame {k}"
        if len(score) and k % 7 == 0:
            assert got[0] == -1 and got[1] == -1


def test_more_tracks_than_the_first_capacity() -> None:
    """The arrays grow (64 slots at first) with 300 people, and the ids stay supervision's."""
    ref, ours = supervision_tracker(), ArrayByteTrack(**PARAMS)
    for xyxy, score in walkers(300, 5, 4, 0.0):
        score = np.full(len(score), 0.9, np.float32)
        expected = supervision_ids(ref, xyxy, score)
        ids = ours.update(xyxy, score)
        assert np.array_equal(ids, expected)
    assert len(ours._state) >= 300 and len(set(ids[ids >= 0].tolist())) > 290
