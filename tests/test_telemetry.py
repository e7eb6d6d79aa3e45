"""Tests of pipeline.telemetry: statistics, warm-up, missing stages, the bounded-memory accumulator."""

from __future__ import annotations

import dataclasses
import math
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest

from pipeline.telemetry import (
    STAT_FIELDS,
    StageAccumulator,
    StageStats,
    format_table,
    stage_stats,
    summarize,
)
from pipeline.types import BranchTimings, FrameTimings, StageTimings
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
    """What a run publishes (typed timings) and what SQLite gives back make the same statistics:
    exactly with ``summarize``, and with the live ``StageAccumulator`` (exact n/mean/max,
    percentiles within 1 %)."""
    rng = np.random.default_rng(7)
    memory_rows: list[dict[str, float]] = []
    live = StageAccumulator()
    with SqliteWriter(tmp_path / "t.db", batch_size=16) as writer:
        run_id = writer.start_run({}, {}, source="synthetic://", strategy="STRICT_SYNC")
        for i in range(40):
            work = [BranchTimings("yolo", i, {"inference_model_yolo_ms": float(rng.gamma(5.0, 3.0))})]
            if i % 5 == 0:  # density every 5th frame: 8 samples, 3 after warm-up
                work.append(BranchTimings("density", i, {"inference_model_csrnet_ms": float(rng.gamma(20.0, 2.0))}))
            timings = StageTimings(
                frame_index=i,
                frame=FrameTimings(decode_ms=float(rng.gamma(2.0, 2.0))),
                branches=tuple(work),
                # a figure too rare to have statistics: NaN on both sides
                fusion_wait_ms=float(rng.uniform(1, 2)) if i in (3, 30) else None,
                end_to_end_ms=float(rng.gamma(9.0, 4.0)),
            )
            memory_rows.append(timings.by_frame()[i])
            live.add(timings)
            writer.write(make_result(i, timings=timings))
        writer.end_run("completed", {})
    from_db = timing_rows(tmp_path / "t.db", run_id)
    assert from_db == memory_rows
    in_memory, stored = summarize(memory_rows), summarize(from_db)
    assert list(in_memory) == list(stored)
    for stage in in_memory:
        assert_stats(stored[stage], in_memory[stage])
    assert stored["inference_model_csrnet_ms"].n == 3
    assert stored["density.inference_model_csrnet_ms"].n == 3
    assert stored["fusion_wait_ms"].n == 0
    assert format_table(in_memory) == format_table(stored)
    streamed = live.stats()
    assert set(streamed) == set(stored)
    for stage, st in stored.items():
        got = streamed[stage]
        assert got.n == st.n, stage
        if st.n:
            assert got.mean == pytest.approx(st.mean) and got.max == st.max, stage
            for q in ("p50", "p90", "p95", "p99"):
                assert getattr(got, q) == pytest.approx(getattr(st, q), rel=0.01), (stage, q)


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


# ------------------------------------------------------------------------------------ StageAccumulator


def accumulate(rows: list[dict[str, float | None]], warmup: int) -> dict[str, StageStats]:
    acc = StageAccumulator(warmup)
    for row in rows:
        acc.add_values(row)  # type: ignore[arg-type]
    return acc.stats()


def assert_close(actual: StageStats, exact: StageStats, *, percentiles: bool = True, rel: float = 0.01) -> None:
    """``n``, ``mean`` and ``max`` as exact as a running sum allows; percentiles within ``rel``
    (``percentiles=False``: not compared, for series too short for the bins)."""
    assert actual.n == exact.n
    if exact.n == 0:
        assert all(math.isnan(getattr(actual, f)) for f in STAT_FIELDS[1:])
        return
    assert actual.mean == pytest.approx(exact.mean, rel=1e-9)
    assert actual.max == exact.max
    if not percentiles:
        return
    for name in ("p50", "p90", "p95", "p99"):
        a, e = getattr(actual, name), getattr(exact, name)
        assert a == pytest.approx(e, rel=rel, abs=1e-9), f"{name}: exact {e}, accumulated {a}"


def pipeline_rows(n: int, seed: int) -> list[dict[str, float | None]]:
    """Per-frame timings as a run publishes them: every frame, every 5th frame (density), a rare
    stage, and now and then a figure that was not measured (None) or NaN."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, float | None]] = []
    for i in range(n):
        row: dict[str, float | None] = {
            "decode_ms": float(rng.gamma(2.0, 2.0)),
            "inference_model_yolo_ms": float(rng.lognormal(2.0, 0.4)),
            "fusion_wait_ms": 0.0 if i % 3 else float(rng.exponential(4.0)),  # ASYNC publishes at once: 0
        }
        if i % 5 == 0:
            row["inference_model_csrnet_ms"] = float(rng.gamma(20.0, 2.0))
        if i % 97 == 0:
            row["render_ms"] = float(rng.uniform(1, 2))
        if i % 11 == 0:
            row["end_to_end_ms"] = None if i % 2 else math.nan
        else:
            row["end_to_end_ms"] = float(rng.gamma(9.0, 4.0))
        rows.append(row)
    return rows


def test_accumulator_gives_summarize_stats_on_the_same_rows() -> None:
    rows = pipeline_rows(3000, seed=3)
    exact = summarize(rows, warmup=5)  # type: ignore[arg-type]
    acc = accumulate(rows, warmup=5)
    assert list(acc) == list(exact)  # same stages, first-seen order
    for stage in exact:
        # percentiles of the dense series; render_ms (26 samples) is a short series, tested below
        assert_close(acc[stage], exact[stage], percentiles=exact[stage].n >= 500)
    assert acc["inference_model_csrnet_ms"].n == 600 - 5
    assert acc["fusion_wait_ms"].p50 == 0.0  # zeros are a value, not "absent"


@pytest.mark.parametrize(
    "draw",
    [
        pytest.param(lambda rng: rng.lognormal(2.0, 0.8, 5000), id="lognormal"),
        pytest.param(lambda rng: rng.lognormal(0.0, 2.5, 5000), id="lognormal-six-decades"),
        pytest.param(lambda rng: rng.uniform(10.0, 11.0, 5000), id="narrow"),
        pytest.param(
            lambda rng: np.concatenate([rng.gamma(3.0, 5.0, 4500), rng.uniform(200, 900, 500)]),
            id="two-modes-stalls"
        ),
    ],
)
def test_accumulator_percentiles_are_within_one_percent(draw) -> None:  # type: ignore[no-untyped-def]
    values = [float(v) for v in draw(np.random.default_rng(17))]
    acc = accumulate([{"x_ms": v} for v in values], warmup=0)["x_ms"]
    assert_close(acc, stage_stats(values, warmup=0))


def test_accumulator_warmup_is_per_stage() -> None:
    # decode every frame, density every 5th (0, 5, 10, 15): warm-up drops each series' first samples
    rows: list[dict[str, float | None]] = []
    for i in range(20):
        row: dict[str, float | None] = {"decode_ms": 1000.0 if i < 2 else float(i)}
        if i % 5 == 0:
            row["inference_model_csrnet_ms"] = 1000.0 if i < 10 else 100.0 + i
        rows.append(row)
    stats = accumulate(rows, warmup=2)
    assert (stats["decode_ms"].n, stats["decode_ms"].max) == (18, 19.0)
    assert stats["decode_ms"].mean == pytest.approx(np.mean(range(2, 20)))
    d = stats["inference_model_csrnet_ms"]
    assert (d.n, d.mean, d.max) == (2, 112.5, 115.0)  # its own series [1000, 1000, 110, 115]


def test_accumulator_skips_none_and_nan_and_they_use_no_warmup() -> None:
    rows: list[dict[str, float | None]] = [
        {"a_ms": None, "b_ms": 7.0},
        {"a_ms": math.nan},
        {"a_ms": 1000.0},  # the first real a_ms sample: warm-up
        {"a_ms": 2.0, "b_ms": math.nan},
        {"a_ms": 4.0, "b_ms": 3.0},
    ]
    stats = accumulate(rows, warmup=1)
    assert (stats["a_ms"].n, stats["a_ms"].mean, stats["a_ms"].max) == (2, 3.0, 4.0)
    assert (stats["b_ms"].n, stats["b_ms"].max) == (1, 3.0)
    exact = summarize(rows, warmup=1)  # type: ignore[arg-type]
    for stage in exact:
        assert_close(stats[stage], exact[stage], percentiles=False)


def test_accumulator_empty_and_warmup_only_stages() -> None:
    assert StageAccumulator().stats() == {}
    stats = accumulate([{"rare_ms": 1.0}, {"rare_ms": 2.0}, {"x_ms": 3.0}], warmup=2)
    assert list(stats) == ["rare_ms", "x_ms"]  # seen, but every sample was warm-up
    assert_close(stats["rare_ms"], stage_stats([], 0))
    assert_close(stats["x_ms"], stage_stats([], 0))
    with pytest.raises(ValueError, match="warmup"):
        StageAccumulator(warmup=-1)


def test_accumulator_add_takes_each_figure_under_its_own_frame() -> None:
    """An ASYNC_OVERLAY publication of frame 5 that reports the work of frames 3 and 4: each is a
    sample of its own frame, not one sum credited to frame 5."""
    t = StageTimings(
        frame_index=5,
        frame=FrameTimings(decode_ms=2.0, queue_depths={"yolo": 1}),
        branches=(
            BranchTimings("yolo", 3, {"preprocess_ms": 1.0, "run_ms": 6.0}),
            BranchTimings("density", 3, {"preprocess_ms": 4.0, "run_ms": 30.0}),
            BranchTimings("yolo", 4, {"preprocess_ms": 1.5, "run_ms": 7.0}),
        ),
        fusion_wait_ms=0.0,
        overlay_lag_ms={"yolo": 40.0, "density": 70.0},
        end_to_end_ms=0.5,
    )
    acc = StageAccumulator(warmup=0)
    acc.add(t)
    stats = acc.stats()
    assert stats["preprocess_ms"].n == 2  # frames 3 and 4
    assert stats["preprocess_ms"].max == 5.0  # frame 3: yolo + density
    assert stats["preprocess_ms"].mean == pytest.approx(3.25)
    assert (stats["yolo.run_ms"].n, stats["density.run_ms"].n) == (2, 1)
    assert (stats["decode_ms"].n, stats["overlay_lag_ms"].max, stats["queue_depth_yolo"].max) == (1, 70.0, 1.0)
    exact = summarize(t.by_frame().values(), warmup=0)
    assert list(stats) == list(exact)
    for stage in exact:
        assert_close(stats[stage], exact[stage], percentiles=False)


def test_accumulator_memory_does_not_grow_with_the_number_of_frames() -> None:
    """10^5 samples of a narrow distribution: the accumulator's memory after them is that after the
    first thousand (a list of the samples would be megabytes), and its stats are still right."""
    values = [float(v) for v in np.random.default_rng(5).normal(20.0, 0.5, 100_000)]
    acc = StageAccumulator(warmup=5)
    tracemalloc.start()
    try:
        for v in values[:1000]:
            acc.add_values({"x_ms": v})
        after_first, _ = tracemalloc.get_traced_memory()
        for v in values[1000:]:
            acc.add_values({"x_ms": v})
        after_all, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after_all - after_first < 32 * 1024, f"grew by {after_all - after_first} bytes over 99,000 samples"
    assert_close(acc.stats()["x_ms"], stage_stats(values, warmup=5))


SMALL_SERIES = [
    pytest.param([5.0], id="single"),
    pytest.param([2.0, 2.0, 2.0], id="constant"),
    pytest.param([float(v) for v in range(1, 101)], id="1-100"),
    pytest.param(
        [1.0, 2.0, 3.0, 4.0],
        id="four"
    ),
    pytest.param(
        [10.0] + [0.0] * 9,
        id="outlier"
    ),
]


@pytest.mark.parametrize("values", SMALL_SERIES)
def test_accumulator_percentiles_of_short_series_are_within_one_percent(values: list[float]) -> None:
    """The docstring's promise ("within 1 % of the exact percentile") on series as short as a
    density branch's in a short run: the same table as test_known_percentiles."""
    assert_close(accumulate([{"x_ms": v} for v in values], warmup=0)["x_ms"], stage_stats(values, warmup=0))
