"""The camera list's screenshot (docs/img/cameras.png; run by ``docs/screenshots.sh cameras``).

Three cameras from one config: vtest twice (``lobby``, ``walkway``) and a camera whose file is
missing (``entrance``), which fails alone while the two others count; ``walkway`` is selected and
shown in full.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import yaml
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication
from screenshots import OUT, ROOT, VTEST, shot, wait  # docs/screenshots.py; it puts the project on sys.path

from app.gui import GuiSession
from ui.window import MainWindow


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="pc-shots-"))
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp / "settings"))
    data = yaml.safe_load((ROOT / "config/laptop.yaml").read_text())
    if not (ROOT / data["models"]["person"]["path"]).exists():  # the 640 letterbox of the setup's detector
        data["models"]["person"]["path"] = ".cache/assets/models/person_yolov8s.dyn.onnx"
        data["preprocess"]["yolo_global"].update(width=640, height=640)
    data["storage"]["db_path"] = str(tmp / "shots.db")
    s0 = dict(data["streams"][0], loop=True)
    data["streams"] = [
        dict(s0, id="lobby", uri=str(VTEST)),
        dict(s0, id="walkway", uri=str(VTEST)),
        dict(s0, id="entrance", uri=str(tmp / "camera-archive" / "entrance.mp4")),
    ]
    cfg = tmp / "cameras.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    app = QApplication(sys.argv[:1])
    session = GuiSession()
    win = MainWindow(session, None, "people-counter")
    win._config_path = str(cfg)
    win._load_branches(str(cfg))
    win.resize(1600, 950)
    win.show()
    OUT.mkdir(parents=True, exist_ok=True)
    win.start_run()
    wait(app, lambda: len(win.camera_ids) == 3)
    win.select_camera("walkway")
    tiles = win.camera_strip.tiles

    def ready() -> bool:
        counted = all(tiles[c].count_text.startswith("people ") and "unknown" not in tiles[c].count_text
                      for c in ("lobby", "walkway"))  # fmt: skip
        pictures = all(not tiles[c].picture.pixmap().isNull() for c in ("lobby", "walkway"))
        return counted and pictures and tiles["entrance"].state_word == "failed" and session.sink is not None \
            and session.sink.stats.written >= 40

    wait(app, ready, timeout=240)
    shot(app, win, "cameras")
    win.close()
    wait(app, lambda: not win.isVisible(), 10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
