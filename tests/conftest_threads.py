"""The ``no_thread_leak`` fixture: fails a test that leaves a thread running.

Import it into ``tests/conftest.py`` (``from tests.conftest_threads import no_thread_leak``) or use
``pytestmark = pytest.mark.usefixtures("no_thread_leak")`` in a module that imports it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

LEAK_GRACE_S = 1.0
"""How long a thread started by the test may take to finish after it returns."""


def leaked_threads(before: set[threading.Thread], grace_s: float = LEAK_GRACE_S) -> list[threading.Thread]:
    """Threads alive now that were not in ``before``, after waiting up to ``grace_s`` for them to end."""
    deadline = time.monotonic() + grace_s
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() >= deadline:
            return leaked
        time.sleep(0.01)


@pytest.fixture
def no_thread_leak() -> Iterator[None]:
    """Fail the test if it leaves threads running (napari's dangling-QThread check, for threading)."""
    before = set(threading.enumerate())
    yield
    leaked = leaked_threads(before)
    if leaked:
        pytest.fail(f"test left {len(leaked)} thread(s) running: {', '.join(sorted(t.name for t in leaked))}")
