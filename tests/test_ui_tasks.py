"""Background tasks of the window (``ui.tasks``): results and errors come back on the GUI thread,
and no Qt object is made per task, so none is ever freed by a worker thread."""

from __future__ import annotations

import gc
import threading

from PySide6.QtCore import QObject

from ui import tasks


def test_results_and_errors_come_back_on_the_gui_thread_through_one_object(qtbot) -> None:  # type: ignore[no-untyped-def]
    got: list[tuple[str, object, str]] = []

    def fail() -> None:
        raise ValueError("no such run")

    n = 40
    for i in range(n):
        if i % 4 == 0:
            tasks.run_in_background(fail, lambda r: got.append(("done", r, threading.current_thread().name)),
                                    lambda e: got.append(("error", str(e), threading.current_thread().name)))
        else:
            tasks.run_in_background(lambda i=i: i * i, lambda r: got.append(("done", r, threading.current_thread().name)),
                                    lambda e: got.append(("error", str(e), threading.current_thread().name)))
    qtbot.waitUntil(lambda: len(got) == n and tasks.pending_tasks() == 0, timeout=20_000)
    assert {who for _, _, who in got} == {threading.main_thread().name}
    assert sorted(r for kind, r, _ in got if kind == "done") == sorted(i * i for i in range(n) if i % 4)
    assert [r for kind, r, _ in got if kind == "error"] == ["no such run"] * (n // 4)
    gc.collect()
    ours = [o for o in gc.get_objects() if isinstance(o, QObject) and type(o).__module__ == "ui.tasks"]
    assert len(ours) == 1  # the one dispatcher, made by the GUI thread, never deleted
