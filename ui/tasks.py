"""Work off the UI thread: run a function on a Python thread, get its result back as a Qt signal.

An export or a history query takes from milliseconds to seconds (a big database); the window
must keep turning meanwhile. :func:`run_in_background` runs ``fn`` on a named daemon thread
(``pc-ui-task``) and delivers ``on_done(result)`` or ``on_error(exc)`` on the UI thread (a queued
signal), never both. :func:`pending_tasks` says how many are still running (the window waits for
them before it closes, so no thread outlives it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal

from ui.qt_fixes import apply_qt_workarounds

log = logging.getLogger("people_counter.ui")

_lock = threading.Lock()
_running: set[threading.Thread] = set()
_keep: set[_Relay] = set()


class _Relay(QObject):
    done = Signal(object)
    failed = Signal(object)


def run_in_background(
    fn: Callable[[], Any],
    on_done: Callable[[Any], None],
    on_error: Callable[[BaseException], None],
    name: str = "pc-ui-task",
) -> threading.Thread:
    """Run ``fn()`` on a thread; ``on_done`` / ``on_error`` are called on the UI thread afterwards."""
    apply_qt_workarounds()
    relay = _Relay()
    relay.done.connect(on_done, Qt.ConnectionType.QueuedConnection)
    relay.failed.connect(on_error, Qt.ConnectionType.QueuedConnection)
    relay.done.connect(lambda _r: _keep.discard(relay))
    relay.failed.connect(lambda _e: _keep.discard(relay))
    _keep.add(relay)

    def body() -> None:
        try:
            result = fn()
        except Exception as exc:  # delivered to the UI, which shows it
            log.warning("background task %s failed: %s", name, exc)
            relay.failed.emit(exc)
        else:
            relay.done.emit(result)
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
