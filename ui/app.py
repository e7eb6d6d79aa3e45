"""Running the window: the one entry point ``app/`` calls to show the GUI."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

from PySide6.QtWidgets import QApplication

from ui.bridge import LatestResultSink
from ui.qt_fixes import apply_qt_workarounds
from ui.window import Controller, MainWindow


def run_window(controller: Controller, sink: LatestResultSink, title: str, *, strategy: str | None = None) -> int:
    """Show a :class:`MainWindow` for ``controller`` and ``sink`` and run the Qt event loop.

    Creates the ``QApplication`` unless one exists. Returns the event loop's exit code once the
    window is closed (Ctrl-C in the terminal closes it too); ``controller.stop()`` has been called
    by then. The caller owns the pipeline's start and the sink's registration with it.
    """
    apply_qt_workarounds()
    existing = QApplication.instance()
    if existing is not None and not isinstance(existing, QApplication):
        raise RuntimeError(f"a {type(existing).__name__} exists; the window needs a QApplication")
    qt_app = existing if existing is not None else QApplication(sys.argv[:1])
    window = MainWindow(controller, sink, title, strategy=strategy)
    window.show()

    def close_on_sigint(signum: int, frame: FrameType | None) -> None:
        window.close()

    # The window's poll timer returns to Python ~30 times a second, so the handler runs promptly.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, close_on_sigint) if in_main else None
    try:
        code = qt_app.exec()
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
        window.close()  # stops the controller if the loop ended some other way (app.quit())
    return int(code)
