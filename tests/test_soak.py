"""Soak: a long headless run keeps its memory flat (issue: runs that survive a day).

``pytest -m soak`` (CI leaves it out: ``make test`` deselects it; ``make soak`` runs it). The real
pipeline an operator leaves running on a CPU machine: config/laptop.yaml (vtest.avi looping, the
512x384 demo detector on every third frame, tracking with its line, SQLite), STRICT_SYNC so that
every frame is counted and stored, read as fast as the pipeline takes it; at least 10,000 frames.
The resident set size is probed every 25 published frames from a sink (after a garbage
collection and ``malloc_trim``) and its floor kept per 250 frames; the slope of a least-squares
line through the floors after warm-up must stay at or under 0.05 MB per 1,000 frames. ``SOAK_FRAMES`` sets the length (default 10,000 after 1,000 of warm-up); every sample is
printed as it is taken (a run cut short still says what it saw).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import os
import resource
from pathlib import Path

import numpy as np
import pytest
import yaml

from app.headless import load_config_with_overrides, run_pipeline
from pipeline.types import FusedResult
from tests.test_headless import ROOT, VTEST

LAPTOP = yaml.safe_load((ROOT / "config/laptop.yaml").read_text())
DETECTOR = ROOT / LAPTOP["models"]["person"]["path"]
needs_clip = pytest.mark.skipif(
    not (VTEST.exists() and DETECTOR.exists()), reason="demo assets not fetched (run `make run` or `python main.py fetch-assets`)"
)
pytestmark = [needs_clip, pytest.mark.soak, pytest.mark.timeout(6 * 3600)]

WARMUP_FRAMES = 1000
SOAK_FRAMES = int(os.environ.get("SOAK_FRAMES", "10000"))
SAMPLE_EVERY = 250
PROBE_EVERY = 25
MAX_SLOPE_MB_PER_1000 = 0.05


def rss_mb() -> float:
    """The resident set size (``/proc/self/statm``), MB, of what the process keeps: after a garbage
    collection and glibc's ``malloc_trim`` (freed heap given back), so that the allocator's
    transient growth and shrinking (+-5 MB from one sample to the next) is not read as a trend."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the raw figure
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 1e6


class RssSampler:
    """A sink: RSS every ``PROBE_EVERY`` published frames (on the pipeline's own thread), and per
    window of ``SAMPLE_EVERY`` frames its lowest probe: the floor, when the fewest frames and tensors
    are in flight (a 768x576 frame is 1.3 MB and up to a dozen are queued at any moment, so single
    probes scatter by +-6 MB; a leak raises the floor)."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, float]] = []
        self._n = 0
        self._low = float("inf")

    def write(self, result: FusedResult) -> None:
        self._n += 1
        if self._n % PROBE_EVERY == 0:
            self._low = min(self._low, rss_mb())
        if self._n % SAMPLE_EVERY == 0:
            self.samples.append((self._n, self._low))
            print(f"soak: {self._n} frames, RSS floor {self._low:.1f} MB", flush=True)
            self._low = float("inf")

    def close(self) -> None:
        pass


def test_memory_stays_flat_over_a_long_run(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "config/laptop.yaml").read_text())
    data["streams"][0].update(uri=str(VTEST), loop=True, realtime=False)
    data["models"]["person"]["path"] = str(DETECTOR)
    data["models"]["density"]["path"] = str(ROOT / data["models"]["density"]["path"])  # not loaded: density is off
    data["storage"]["db_path"] = str(tmp_path / "people.db")
    data["fusion"].update(strategy="STRICT_SYNC", strict_sync_timeout_ms=120000.0)
    data["max_frames"] = WARMUP_FRAMES + SOAK_FRAMES
    assert not data["branches"]["density"]["enabled"] and not data["branches"]["yolo_tiles"]["enabled"]
    cfg_path = tmp_path / "soak.yaml"
    cfg_path.write_text(yaml.safe_dump(data))

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
