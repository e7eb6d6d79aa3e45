"""Suite-wide settings: Qt offscreen, and no test may leave a thread running."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from tests.conftest_threads import leaked_threads

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt makes the QApplication


@pytest.fixture(autouse=True)
def _fail_on_thread_leak() -> Iterator[None]:
    """napari's dangling-thread check, for every test: a thread the test started must be gone
    (1 s grace) when it ends; a pipeline that stops cleanly leaves none."""
    before = set(threading.enumerate())
    yield
    leaked = leaked_threads(before)
    if leaked:
        pytest.fail(f"test left {len(leaked)} thread(s) running: {', '.join(sorted(t.name for t in leaked))}")
