"""Stage timings, their statistics, and drop counters.

Timings are milliseconds keyed by the telemetry names of ARCHITECTURE.md (``decode_ms``,
``preprocess_ms``, ``inference_model_<name>_ms``, ``fusion_wait_ms``, ``end_to_end_ms``, ...).
One frame's timings are a ``Mapping[str, float]``; a run is a sequence of them in frame order.
:func:`summarize` turns such a sequence into per-stage statistics, and it is the one function used
for both live rows (``FusedResult.timings``) and rows read back from SQLite
(``storage.queries.timing_rows``), so the two can never disagree.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import TracebackType

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


class StageTimer:
    """Context manager that stores the elapsed time of its block, in ms, as ``timings[name]``.

    ``name`` is the full telemetry name (``"decode_ms"``). The time is written also when the
    block raises; a later timer with the same name overwrites it. ``ms`` holds the value after
    the block.
    """

    __slots__ = ("_start", "ms", "name", "timings")

    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings = timings
        self.name = name
        self.ms = math.nan
        self._start = 0.0

    def __enter__(self) -> StageTimer:
        self._start = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.ms = (time.perf_counter() - self._start) * 1000.0
        self.timings[self.name] = self.ms


def timed(timings: dict[str, float], name: str) -> StageTimer:
    """``with timed(timings, "decode_ms"): ...`` — time a block into ``timings`` (ms)."""
    return StageTimer(timings, name)


class DropCounter:
    """Thread-safe counts of dropped items, keyed by (queue, reason).

    Every bounded queue that drops counts here (``drops.record("ui", "latest_wins")``);
    :meth:`snapshot` gives ``{"queue/reason": count}`` for reports and the UI.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def record(self, queue: str, reason: str, n: int = 1) -> None:
        """Count ``n`` items dropped from ``queue`` for ``reason``."""
        if n < 0:
            raise ValueError(f"n: expected >= 0, got {n}")
        with self._lock:
            self._counts[(queue, reason)] += n

    def snapshot(self) -> dict[str, int]:
        """A copy of the counts, ``{"queue/reason": count}``, sorted by key."""
        with self._lock:
            items = sorted(self._counts.items())
        return {f"{queue}/{reason}": count for (queue, reason), count in items}

    def total(self) -> int:
        """All drops, every queue and reason."""
        with self._lock:
            return sum(self._counts.values())
