"""Cycles are freed in the GUI thread while the window runs (``ui.gc_guard``), never by a
pipeline thread that happens to allocate when a collection is due."""

from __future__ import annotations

import gc
import threading
import time
from typing import ClassVar

from PySide6.QtCore import QEventLoop

from ui.gc_guard import collect_in_gui_thread


class _Cycle:
    """A reference cycle that records which thread freed it (as a Qt wrapper in a cycle would be)."""

    freed_in: ClassVar[list[str]] = []

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        _Cycle.freed_in.append(threading.current_thread().name)


def _make_garbage_in_a_thread() -> None:
    def work() -> None:
        for _ in range(2_000):
            _Cycle()  # unreachable at once: only the cyclic collector frees it
            [[] for _ in range(50)]  # allocations that reach the collector's thresholds

    t = threading.Thread(target=work, name="pipeline-like")
    t.start()
    t.join()


def test_without_the_guard_a_worker_thread_frees_cycles() -> None:
    """The hazard itself, so that the test below means something."""
    gc.collect()
    _Cycle.freed_in.clear()
    assert gc.isenabled()
    _make_garbage_in_a_thread()
    gc.collect()
    assert "pipeline-like" in _Cycle.freed_in


def test_within_the_guard_only_the_gui_thread_frees_cycles(qapp) -> None:  # type: ignore[no-untyped-def]
    """(``qapp``, not ``qtbot``: the suite's conftest puts every qtbot test in this guard already.)"""
    gc.collect()
    _Cycle.freed_in.clear()
    with collect_in_gui_thread(interval_s=0.05):
        assert not gc.isenabled()
        _make_garbage_in_a_thread()
        assert _Cycle.freed_in == []  # nothing freed by the worker
        deadline = time.monotonic() + 10.0
        while not _Cycle.freed_in and time.monotonic() < deadline:  # the guard's timer, in this thread
            qapp.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
            time.sleep(0.01)
    assert gc.isenabled()
    assert len(_Cycle.freed_in) == 2_000
    assert set(_Cycle.freed_in) == {threading.main_thread().name}
