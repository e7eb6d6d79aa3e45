"""The GUI's composition: the window drives a real pipeline run (vtest, the demo detector, SQLite);
the window's own behaviour is tested in test_ui.py."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VTEST = ROOT / ".cache/assets/video/vtest.avi"
DETECTOR = ROOT / ".cache/assets/models/person_yolov8s.onnx"
pytestmark = pytest.mark.skipif(not (VTEST.exists() and DETECTOR.exists()), reason="demo assets not fetched")


def test_window_runs_the_pipeline_switches_strategy_and_exports(tmp_path: Path, qtbot, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import app.gui as gui
    import ui.app

    data = yaml.safe_load((ROOT / "config/pipeline.yaml").read_text())
    data["streams"][0]["uri"] = str(VTEST)
    data["models"]["person"]["path"] = str(DETECTOR)
    data["branches"]["yolo_tiles"]["enabled"] = False
    data["branches"]["density"]["enabled"] = False
    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    seen: dict[str, object] = {}

    def fake_run_window(controller, sink, title, *, strategy=None):  # type: ignore[no-untyped-def]
        """Stands in for the Qt event loop only: does what an operator would, then closes."""
        controller.switch_strategy("RAW_STREAM_WITH_METADATA")  # counts then come as metadata records
        qtbot.waitUntil(lambda: sink.stats.written >= 6, timeout=60000)  # every frame reached the window
        qtbot.waitUntil(lambda: str(controller.status.state).endswith("STOPPED"), timeout=60000)  # the file ended
        seen["status"] = controller.status.state
        seen["rows"] = controller.export(str(tmp_path / "counts.csv"))
        seen["title"] = title
        controller.stop()
        return 0

    monkeypatch.setattr(ui.app, "run_window", fake_run_window)
    args = argparse.Namespace(config=str(cfg_path), source=None, max_frames=6, fusion=None, db=str(tmp_path / "gui.db"))
    assert gui.run_gui(args) == 0
    assert str(VTEST) in str(seen["title"])
    assert (tmp_path / "counts.csv").exists()
    assert seen["rows"] == 6  # every frame's count row, none lost in the writer's queue
    lines = (tmp_path / "counts.csv").read_text().splitlines()
    assert len(lines) == 7 and "RAW_STREAM_WITH_METADATA" in lines[-1]
    with sqlite3.connect(tmp_path / "gui.db") as con:  # the operator's switch is in the event log
        kinds = [k for (k,) in con.execute("select kind from events")]
    assert "strategy_switch" in kinds
