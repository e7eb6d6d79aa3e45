"""Running the window: the one entry point ``app/`` calls to show the GUI.

SIGINT (Ctrl-C in the terminal) and SIGTERM close the window as its Quit does (the run is
stopped, stored as ``interrupted`` / ``terminated``, flushed) and the event loop returns 130 /
143. Python runs signal handlers only between bytecodes, which it does not reach while Qt waits
in its event loop: ``signal.set_wakeup_fd`` writes the signal number to a socket that a
``QSocketNotifier`` watches, so the loop wakes and the handler runs at once.

While the loop runs, Python's cyclic garbage collector runs only in the GUI thread
(:mod:`ui.gc_guard`): the pipeline's threads never free a Qt object.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from types import FrameType
from typing import Any

from PySide6.QtCore import QEventLoop, QSocketNotifier
from PySide6.QtWidgets import QApplication

from ui.bridge import RunRequest
from ui.gc_guard import collect_in_gui_thread
from ui.qt_fixes import apply_qt_workarounds
from ui.window import Controller, MainWindow

SIGNAL_EXIT = {signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated", 143)}


class SignalBridge:
    """SIGINT / SIGTERM into the Qt loop (see the module docstring). A context manager; main thread only."""

    def __init__(self, on_signal: Any) -> None:
        self._on_signal = on_signal
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._old_fd = -1
        self._rsock: socket.socket | None = None
        self._wsock: socket.socket | None = None
        self._notifier: QSocketNotifier | None = None

    def __enter__(self) -> SignalBridge:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self._old_fd = signal.set_wakeup_fd(self._wsock.fileno())
        self._notifier = QSocketNotifier(self._rsock.fileno(), QSocketNotifier.Type.Read)
        self._notifier.activated.connect(self._drain)
        for sig in SIGNAL_EXIT:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _drain(self, *_args: object) -> None:
        try:
            while self._rsock is not None and self._rsock.recv(64):
                pass
        except BlockingIOError:
            pass

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self.received is None:
            self.received = sig
        self._on_signal(SIGNAL_EXIT[self.received][0])

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._wsock is not None:
            signal.set_wakeup_fd(self._old_fd)
        if self._notifier is not None:
            self._notifier.setEnabled(False)
        for s in (self._rsock, self._wsock):
            if s is not None:
                s.close()

    @property
    def exit_code(self) -> int | None:
        return None if self.received is None else SIGNAL_EXIT[self.received][1]


def run_window(controller: Controller, request: RunRequest | None, title: str = "people-counter") -> int:
    """Show a :class:`MainWindow` for ``controller`` (starting ``request``) and run the Qt loop.

    Creates the ``QApplication`` unless one exists. Returns once the window has closed and the
    controller is idle (stopped and flushed): 0, or 130 / 143 after SIGINT / SIGTERM.
    """
    apply_qt_workarounds()
    existing = QApplication.instance()
    if existing is not None and not isinstance(existing, QApplication):
        raise RuntimeError(f"a {type(existing).__name__} exists; the window needs a QApplication")
    qt_app = existing if existing is not None else QApplication(sys.argv[:1])
    window = MainWindow(controller, request, title)
    with SignalBridge(window.request_close) as signals, collect_in_gui_thread():
        window.show()
        if existing is None:
            qt_app.setApplicationName("people-counter")
            window.closed.connect(qt_app.quit)
            code = int(qt_app.exec())
        else:
            # Someone else's application (a test, an embedding app): a loop of our own, so that
            # closing this window does not quit theirs.
            loop = QEventLoop()
            window.closed.connect(loop.quit)
            quit_on_close = qt_app.quitOnLastWindowClosed()
            qt_app.setQuitOnLastWindowClosed(False)
            try:
                code = int(loop.exec())
            finally:
                qt_app.setQuitOnLastWindowClosed(quit_on_close)
    if window.isVisible():
        window.close()
    return signals.exit_code if signals.exit_code is not None else code
