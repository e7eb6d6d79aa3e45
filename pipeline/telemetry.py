"""Statistics of stage timings.

A publication's timings are a :class:`~pipeline.types.StageTimings`; its ``by_frame()`` gives
milliseconds keyed by the telemetry names of docs/ARCHITECTURE.md (``decode_ms``,
``preprocess_ms``, ``inference_model_<name>_ms``, ``fusion_wait_ms``, ``end_to_end_ms``, ...),
grouped by the frame each figure belongs to, which is also what SQLite stores. :func:`summarize`
turns per-frame dicts given in frame order (live, or read back with
``storage.queries.timing_rows``) into per-stage statistics; :class:`StageAccumulator` gives the
same statistics for a run of any length in bounded memory.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

STAT_FIELDS = ("n", "mean", "p50", "p90", "p95", "p99", "max")
"""Fields of :class:`StageStats`, in report order."""

DEFAULT_WARMUP = 5
"""Samples skipped at the start of every stage's series (``telemetry.warmup_frames``)."""

_PERCENTILES = (50.0, 90.0, 95.0, 99.0)


@dataclass(frozen=True, slots=True)
class StageStats:
    """Statistics of one stage's timings, milliseconds.

    ``n`` counts the samples after warm-up; with ``n == 0`` every other field is NaN. Percentiles
    use linear interpolation between closest ranks (NumPy's default ``method="linear"``).
    """

    n: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float

    def as_dict(self) -> dict[str, float]:
        """The fields as a plain dict (for JSON summaries); NaN stays NaN."""
        return asdict(self)


def stage_stats(values: Sequence[float], warmup: int = DEFAULT_WARMUP) -> StageStats:
    """Statistics of one series of timings (ms), skipping its first ``warmup`` values.

    A series no longer than ``warmup`` gives ``n=0`` and NaN everywhere else.
    """
    if warmup < 0:
        raise ValueError(f"warmup: expected >= 0, got {warmup}")
    arr = np.asarray(values[warmup:], dtype=np.float64)
    if arr.size == 0:
        nan = math.nan
        return StageStats(n=0, mean=nan, p50=nan, p90=nan, p95=nan, p99=nan, max=nan)
    p50, p90, p95, p99 = (float(p) for p in np.percentile(arr, _PERCENTILES))
    return StageStats(
        n=int(arr.size), mean=float(arr.mean()), p50=p50, p90=p90, p95=p95, p99=p99, max=float(arr.max())
    )


def _is_missing(value: float | None) -> bool:
    # SQLite stores NaN as NULL; treating both as "absent" keeps memory and SQLite stats identical.
    return value is None or (isinstance(value, float) and math.isnan(value))


def summarize(rows: Iterable[Mapping[str, float]], warmup: int = DEFAULT_WARMUP) -> dict[str, StageStats]:
    """Per-stage statistics over per-frame timing dicts given in frame order.

    A stage missing from a frame (density runs every 5th frame; a branch that failed) is absent
    from that stage's series, as is a ``None`` or NaN value. Warm-up is applied to each stage's
    own series, so a stage sampled every 5th frame skips its first ``warmup`` samples, not its
    first ``warmup`` frames. Stages appear in the order they were first seen.
    """
    series: dict[str, list[float]] = {}
    for row in rows:
        for name, value in row.items():
            if _is_missing(value):
                continue
            series.setdefault(name, []).append(float(value))
    return {name: stage_stats(values, warmup) for name, values in series.items()}


def _fmt_ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def format_table(stats: Mapping[str, StageStats]) -> str:
    """An aligned text table: stage, N, mean, p50, p90, p95, max (milliseconds), one stage a line."""
    header = ("stage", "N", "mean ms", "p50 ms", "p90 ms", "p95 ms", "max ms")
    body = [
        (name, str(s.n), _fmt_ms(s.mean), _fmt_ms(s.p50), _fmt_ms(s.p90), _fmt_ms(s.p95), _fmt_ms(s.max))
        for name, s in stats.items()
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(w) for cell, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in body)])


class StageAccumulator:
    """Per-stage statistics of a run of any length, in bounded memory (a long run's summary).

    ``add(timings)`` takes each publication's :class:`~pipeline.types.StageTimings`, grouped by the
    frame each figure belongs to, as SQLite stores them. ``n``, ``mean`` and ``max`` are exact;
    percentiles come from a log-spaced histogram (bins 1 % wide: within 1 % of the exact
    percentile). Warm-up skips the first ``warmup`` samples of each stage's own series, as
    :func:`summarize` does. Memory grows with the number of stages and of occupied bins (at most
    about 2,800 per stage from 1 µs to 10^7 ms), never with the number of frames.
    """

    _LOG_BASE = math.log(1.01)
    _FLOOR = 1e-3

    def __init__(self, warmup: int = DEFAULT_WARMUP) -> None:
        if warmup < 0:
            raise ValueError(f"warmup: expected >= 0, got {warmup}")
        self.warmup = warmup
        self._seen: dict[str, int] = {}
        self._n: dict[str, int] = {}
        self._sum: dict[str, float] = {}
        self._max: dict[str, float] = {}
        self._bins: dict[str, Counter[int]] = {}

    def add_values(self, values: Mapping[str, float]) -> None:
        """One frame's figures by telemetry name (ms); None / NaN are absent."""
        for name, value in values.items():
            if _is_missing(value):
                continue
            seen = self._seen.get(name, 0)
            self._seen[name] = seen + 1
            if seen < self.warmup:
                continue
            v = float(value)
            self._n[name] = self._n.get(name, 0) + 1
            self._sum[name] = self._sum.get(name, 0.0) + v
            self._max[name] = max(self._max.get(name, -math.inf), v)
            self._bins.setdefault(name, Counter())[self._bin(v)] += 1

    def add(self, timings: Any) -> None:
        """A publication's ``StageTimings``: every figure, under the frame it belongs to."""
        for values in timings.by_frame().values():
            self.add_values(values)

    def _bin(self, v: float) -> int:
        if v <= self._FLOOR:
            return -1 if v < 0 else 0
        return 1 + int(math.log(v / self._FLOOR) / self._LOG_BASE)

    def _value(self, b: int) -> float:
        if b <= 0:
            return 0.0 if b == 0 else -self._FLOOR
        lo = self._FLOOR * math.exp((b - 1) * self._LOG_BASE)
        return lo * math.sqrt(1.01)

    def _at_rank(self, bins: list[tuple[int, int]], rank: int, vmax: float) -> float:
        seen = 0
        for b, c in bins:
            seen += c
            if seen > rank:
                return min(self._value(b), vmax)
        return vmax

    def _percentile(self, name: str, q: float) -> float:
        # Linear interpolation between the closest ranks, as stage_stats (NumPy's "linear").
        bins = sorted(self._bins[name].items())
        n, vmax = self._n[name], self._max[name]
        rank = q / 100.0 * (n - 1)
        lo = math.floor(rank)
        v0 = self._at_rank(bins, lo, vmax)
        if lo + 1 >= n or rank == lo:
            return v0
        v1 = self._at_rank(bins, lo + 1, vmax)
        return v0 + (v1 - v0) * (rank - lo)

    def stats(self) -> dict[str, StageStats]:
        """Per-stage statistics, stages in the order they were first seen."""
        out: dict[str, StageStats] = {}
        for name in self._seen:
            n = self._n.get(name, 0)
            if n == 0:
                out[name] = stage_stats([], 0)
                continue
            p50, p90, p95, p99 = (self._percentile(name, q) for q in _PERCENTILES)
            out[name] = StageStats(n=n, mean=self._sum[name] / n, p50=p50, p90=p90, p95=p95, p99=p99, max=self._max[name])
        return out
