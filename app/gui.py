"""The operator window: the same pipeline as headless, with the Qt front end as a sink."""

from __future__ import annotations

import argparse
import sys

from app.headless import load_config_with_overrides, run_pipeline
from pipeline.orchestrator import Orchestrator
from storage.export import export_counts
from storage.writer import SqliteWriter
from ui.bridge import LatestResultSink, PipelineStatus, RunState


class GuiController:
    """What the window may ask of the running pipeline (``ui.window.Controller``)."""

    def __init__(self, orch: Orchestrator, writer: SqliteWriter, db_path: str, run_id: int) -> None:
        self._orch = orch
        self._writer = writer
        self._db_path = db_path
        self._run_id = run_id

    def switch_strategy(self, name: str) -> None:
        self._orch.switch_strategy(name)

    def export(self, path: str) -> int:
        """The run's count history so far, including rows still queued for the database."""
        self._writer.flush()
        return export_counts(self._db_path, path, run_id=self._run_id)

    def stop(self) -> None:
        self._orch.stop()

    @property
    def status(self) -> PipelineStatus:
        st = self._orch.status
        state = {"FAILED": RunState.FAILED, "RUNNING": RunState.RUNNING, "IDLE": RunState.STARTING}.get(
            st.state, RunState.STOPPED
        )
        return PipelineStatus(state, st.error or "")


def run_gui(args: argparse.Namespace) -> int:
    import ui.app

    cfg = load_config_with_overrides(args)
    sink = LatestResultSink()

    def drive(orch: Orchestrator, run_id: int, writer: SqliteWriter) -> None:
        title = f"people-counter — {cfg.streams[0].uri}"
        controller = GuiController(orch, writer, cfg.storage.db_path, run_id)
        ui.app.run_window(controller, sink, title, strategy=cfg.fusion.strategy.value)

    code, _, run_id = run_pipeline(cfg, extra_sinks=(sink,), publish_images=True, drive=drive, progress=sys.stderr)
    print(f"stored: {cfg.storage.db_path} (run {run_id})")
    return code
