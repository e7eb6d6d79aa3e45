"""Soak: a long headless run keeps its memory flat (issue: runs that survive a day).

``pytest -m soak`` (CI leaves it out: ``make test`` deselects it; ``make soak`` runs it). The real
pipeline an operator leaves running on a CPU machine: config/laptop.yaml (vtest.avi looping, the
512x384 demo detector on every third frame, tracking with its line, SQLite), STRICT_SYNC so that
every frame is counted and stored, read as fast as the pipeline takes it; 30,000 frames.
The resident set's anonymous part (``RssAnon``: where a leak grows; the file-backed rest moves with
the page cache) is probed every 250 frames with the pipeline drained (``QuietProbe``: the source
waits until every frame read is published), after a garbage collection and ``malloc_trim``; the
slope of a least-squares line through the probes after warm-up must stay at or under 0.05 MB per
1,000 frames. ``SOAK_FRAMES`` sets the length (default 30,000 after 1,000 of warm-up: the content-driven scatter of
1.4 MB needs that many for a slope error of 0.015 MB per 1,000 frames; 42 min on the 2-core machine); every sample is
printed as it is taken (a run cut short still says what it saw).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import os
import resource
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from app import headless
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
SOAK_FRAMES = int(os.environ.get("SOAK_FRAMES", "30000"))
SAMPLE_EVERY = 250
MAX_SLOPE_MB_PER_1000 = 0.05


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_mb() -> tuple[float, float, float]:
    """glibc's own figures (``mallinfo2``), MB: bytes in use from the heaps, free in them, and in
    mmapped chunks; zeros where there is no such call."""
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return (0.0, 0.0, 0.0)
    fn.restype = _Mallinfo2
    m = fn()
    return (m.uordblks / 1e6, m.fordblks / 1e6, m.hblkhd / 1e6)


def rss_mb() -> float:
    """The anonymous part of the resident set (``RssAnon`` in ``/proc/self/status``), MB, of what
    the process keeps: after a garbage collection and glibc's ``malloc_trim`` (freed heap given
    back), so that the allocator's transient growth and shrinking is not read as a trend.

    Anonymous memory is where a leak grows (heap, arenas, NumPy buffers). The file-backed rest of
    the RSS (the mapped libraries and models: ONNX Runtime, NumPy, SciPy, FFmpeg) rises and falls
    with the kernel's page cache, which other processes on a shared machine push out and the
    process faults back in: megabytes up and down with no change in the process."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the raw figure
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1000.0  # kB
    with open("/proc/self/statm") as f:  # kernels without RssAnon: resident minus shared pages
        _size, resident, shared, *_ = (int(v) for v in f.read().split())
    return (resident - shared) * resource.getpagesize() / 1e6


class QuietProbe:
    """Every ``SAMPLE_EVERY`` frames, the RSS of a drained pipeline.

    ``wrap`` puts a gate on the real source (the clip keeps being decoded by PyAV, every frame
    goes through the pipeline): after each ``SAMPLE_EVERY``-th frame it holds the next read until
    every frame read so far has been published (the sink side, :meth:`write`), then probes. Nothing
    is in flight at a probe: no frame queued, no branch running. Probes taken while frames were in
    flight (a 768x576 frame is 1.3 MB and up to a dozen are queued) scattered by +-3 MB even as
    the floor of ten probes, which hid any slope under 0.1 MB per 1,000 frames. The gate only
    controls when frames are read; it costs nothing else."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, float]] = []
        self._published = 0
        self._cond = threading.Condition()

    def write(self, result: FusedResult) -> None:  # a sink: the orchestrator's publishing thread
        with self._cond:
            self._published += 1
            self._cond.notify_all()

    def close(self) -> None:
        pass

    def _probe(self, read: int) -> None:
        with self._cond:
            drained = self._cond.wait_for(lambda: self._published >= read, timeout=300)
        mb = rss_mb()
        self.samples.append((read, mb))
        with open("/proc/self/statm") as f:
            whole = int(f.read().split()[1]) * resource.getpagesize() / 1e6
        used, free, mapped = heap_mb()
        print(
            f"soak: {read} frames, RssAnon {mb:.2f} MB, whole RSS {whole:.1f} MB; malloc: in use {used:.2f}, free {free:.2f}, "
            f"mmapped {mapped:.2f} MB; Python blocks {sys.getallocatedblocks()}{'' if drained else ' (not drained)'}",
            flush=True,
        )

    def wrap(self, source: Any) -> Any:
        probe = self

        class Gated:
            def __enter__(self) -> Any:
                source.__enter__()
                return self

            def __exit__(self, *exc: Any) -> Any:
                return source.__exit__(*exc)

            def __getattr__(self, name: str) -> Any:
                return getattr(source, name)

            def frames(self) -> Iterator[Any]:
                for n, frame in enumerate(source.frames(), 1):
                    yield frame
                    if n % SAMPLE_EVERY == 0:
                        del frame
                        probe._probe(n)

        return Gated()


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
    sampler = QuietProbe()
    real_make_source = headless.make_source
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(headless, "make_source", lambda *a, **k: sampler.wrap(real_make_source(*a, **k)))
        code, summary, _run = run_pipeline(cfg, out=io.StringIO(), progress=None, extra_sinks=(sampler,))
    assert code == 0
    assert summary.frames == WARMUP_FRAMES + SOAK_FRAMES
    steady = np.array([(n, mb) for n, mb in sampler.samples if n > WARMUP_FRAMES])
    slope_per_frame = float(np.polyfit(steady[:, 0], steady[:, 1], 1)[0])
    slope = slope_per_frame * 1000.0
    print(f"\nRSS {steady[0, 1]:.1f} -> {steady[-1, 1]:.1f} MB over {int(steady[-1, 0] - steady[0, 0])} frames; "
          f"slope {slope:.4f} MB per 1,000 frames")
    assert slope <= MAX_SLOPE_MB_PER_1000, f"RSS grows {slope:.3f} MB per 1,000 frames: {sampler.samples[::8]}"
