"""The counter with tracking: counts from confirmed tracks; where tracks cannot count (the first
frames, frames too far apart in stream time), the frame's own detections, labelled as such: never 0
for people present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from config.schema import PipelineConfig
from pipeline.frame_counter import FrameCounter
from pipeline.types import BranchResult, Detections, FrameMeta

ROOT = Path(__file__).resolve().parents[1]


def counter(max_gap_s: float = 0.5) -> FrameCounter:
    data = yaml.safe_load((ROOT / "config/pipeline.yaml").read_text())
    data["branches"]["yolo_tiles"]["enabled"] = False
    data["branches"]["density"]["enabled"] = False
    data["counting"]["policy"] = "detections"
    data["tracking"]["max_gap_s"] = max_gap_s
    return FrameCounter.from_config(PipelineConfig.model_validate(data), frame_rate=10.0)


def walkers(t: float, n: int = 3, y: float = 200.0) -> Detections:
    """``n`` people walking right at 40 px/s, 60x150 px boxes, apart from each other."""
    x0 = 100.0 + 40.0 * t + 200.0 * np.arange(n)
    xyxy = np.stack([x0, np.full(n, y), x0 + 60, np.full(n, y + 150)], axis=1).astype(np.float32)
    return Detections(xyxy, np.full(n, 0.9, np.float32), np.zeros(n, np.int32), np.full(n, -1, np.int32))


def count_at(c: FrameCounter, index: int, pts: float, y: float = 200.0):  # type: ignore[no-untyped-def]
    meta = FrameMeta("cam0", index, pts, pts, 1280, 720)
    result = BranchResult(meta, "yolo_global", detections=walkers(pts, y=y))
    return c({"yolo_global": result}, meta, {})[2]


def test_tracks_confirm_over_close_frames_and_count_the_people() -> None:
    c = counter()
    counts = [count_at(c, i, i / 10) for i in range(6)]
    assert all("tracks warming up" in x.policy for x in counts[:2])  # min_confirm_frames 3: the detections
    assert [x.fused for x in counts] == [3.0] * 6
    assert all(x.policy == "detections" for x in counts[2:])  # confirmed tracks
    assert all(x.detection == 3 for x in counts)


def test_frames_too_far_apart_for_tracks_give_an_unknown_count_not_zero() -> None:
    c = counter(max_gap_s=0.5)
    # a detector far slower than the stream: the tracker sees a frame every 2.5 s
    counts = [count_at(c, i * 25, i * 2.5) for i in range(6)]
    for x in counts[1:]:
        assert x.fused == 3.0 and x.detection == 3  # the frame's own detections; no 0 for three people
        assert "since the last tracked frame" in x.policy and x.policy.endswith("->detections")


def test_after_a_gap_tracks_count_again_only_after_close_frames() -> None:
    c = counter(max_gap_s=0.5)
    for i in range(4):
        assert ("tracks" in count_at(c, i, i / 10).policy) == (i < 2)
    # 9.7 s later, other people (elsewhere), then close frames
    after = [count_at(c, 100 + i, 10.0 + i / 10, y=450.0) for i in range(6)]
    assert "since the last tracked frame" in after[0].policy
    assert all("warming up after a gap" in x.policy for x in after[1:3])
    assert [x.fused for x in after] == [3.0] * 6  # never 0 for the three people
    assert all(x.policy == "detections" for x in after[3:])  # confirmed tracks again
    assert all(x.detection == 3 for x in after)
