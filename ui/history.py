"""History: the stored runs, one run's counts over time, and exports of a run or a time range.

Every database read and export runs off the UI thread (:func:`ui.tasks.run_in_background`). The
run table shows, per run, its start, end, status, source, strategy, frames, and the mean and
maximum people over its KNOWN counts with how many were unknown (``storage.queries.count_summary``:
an unknown count is never taken as 0). The chart of a run plots the fused count against the time
each frame was published: unknown counts are gaps, and the strip under it marks them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QDateTime, Qt, QTimeZone, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDateTimeEdit,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from storage.export import export_counts
from storage.queries import count_history, count_summary, runs
from ui.charts import UNKNOWN_BRUSH, nice_top
from ui.qt_fixes import apply_qt_workarounds
from ui.settings import last_folder, remember_folder
from ui.tasks import run_in_background

COLUMNS = ("run", "started", "ended", "status", "source", "strategy", "frames", "mean people", "max people", "unknown")


def load_runs(db_path: str) -> list[dict[str, Any]]:
    """The run table's rows, newest first: ``storage.queries.runs`` with ``count_summary`` per run."""
    rows = []
    for r in reversed(runs(db_path)):
        s = count_summary(db_path, run_id=r["id"])
        rows.append({
            "id": r["id"], "started_at": r["started_at"], "ended_at": r["ended_at"], "status": r["status"],
            "source": r["source"], "strategy": r["strategy"], "frames": s["frames"], "known": s["known"],
            "unknown": s["unknown"], "mean": s["mean_fused"], "max": s["max_fused"],
        })  # fmt: skip
    return rows


def _epoch(ts: str | None) -> float:
    return datetime.fromisoformat(ts).timestamp() if ts else math.nan


def history_series(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(t, fused) of ``count_history`` rows: epoch seconds, NaN where the count is unknown."""
    t = np.array([_epoch(r["published_at"]) for r in rows], np.float64)
    y = np.array([math.nan if r["fused_count"] is None else float(r["fused_count"]) for r in rows], np.float64)
    return t, y


def _short_time(ts: str | None) -> str:
    if not ts:
        return "—"
    return datetime.fromisoformat(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _qdt(ts: str | None) -> QDateTime:
    if not ts:
        return QDateTime.currentDateTime()
    return QDateTime.fromMSecsSinceEpoch(int(_epoch(ts) * 1000), QTimeZone.systemTimeZone())


class HistoryPanel(QWidget):
    """The History tab. ``db_path()`` gives the database to read (the current run's)."""

    loaded = Signal()
    exported = Signal(str, int)
    failed = Signal(str)

    def __init__(self, db_path: Callable[[], str | None], parent: QWidget | None = None) -> None:
        apply_qt_workarounds()
        super().__init__(parent)
        self._db_path = db_path
        self.rows: list[dict[str, Any]] = []
        self.series: tuple[np.ndarray, np.ndarray] | None = None
        self.loading = False

        self.db_label = QLabel()
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("Read the stored runs again (F5)")
        self.refresh_button.clicked.connect(self.refresh)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._on_selected)

        self.plot_widget = pg.PlotWidget(axisItems={"bottom": pg.DateAxisItem()})
        self.plot_widget.setBackground("#202020")
        self.plot = self.plot_widget.getPlotItem()
        self.plot.setLabel("left", "people (fused)")
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        self.plot.setMouseEnabled(x=True, y=False)
        self.curve = self.plot.plot([], [], pen=pg.mkPen("w", width=2), connect="finite", name="fused")
        self.unknown_marks = pg.ScatterPlotItem(size=6, symbol="s", brush=pg.mkBrush(UNKNOWN_BRUSH), pen=None)
        self.plot.addItem(self.unknown_marks)
        self.plot_title = QLabel("Select a run to see its counts over time.")

        self.since_edit = QDateTimeEdit()
        self.until_edit = QDateTimeEdit()
        for e in (self.since_edit, self.until_edit):
            e.setCalendarPopup(True)
            e.setDisplayFormat("yyyy-MM-dd HH:mm:ss")
        self.export_run_button = QPushButton("Export run…")
        self.export_run_button.setToolTip("Write the selected run's per-frame counts to CSV or JSON")
        self.export_run_button.clicked.connect(self._on_export_run)
        self.export_range_button = QPushButton("Export range…")
        self.export_range_button.setToolTip("Write every run's counts published between the two times to CSV or JSON")
        self.export_range_button.clicked.connect(self._on_export_range)
        self.status = QLabel()

        top = QHBoxLayout()
        top.addWidget(self.db_label, 1)
        top.addWidget(self.refresh_button)
        bottom = QHBoxLayout()
        bottom.addWidget(self.export_run_button)
        bottom.addSpacing(20)
        bottom.addWidget(QLabel("from"))
        bottom.addWidget(self.since_edit)
        bottom.addWidget(QLabel("to"))
        bottom.addWidget(self.until_edit)
        bottom.addWidget(self.export_range_button)
        bottom.addStretch(1)
        bottom.addWidget(self.status)
        lower = QWidget()
        lower_layout = QVBoxLayout(lower)
        lower_layout.setContentsMargins(0, 0, 0, 0)
        lower_layout.addWidget(self.plot_title)
        lower_layout.addWidget(self.plot_widget, 1)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(lower)
        split.setSizes([300, 400])
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(split, 1)
        layout.addLayout(bottom)

    # -- loading -------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the runs again, off the UI thread."""
        db = self._db_path()
        self.db_label.setText(f"database: {db}" if db else "no database yet: start a run (its config names the database)")
        if not db:
            return
        self.loading = True
        self.status.setText("reading…")
        run_in_background(lambda: load_runs(db), self._on_runs, self._on_error, name="pc-ui-history")

    def _on_runs(self, rows: list[dict[str, Any]]) -> None:
        selected = self.selected_run()
        self.rows = rows
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            mean = "—" if r["mean"] is None else f"{r['mean']:.1f}"
            peak = "—" if r["max"] is None else f"{r['max']:.1f}"
            cells = [str(r["id"]), _short_time(r["started_at"]), _short_time(r["ended_at"]), r["status"], r["source"],
                     r["strategy"], str(r["frames"]), mean, peak, str(r["unknown"])]  # fmt: skip
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if j in (0, 6, 7, 8, 9):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if j == 4:
                    item.setToolTip(text)
                self.table.setItem(i, j, item)
        self.status.setText(f"{len(rows)} runs")
        self.loading = False
        if rows:
            index = next((i for i, r in enumerate(rows) if r["id"] == selected), 0)
            self.table.selectRow(index)
        self.loaded.emit()

    def _on_error(self, exc: BaseException) -> None:
        self.loading = False
        self.status.setText(f"error: {exc}")
        self.failed.emit(str(exc))

    def selected_run(self) -> int | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not rows or rows[0].row() >= len(self.rows):
            return None
        return int(self.rows[rows[0].row()]["id"])

    def select_run(self, run_id: int) -> None:
        for i, r in enumerate(self.rows):
            if r["id"] == run_id:
                self.table.selectRow(i)
                return
        raise KeyError(f"run {run_id} is not in the table")

    def _on_selected(self) -> None:
        run_id = self.selected_run()
        db = self._db_path()
        if run_id is None or not db:
            return
        row = next(r for r in self.rows if r["id"] == run_id)
        self.since_edit.setDateTime(_qdt(row["started_at"]))
        self.until_edit.setDateTime(_qdt(row["ended_at"]).addSecs(1))
        self.loading = True
        run_in_background(lambda: count_history(db, run_id=run_id), lambda rows: self._on_history(run_id, rows),
                          self._on_error, name="pc-ui-history")  # fmt: skip

    def _on_history(self, run_id: int, rows: list[dict[str, Any]]) -> None:
        t, y = history_series(rows)
        self.series = (t, y)
        self.curve.setData(t, y, connect="finite")
        unknown = np.isnan(y)
        self.unknown_marks.setData(t[unknown], np.zeros(int(unknown.sum())))
        self.plot.setYRange(0, nice_top([y]), padding=0)
        if len(t):
            self.plot.setXRange(float(np.nanmin(t)), float(np.nanmax(t)) + 1, padding=0.02)
        n_unknown = int(unknown.sum())
        self.plot_title.setText(
            f"run {run_id}: {len(rows)} frames, {len(rows) - n_unknown} counted, {n_unknown} unknown "
            "(gaps in the line; amber marks on the axis)"
        )
        self.loading = False
        self.loaded.emit()

    # -- exports -------------------------------------------------------------------------------

    def _ask_path(self, suggested: str) -> str:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export counts", f"{last_folder('export')}/{suggested}", "CSV (*.csv);;JSON (*.json);;All files (*)"
        )
        return path

    def _on_export_run(self) -> None:
        run_id = self.selected_run()
        if run_id is None:
            self.status.setText("select a run first")
            return
        path = self._ask_path(f"run{run_id}_counts.csv")
        if path:
            self.export(path, run_id=run_id)

    def _on_export_range(self) -> None:
        path = self._ask_path("counts_range.csv")
        if path:
            self.export(path, since=self.since_iso(), until=self.until_iso())

    def since_iso(self) -> str:
        return self.since_edit.dateTime().toUTC().toString(Qt.DateFormat.ISODateWithMs)

    def until_iso(self) -> str:
        return self.until_edit.dateTime().toUTC().toString(Qt.DateFormat.ISODateWithMs)

    def export(self, path: str, *, run_id: int | None = None, since: str | None = None, until: str | None = None) -> None:
        """Export off the UI thread; ``exported(path, rows)`` or ``failed(message)`` follows."""
        db = self._db_path()
        if not db:
            self.failed.emit("no database to export from")
            return
        remember_folder("export", path)
        self.status.setText(f"exporting to {path}…")

        def done(n: int) -> None:
            self.status.setText(f"exported {n} rows to {path}")
            self.exported.emit(path, n)

        run_in_background(lambda: export_counts(db, path, since=since, until=until, run_id=run_id), done,
                          self._on_error, name="pc-ui-export")  # fmt: skip
