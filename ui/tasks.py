"""Work off the UI thread: run a function on a Python thread, get its result back as a Qt signal.

An export or a history query takes from milliseconds to seconds (a big database); the window
must keep turning meanwhile. :func:`run_in_background` runs ``fn`` on a named daemon thread
(``pc-ui-task``) and delivers ``on_done(result)`` or ``on_error(exc)`` on the UI thread (a queued
signal), never both. :func:`pending_tasks` says how many are still running (the window waits for
them before it closes, so no thread outlives it).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal, Slot

from ui.qt_fixes import apply_qt_workarounds

log = logging.getLogger("people_counter.ui")

_lock = threading.Lock()
_running: set[threading.Thread] = set()


class _Dispatcher(QObject):
    """One per process, made by the GUI thread and never deleted: a worker thread only ever emits
    on it. A ``QObject`` per task would be freed by whichever thread drops the last reference to
    it, often the worker at its very end, and deleting a ``QObject`` outside its own thread is
    undefined in Qt (a crash, or a deadlock with the GUI thread inside C++)."""

    deliver = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self.deliver.connect(self._call, Qt.ConnectionType.QueuedConnection)  # receiver: this, in the GUI thread

    @Slot(object)
    def _call(self, fn: Callable[[], None]) -> None:
        fn()


_dispatcher: _Dispatcher | None = None


def _get_dispatcher() -> _Dispatcher:
    global _dispatcher
    if _dispatcher is None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("run_in_background: call it from the GUI thread first")
        _dispatcher = _Dispatcher()
    return _dispatcher


def run_in_background(
    fn: Callable[[], Any],
    on_done: Callable[[Any], None],
    on_error: Callable[[BaseException], None],
    name: str = "pc-ui-task",
) -> threading.Thread:
    """Run ``fn()`` on a thread; ``on_done`` / ``on_error`` are called on the UI thread afterwards."""
    apply_qt_workarounds()
    dispatcher = _get_dispatcher()

    def body() -> None:
        try:
            result = fn()
        except Exception as exc:  # delivered to the UI, which shows it
            log.warning("background task %s failed: %s", name, exc)
            dispatcher.deliver.emit(functools.partial(on_error, exc))
        else:
            dispatcher.deliver.emit(functools.partial(on_done, result))
        finally:
            with _lock:
                _running.discard(threading.current_thread())

    t = threading.Thread(target=body, name=name, daemon=True)
    with _lock:
        _running.add(t)
    t.start()
    return t


def pending_tasks() -> int:
    """Background tasks still running."""
    with _lock:
        return sum(t.is_alive() for t in _running)
