"""Suite-wide settings: Qt offscreen, no test may leave a thread running, and a hung test ends the
run with every thread's stack instead of running into CI's time limit."""

from __future__ import annotations

import faulthandler
import os
import threading
from collections.abc import Iterator

import pytest

from tests.conftest_threads import leaked_threads

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt makes the QApplication

HANG_S = float(os.environ.get("PEOPLE_COUNTER_TEST_HANG_S", "600"))
"""Seconds one test (setup, call and teardown) may take before the run is ended with a stack dump
of every thread. Beyond pytest-timeout's 300 s (pyproject.toml), which fails a slow test and goes
on but needs the main thread to run Python: a test blocked in C code (a deadlock between the GIL
and a native lock) is only seen by faulthandler's own watchdog thread."""

_stderr_fd: int | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _stderr_fd
    _stderr_fd = os.dup(2)  # the terminal's stderr, before a test's output is captured


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    if HANG_S > 0 and _stderr_fd is not None:
        faulthandler.dump_traceback_later(HANG_S, exit=True, file=_stderr_fd)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def _gc_in_the_gui_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    """A Qt test collects cycles only in the GUI thread (``ui.gc_guard``, as the window does), and
    once more at its end after pytest-qt has closed its widgets: no Qt object of it is left for a
    later test's pipeline thread to free."""
    if "qtbot" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("qapp")
    from ui.gc_guard import collect_in_gui_thread

    with collect_in_gui_thread():
        yield


@pytest.fixture(autouse=True)
def _fail_on_thread_leak() -> Iterator[None]:
    """napari's dangling-thread check, for every test: a thread the test started must be gone
    (1 s grace) when it ends; a pipeline that stops cleanly leaves none."""
    before = set(threading.enumerate())
    yield
    leaked = leaked_threads(before)
    if leaked:
        pytest.fail(f"test left {len(leaked)} thread(s) running: {', '.join(sorted(t.name for t in leaked))}")
