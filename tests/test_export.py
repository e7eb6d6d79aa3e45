"""Tests of storage.export: CSV and JSON contents, time filters, formats."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from config.errors import StorageError
from storage.export import export_counts
from storage.queries import COUNT_COLUMNS, count_history
from storage.writer import SqliteWriter
from tests.storage_builders import StepClock, make_result, no_new_threads

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_thread_left() -> Iterator[None]:
    with no_new_threads():
        yield


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Run 1: frames 0..9 published at 12:00:01..12:00:10 UTC; run 2: frames 0..2 at 12:00:13..15."""
    path = tmp_path / "people.db"
    with SqliteWriter(path, clock=StepClock(T0)) as writer:
        writer.start_run({}, {}, "a.mp4", "ASYNC_OVERLAY")  # 12:00:00
        for i in range(10):
            density = None if i % 5 else 20.0 + i
            writer.write(make_result(i, fused=float(i), detections=i, density=density, zones={"door": i / 2}))
        writer.end_run("completed")  # 12:00:11
        writer.start_run({}, {}, "b.mp4", "STRICT_SYNC")  # 12:00:12
        for i in range(3):
            writer.write(make_result(i, missing={"density": "late"} if i == 1 else None))
        writer.end_run("completed")
    return path


def at(second: int) -> str:
    return (T0 + timedelta(seconds=second)).isoformat()


def test_csv_contents(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "counts.csv"  # the folder is created
    assert export_counts(db, out, run_id=1) == 10
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == COUNT_COLUMNS
        rows = list(reader)
    assert len(rows) == 10
    assert rows[0] == {
        "run_id": "1", "frame_index": "0", "pts": "0.0", "stream_id": "cam0",
        "published_at": "2024-05-01T12:00:01.000000+00:00", "strategy": "ASYNC_OVERLAY", "policy": "hybrid",
        "fused_count": "0.0", "detection_count": "0", "confirmed_count": "", "density_count": "20.0",
        "unknown_reason": "", "counts_frame_index": "0", "counts_age_ms": "5.0", "partial": "False", "missing": "{}",
        "late_branches": "[]", "zones": '{"door":0.0}', "occupancy": "", "line_counts": "",
        "region_source": "[[0,1,0],[1,1,0]]", "region_counts": "[[1.0,1.0,1.0],[1.0,1.0,1.0]]", "calibration": "",
    }, "tracking off, no calibration: empty cells"
    assert rows[1]["density_count"] == "", "no density map: an empty cell"
    assert json.loads(rows[7]["zones"]) == {"door": 3.5}
    assert [int(r["frame_index"]) for r in rows] == list(range(10))
    assert not list(out.parent.glob(".*.tmp")), "no temporary file left"


def test_json_contents(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "counts.JSON"  # suffix case does not matter
    assert export_counts(db, out) == 13
    data = json.loads(out.read_text())
    assert data == count_history(db)
    assert [list(row) for row in data] == [list(COUNT_COLUMNS)] * 13
    partial = [r for r in data if r["partial"]]
    assert len(partial) == 1 and partial[0]["run_id"] == 2 and partial[0]["late_branches"] == ["density"]
    assert partial[0]["missing"] == {"density": "late"}
    assert data[1]["density_count"] is None
    assert out.read_text().count("\n") == 13 + 2, "one row per line"


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        (at(3), at(6), [(1, 2), (1, 3), (1, 4)]),  # since inclusive, until exclusive
        (at(10), None, [(1, 9), (2, 0), (2, 1), (2, 2)]),
        (None, at(2), [(1, 0)]),
        (T0 + timedelta(seconds=14), T0 + timedelta(seconds=15), [(2, 1)]),  # datetimes
        ("2024-05-01T14:00:14+02:00", "2024-05-01T14:00:15+02:00", [(2, 1)]),  # another offset, same instant
        ("2024-05-01T12:00:14Z", "2024-05-01 12:00:15", [(2, 1)]),  # Z, and naive = UTC
        (datetime(2024, 5, 1, 7, 0, 9, tzinfo=timezone(timedelta(hours=-5))), None, [(1, 8), (1, 9), (2, 0), (2, 1), (2, 2)]),
        (at(100), None, []),
    ],
)
def test_since_until(db: Path, tmp_path: Path, since: object, until: object, expected: list[tuple[int, int]]) -> None:
    out = tmp_path / "f.json"
    assert export_counts(db, out, since=since, until=until) == len(expected)  # type: ignore[arg-type]
    rows = json.loads(out.read_text())
    assert [(r["run_id"], r["frame_index"]) for r in rows] == expected


def test_filters_combine_with_run_id(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.csv"
    assert export_counts(db, out, since=at(5), run_id=2) == 3
    assert export_counts(db, out, since=at(5), until=at(8), run_id=1) == 3


def test_empty_exports(db: Path, tmp_path: Path) -> None:
    assert export_counts(db, tmp_path / "none.csv", run_id=99) == 0
    assert (tmp_path / "none.csv").read_text() == ",".join(COUNT_COLUMNS) + "\n"
    assert export_counts(db, tmp_path / "none.json", run_id=99) == 0
    assert json.loads((tmp_path / "none.json").read_text()) == []


@pytest.mark.parametrize("name", ["counts.xlsx", "counts", "counts.csv.gz"])
def test_unknown_suffix_is_a_clear_error(db: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(StorageError, match=r"unknown format .*\.csv or \*\.json") as info:
        export_counts(db, tmp_path / name)
    assert name in str(info.value)
    assert not (tmp_path / name).exists()


def test_bad_time_and_missing_database(db: Path, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="since: 'yesterday' is not an ISO-8601 datetime"):
        export_counts(db, tmp_path / "f.csv", since="yesterday")
    with pytest.raises(StorageError, match="no database at"):
        export_counts(tmp_path / "missing.db", tmp_path / "f.csv")
    assert not (tmp_path / "f.csv").exists()


def test_unwritable_output_is_a_storage_error(db: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StorageError, match="cannot write"):
        export_counts(db, tmp_path / "file" / "counts.csv")
