"""Python's cyclic garbage collector only in the GUI thread while Qt objects live.

The collector runs in whichever thread happens to allocate when a generation's threshold is
reached. In this program that is mostly a pipeline thread (decode, branches, fusion), and a
collection there also frees unreachable cycles that hold Qt objects: a closed dialog, a widget
with a lambda connected to its own signal. Deleting a ``QObject`` from a thread other than its
own is undefined in Qt; it can crash, or deadlock with the GUI thread inside C++ where neither
Python's signal handlers nor pytest-timeout can reach it. pyqtgraph's ``GarbageCollector`` is
the known remedy: automatic collection off, and a ``QTimer`` in the GUI thread that collects
what the thresholds would have. :func:`collect_in_gui_thread` scopes it (the previous state comes
back on exit, after one full collection in this thread).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

from pyqtgraph.util.garbage_collector import GarbageCollector


@contextmanager
def collect_in_gui_thread(interval_s: float = 0.5) -> Iterator[GarbageCollector]:
    """Within the block, cycles are collected only by a ``QTimer`` every ``interval_s`` in the
    calling (GUI) thread, whose Qt event loop must turn; needs a ``QCoreApplication``."""
    was_enabled = gc.isenabled()
    collector = GarbageCollector(interval=interval_s)  # disables automatic collection
    try:
        yield collector
    finally:
        collector.timer.stop()
        collector.timer.deleteLater()
        gc.collect()  # here, in the GUI thread: nothing of this block is left for another thread
        if was_enabled:
            gc.enable()
