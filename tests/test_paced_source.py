"""PacedSource delivers a file at its frame rate (a fake clock controls time; the frames are real)."""

from __future__ import annotations

from pipeline.sources import PacedSource
from pipeline.sources_synthetic import SyntheticSource


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_frames_are_released_on_the_frame_rate_schedule() -> None:
    clock = FakeClock()
    with PacedSource(SyntheticSource(32, 24, frames=5), fps=10.0, clock=clock, sleep=clock.sleep) as src:
        arrivals = []
        for f in src.frames():
            arrivals.append(round(clock.now - 100.0, 6))
            assert f.image.shape == (24, 32, 3)
    assert arrivals == [0.0, 0.1, 0.2, 0.3, 0.4]


def test_a_slow_consumer_gets_late_frames_at_once_without_drift() -> None:
    clock = FakeClock()
    with PacedSource(SyntheticSource(32, 24, frames=4), fps=10.0, clock=clock, sleep=clock.sleep) as src:
        arrivals = []
        for i, _ in enumerate(src.frames()):
            arrivals.append(round(clock.now - 100.0, 6))
            if i == 0:
                clock.now += 0.25  # the consumer took 250 ms on frame 0
    assert arrivals == [0.0, 0.25, 0.25, 0.3]
