"""Tests of pipeline.telemetry: statistics, warm-up, missing stages, timers, drop counts."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from pipeline.telemetry import (
    STAT_FIELDS,
    DropCounter,
    StageStats,
    StageTimer,
    format_table,
    stage_stats,
    summarize,
    timed,
)
from storage.queries import timing_rows
from storage.writer import SqliteWriter
from tests.storage_builders import make_result, no_new_threads


@pytest.fixture(autouse=True)
def _no_thread_left() -> Iterator[None]:
    with no_new_threads():
        yield


def assert_stats(actual: StageStats, expected: StageStats) -> None:
    """Field-wise equality where NaN equals NaN."""
    for name in STAT_FIELDS:
        a, e = getattr(actual, name), getattr(expected, name)
        if isinstance(e, float) and math.isnan(e):
            assert math.isnan(a), f"{name}: expected NaN, got {a}"
        else:
            assert a == pytest.approx(e, rel=1e-12, abs=1e-12), f"{name}: expected {e}, got {a}"


def test_fields_are_the_contract() -> None:
    assert tuple(f.name for f in dataclasses.fields(StageStats)) == STAT_FIELDS
    assert STAT_FIELDS == ("n", "mean", "p50", "p90", "p95", "p99", "max")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([5.0], StageStats(1, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0)),
        ([1.0, 2.0, 3.0, 4.0], StageStats(4, 2.5, 2.5, 3.7, 3.85, 3.97, 4.0)),
        ([float(v) for v in range(1, 101)], StageStats(100, 50.5, 50.5, 90.1, 95.05, 99.01, 100.0)),
        # unsorted input, one outlier: ranks 8.1, 8.55, 8.91 interpolate towards it
        ([10.0] + [0.0] * 9, StageStats(10, 1.0, 0.0, 1.0, 5.5, 9.1, 10.0)),
        ([2.0, 2.0, 2.0], StageStats(3, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0)),
    ],
    ids=["single", "four", "1-100", "outlier", "constant"],
)
def test_known_percentiles(values: list[float], expected: StageStats) -> None:
    assert_stats(stage_stats(values, warmup=0), expected)


def test_warmup_skips_first_values() -> None:
    assert_stats(stage_stats([100.0, 90.0, 1.0, 2.0, 3.0], warmup=2), StageStats(3, 2.0, 2.0, 2.8, 2.9, 2.98, 3.0))
    # default warm-up is 5
    assert stage_stats([1000.0] * 5 + [1.0, 1.0]).max == 1.0
    assert stage_stats([1000.0] * 5 + [1.0, 1.0]).n == 2


@pytest.mark.parametrize(("values", "warmup"), [([], 0), ([], 5), ([1.0, 2.0, 3.0], 3), ([1.0], 5)])
def test_empty_after_warmup_is_nan(values: list[float], warmup: int) -> None:
    s = stage_stats(values, warmup=warmup)
    assert s.n == 0
    assert all(math.isnan(getattr(s, f)) for f in STAT_FIELDS[1:])


def test_negative_warmup_is_an_error() -> None:
    with pytest.raises(ValueError, match="warmup"):
        stage_stats([1.0], warmup=-1)


def test_summarize_missing_keys_and_per_stage_warmup() -> None:
    # decode every frame, density every 5th frame (0, 5, 10, 15), as the pipeline publishes them.
    rows = []
    for i in range(20):
        row = {"decode_ms": float(i)}
        if i % 5 == 0:
            row["inference_model_csrnet_ms"] = 100.0 + i
        rows.append(row)
    stats = summarize(rows, warmup=2)
    assert list(stats) == ["decode_ms", "inference_model_csrnet_ms"]
    assert_stats(stats["decode_ms"], stage_stats([float(i) for i in range(2, 20)], warmup=0))
    # density's own series is [100, 105, 110, 115]: warm-up drops its first two *samples*
    assert_stats(stats["inference_model_csrnet_ms"], StageStats(2, 112.5, 112.5, 114.5, 114.75, 114.95, 115.0))


def test_summarize_none_and_nan_are_absent() -> None:
    rows = [{"a_ms": 1.0, "b_ms": None}, {"a_ms": float("nan"), "b_ms": 4.0}, {"a_ms": 3.0}]
    stats = summarize(rows, warmup=0)  # type: ignore[arg-type]
    assert stats["a_ms"].n == 2 and stats["a_ms"].mean == 2.0
    assert stats["b_ms"].n == 1 and stats["b_ms"].max == 4.0


def test_summarize_stage_order_is_first_seen_and_empty_input() -> None:
    rows = [{"z_ms": 1.0}, {"a_ms": 1.0, "z_ms": 2.0}, {"m_ms": 1.0}]
    assert list(summarize(rows, warmup=0)) == ["z_ms", "a_ms", "m_ms"]
    assert summarize([], warmup=0) == {}


def test_memory_and_sqlite_give_identical_stats(tmp_path) -> None:
    rng = np.random.default_rng(7)
    memory_rows: list[dict[str, float]] = []
    with SqliteWriter(tmp_path / "t.db", batch_size=16) as writer:
        run_id = writer.start_run({}, {}, source="synthetic://", strategy="STRICT_SYNC")
        for i in range(40):
            timings = {
                "decode_ms": float(rng.gamma(2.0, 2.0)),
                "inference_model_yolo_ms": float(rng.gamma(5.0, 3.0)),
                "end_to_end_ms": float(rng.gamma(9.0, 4.0)),
            }
            if i % 5 == 0:  # density every 5th frame: 8 samples, 3 after warm-up
                timings["inference_model_csrnet_ms"] = float(rng.gamma(20.0, 2.0))
            if i in (3, 30):  # a stage too rare to have statistics: NaN on both sides
                timings["render_ms"] = float(rng.uniform(1, 2))
            memory_rows.append(timings)
            writer.write(make_result(i, timings=timings))
        writer.end_run("completed", {})
    from_db = timing_rows(tmp_path / "t.db", run_id)
    assert from_db == memory_rows
    live, stored = summarize(memory_rows), summarize(from_db)
    assert list(live) == list(stored)
    for stage in live:
        assert_stats(stored[stage], live[stage])
    assert stored["inference_model_csrnet_ms"].n == 3
    assert stored["render_ms"].n == 0
    assert format_table(live) == format_table(stored)


def test_format_table_is_aligned() -> None:
    stats = {
        "decode_ms": StageStats(100, 1.234, 1.0, 2.0, 3.0, 4.0, 12.5),
        "inference_model_yolo11n_seg_ms": StageStats(95, 10.0, 9.5, 14.25, 15.0, 18.0, 1234.5),
        "render_ms": stage_stats([], warmup=0),
    }
    lines = format_table(stats).splitlines()
    assert len(lines) == 2 + len(stats)
    assert lines[0].split() == ["stage", "N", "mean", "ms", "p50", "ms", "p90", "ms", "p95", "ms", "max", "ms"]
    assert len({len(line) for line in lines}) == 1, "every line has the same width"
    assert lines[2].split() == ["decode_ms", "100", "1.23", "1.00", "2.00", "3.00", "12.50"]
    assert lines[3].split() == ["inference_model_yolo11n_seg_ms", "95", "10.00", "9.50", "14.25", "15.00", "1234.50"]
    assert lines[4].split() == ["render_ms", "0", "-", "-", "-", "-", "-"]
    # numbers are right-aligned: the max column ends at the line end
    assert lines[2].endswith("12.50") and lines[3].endswith("1234.50")


def test_timed_writes_milliseconds() -> None:
    timings: dict[str, float] = {}
    with timed(timings, "decode_ms") as timer:
        time.sleep(0.02)
    assert isinstance(timer, StageTimer)
    assert 15.0 <= timings["decode_ms"] < 1000.0
    assert timer.ms == timings["decode_ms"]


def test_timed_records_when_the_block_raises() -> None:
    timings: dict[str, float] = {"other_ms": 1.0}
    with pytest.raises(RuntimeError), timed(timings, "postprocess_ms"):
        raise RuntimeError("bad frame")
    assert timings["postprocess_ms"] >= 0.0
    assert timings["other_ms"] == 1.0


def test_drop_counter_is_thread_safe() -> None:
    drops = DropCounter()

    def hammer(queue: str) -> None:
        for _ in range(2000):
            drops.record(queue, "full")

    threads = [threading.Thread(target=hammer, args=("ui" if i % 2 else "fusion",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    drops.record("fusion", "stale", n=3)
    snap = drops.snapshot()
    assert snap == {"fusion/full": 8000, "fusion/stale": 3, "ui/full": 8000}
    assert drops.total() == 16003
    snap["ui/full"] = 0  # a snapshot is a copy
    assert drops.snapshot()["ui/full"] == 8000
    with pytest.raises(ValueError):
        drops.record("ui", "full", n=-1)
