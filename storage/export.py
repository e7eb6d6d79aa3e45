"""Export per-frame counts to CSV or JSON.

Columns (CSV header, JSON keys) are :data:`storage.queries.COUNT_COLUMNS`, in that order. An
unknown count is an empty CSV cell and a JSON null, never 0, with its ``unknown_reason``.
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
from storage.queries import COUNT_COLUMNS, count_history


def _write_csv(rows: Sequence[dict[str, Any]], f: Any) -> None:
    writer = csv.DictWriter(f, fieldnames=COUNT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # Lists and dicts (missing, late_branches, zones) go into one cell as JSON; None (an unknown
        # count, no reason, no counted frame) is an empty cell.
        writer.writerow(
            {k: json.dumps(v, separators=(",", ":")) if isinstance(v, list | dict) else v for k, v in row.items()}
        )


def _write_json(rows: Sequence[dict[str, Any]], f: Any) -> None:
    # One row per line: valid JSON that still diffs and greps line by line.
    f.write("[\n")
    f.write(",\n".join(json.dumps(row, separators=(",", ":")) for row in rows))
    f.write("\n]\n" if rows else "]\n")


_WRITERS: dict[str, Callable[[Sequence[dict[str, Any]], Any], None]] = {".csv": _write_csv, ".json": _write_json}


def export_counts(
    db_path: str | Path,
    out_path: str | Path,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    run_id: int | None = None,
) -> int:
    """Write the per-frame counts of :func:`storage.queries.count_history` to ``out_path``; returns rows written.

    Every frame stored so far (an export during a run is a consistent snapshot of the committed
    batches), ordered by run, then frame. The format follows the suffix: ``.csv`` (header row;
    ``missing``, ``late_branches`` and ``zones`` as JSON text; an empty cell for an unknown count
    or another absent value) or ``.json`` (a list of objects, null for absent values). ``since``
    (inclusive) and ``until`` (exclusive) filter on ``published_at`` (ISO-8601, naive = UTC).
    The file appears complete or not at all. Raises ``StorageError`` for an unknown suffix, a
    bad time, or a database that cannot be read or a file that cannot be written.
    """
    out = Path(out_path)
    write = _WRITERS.get(out.suffix.lower())
    if write is None:
        raise StorageError(
            f"cannot export to {out}: unknown format {out.suffix or '(no suffix)'!r}; name the file *.csv or *.json"
        )
    rows = count_history(db_path, run_id=run_id, since=since, until=until)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8", newline="") as f:
            write(rows, f)
        os.replace(tmp, out)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(f"cannot write {out}: {e.strerror or e}") from e
    return len(rows)
