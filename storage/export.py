"""Export per-frame counts, line crossings, zone visits or static tracks to CSV or JSON.

What is exported (``what``) and its columns (CSV header, JSON keys, in order):

- ``counts`` (the default): :data:`storage.queries.COUNT_COLUMNS`, one row per frame. An unknown
  count is an empty CSV cell and a JSON null, never 0, with its ``unknown_reason``.
- ``crossings``: :data:`storage.queries.CROSSING_COLUMNS`, one row per line crossing.
- ``visits``: :data:`storage.queries.VISIT_COLUMNS`, one row per zone visit, with its dwell.
- ``static``: :data:`storage.queries.STATIC_COLUMNS`, one row per track flagged static.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from config.errors import StorageError
from storage import queries

Query = Callable[..., list[dict[str, Any]]]

EXPORTS: dict[str, tuple[tuple[str, ...], Query]] = {
    "counts": (queries.COUNT_COLUMNS, queries.count_history),
    "crossings": (queries.CROSSING_COLUMNS, queries.crossings),
    "visits": (queries.VISIT_COLUMNS, queries.zone_visits),
    "static": (queries.STATIC_COLUMNS, queries.static_tracks),
}
"""``what`` -> (columns, the query giving the rows: ``(db, run_id=, since=, until=)``)."""


def _write_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str], f: Any) -> None:
    writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # Lists and dicts (missing, late_branches, zones, occupancy, xyxy) go into one cell as JSON;
        # None (an unknown count, no reason, no counted frame) is an empty cell.
        writer.writerow(
            {k: json.dumps(v, separators=(",", ":")) if isinstance(v, list | dict) else v for k, v in row.items()}
        )


def _write_json(rows: Sequence[dict[str, Any]], columns: Sequence[str], f: Any) -> None:
    # One row per line: valid JSON that still diffs and greps line by line.
    f.write("[\n")
    f.write(",\n".join(json.dumps(row, separators=(",", ":")) for row in rows))
    f.write("\n]\n" if rows else "]\n")


_WRITERS: dict[str, Callable[[Sequence[dict[str, Any]], Sequence[str], Any], None]] = {
    ".csv": _write_csv,
    ".json": _write_json,
}


def export(
    db_path: str | Path,
    out_path: str | Path,
    what: str = "counts",
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    run_id: int | None = None,
) -> int:
    """Write the rows of ``what`` (a key of :data:`EXPORTS`) to ``out_path``; returns rows written.

    Everything stored so far (an export during a run is a consistent snapshot of the committed
    batches), in the query's order (by run, then frame). The format follows the suffix: ``.csv``
    (header row; lists and dicts as JSON text; an empty cell for an unknown count or another
    absent value) or ``.json`` (a list of objects, null for absent values). ``since`` (inclusive)
    and ``until`` (exclusive) filter on ``published_at`` (ISO-8601, naive = UTC; static tracks:
    those static at some time between). The file appears complete or not at all. Raises
    ``StorageError`` for an unknown ``what`` or suffix, a bad time, a database that cannot be read
    or a file that cannot be written.
    """
    out = Path(out_path)
    if what not in EXPORTS:
        raise StorageError(f"cannot export {what!r}: choose one of {', '.join(EXPORTS)}")
    write = _WRITERS.get(out.suffix.lower())
    if write is None:
        raise StorageError(
            f"cannot export to {out}: unknown format {out.suffix or '(no suffix)'!r}; name the file *.csv or *.json"
        )
    columns, query = EXPORTS[what]
    rows = query(db_path, run_id=run_id, since=since, until=until)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8", newline="") as f:
            write(rows, columns, f)
        os.replace(tmp, out)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(f"cannot write {out}: {e.strerror or e}") from e
    return len(rows)


def export_counts(
    db_path: str | Path,
    out_path: str | Path,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    run_id: int | None = None,
) -> int:
    """Write the per-frame counts of :func:`storage.queries.count_history` to ``out_path``; returns
    rows written (:func:`export` with ``what="counts"``; ``missing``, ``late_branches``, ``zones``,
    ``occupancy`` and ``line_counts`` as JSON text in a CSV)."""
    return export(db_path, out_path, "counts", since=since, until=until, run_id=run_id)
