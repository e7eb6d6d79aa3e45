"""The camera list's screenshot (docs/img/cameras.png; run by ``docs/screenshots.sh cameras``).

Three cameras from one config: vtest twice (``lobby``, ``walkway``) and a camera whose file is
missing (``entrance``), which fails alone while the two others count; ``walkway`` is selected and
shown in full.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from PySide6.QtCore import QSettings
from screenshots import (  # docs/screenshots.py; it puts the project on sys.path
    ROOT,
    VTEST,
    laptop_config,
    open_window,
    shot,
    wait,
)


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="pc-shots-"))
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp / "settings"))
    data = laptop_config(tmp)
    if not (ROOT / data["models"]["person"]["path"]).exists():  # the 640 letterbox of the setup's detector
        data["models"]["person"]["path"] = ".cache/assets/models/person_yolov8s.dyn.onnx"
        data["preprocess"]["yolo_global"].update(width=640, height=640)
    s0 = dict(data["streams"][0], loop=True)
    data["streams"] = [
        dict(s0, id="lobby", uri=str(VTEST)),
        dict(s0, id="walkway", uri=str(VTEST)),
        dict(s0, id="entrance", uri=str(tmp / "camera-archive" / "entrance.mp4")),
    ]
    app, session, win = open_window(data, tmp / "cameras.yaml")
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
