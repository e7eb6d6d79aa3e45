"""Soak: a long headless run keeps its memory flat (issue: runs that survive a day).

``pytest -m soak`` (CI leaves it out: ``make test`` deselects it; ``make soak`` runs it). The real
pipeline on vtest.avi looping (the demo detector, the global pass, STRICT_SYNC, SQLite), at least
10,000 frames; the resident set size is sampled every 250 published frames from a sink, and the
slope of a least-squares line through the samples after warm-up must stay at or under
0.05 MB per 1,000 frames. ``SOAK_FRAMES`` sets the length (default 10,000 after 1,000 of warm-up).
"""

from __future__ import annotations

import io
import os
import resource
from pathlib import Path

import numpy as np
import pytest

from app.headless import load_config_with_overrides, run_pipeline
from pipeline.types import FusedResult
from tests.test_headless import DETECTOR, VTEST, write_config

# the clip and the detector only (density is off here: the soak runs on machines that carry no CSRNet)
needs_clip = pytest.mark.skipif(
    not (VTEST.exists() and DETECTOR.exists()), reason="demo assets not fetched (run `make run` or `python main.py fetch-assets`)"
)
pytestmark = [needs_clip, pytest.mark.soak, pytest.mark.timeout(6 * 3600)]

WARMUP_FRAMES = 1000
SOAK_FRAMES = int(os.environ.get("SOAK_FRAMES", "10000"))
SAMPLE_EVERY = 250
MAX_SLOPE_MB_PER_1000 = 0.05


def rss_mb() -> float:
    """The current resident set size (``/proc/self/statm``), MB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 1e6


class RssSampler:
    """A sink: RSS every ``SAMPLE_EVERY`` published frames (on the pipeline's own thread)."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, float]] = []
        self._n = 0

    def write(self, result: FusedResult) -> None:
        self._n += 1
        if self._n % SAMPLE_EVERY == 0:
            self.samples.append((self._n, rss_mb()))

    def close(self) -> None:
        pass


def test_memory_stays_flat_over_a_long_run(tmp_path: Path) -> None:
    cfg_path = write_config(
        tmp_path,
        **{
            "streams.0.loop": True,
            "branches.yolo_tiles.enabled": False,
            "branches.density.enabled": False,
            "max_frames": WARMUP_FRAMES + SOAK_FRAMES,
            "fusion.strategy": "STRICT_SYNC",
        },
    )

    class Args:
        config = str(cfg_path)

    cfg = load_config_with_overrides(Args())  # type: ignore[arg-type]
    sampler = RssSampler()
    code, summary, _run = run_pipeline(cfg, out=io.StringIO(), progress=None, extra_sinks=(sampler,))
    assert code == 0
    assert summary.frames == WARMUP_FRAMES + SOAK_FRAMES
    steady = np.array([(n, mb) for n, mb in sampler.samples if n > WARMUP_FRAMES])
    slope_per_frame = float(np.polyfit(steady[:, 0], steady[:, 1], 1)[0])
    slope = slope_per_frame * 1000.0
    print(f"\nRSS {steady[0, 1]:.1f} -> {steady[-1, 1]:.1f} MB over {int(steady[-1, 0] - steady[0, 0])} frames; "
          f"slope {slope:.4f} MB per 1,000 frames")
    assert slope <= MAX_SLOPE_MB_PER_1000, f"RSS grows {slope:.3f} MB per 1,000 frames: {sampler.samples[::8]}"
