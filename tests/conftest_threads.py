"""The helper behind the suite-wide thread-leak check (the autouse fixture in ``tests/conftest.py``).

It lives outside ``conftest.py`` so a test module can import it (to test it) without importing
the conftest.
"""

from __future__ import annotations

import threading
import time

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
