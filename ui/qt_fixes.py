"""Workarounds for bugs in the Qt bindings, applied explicitly by the ui code that calls Qt.

PySide6 6.12.0 (its ``cp310-abi3`` wheel) returns ``None`` from every void method and ``True``
from ``Signal.emit()`` without taking a reference, as if they were immortal, which they are only
from Python 3.12 on (6.11.3 does not do this). On Python 3.11 each ``label.setText(...)``,
``painter.fillRect(...)`` or emit therefore drops a reference that was never taken; a window with
a 30 Hz video view and live pyqtgraph charts (which emit on every ``setData``) runs the counts of
``None`` and ``True`` down by thousands a second and aborts with "Fatal Python error:
none_dealloc" / "bool_dealloc" within a minute, or at interpreter exit.

The fix belongs in the dependency pin (``PySide6-Essentials!=6.12.0``) or the interpreter
(3.12+). Until then :func:`apply_qt_workarounds` probes for the leak and, only where it is found,
gives ``None``, ``True`` and ``False`` a reference count no run can exhaust (2**40 more), which is
what Python 3.12 does for them by design.
"""

from __future__ import annotations

import ctypes
import logging
import sys

from PySide6.QtCore import QObject, Signal

log = logging.getLogger("people_counter.ui")

_MARGIN = 1 << 40
_PROBES = 4
_applied: bool | None = None


class _Probe(QObject):
    fired = Signal()


def singleton_leaks() -> dict[str, bool]:
    """Which singletons lose a reference per call: ``None`` (void method) and ``True`` (``Signal.emit``)."""
    probe = _Probe()
    none_before = sys.getrefcount(None)
    for _ in range(_PROBES):
        probe.setObjectName("probe")
    none_after = sys.getrefcount(None)
    true_before = sys.getrefcount(True)
    for _ in range(_PROBES):
        probe.fired.emit()
    true_after = sys.getrefcount(True)
    return {"None": none_before - none_after >= _PROBES, "True": true_before - true_after >= _PROBES}


def apply_qt_workarounds() -> bool:
    """Apply what this interpreter and binding need, once per process; True if anything was applied.

    Cheap after the first call, so every entry point into Qt drawing may call it.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if sys.version_info >= (3, 12):
        return _applied  # None, True and False are immortal
    leaks = singleton_leaks()
    if any(leaks.values()):
        import PySide6

        log.warning(
            "PySide6 %s drops references to %s it never took (a bug of that release on Python %d.%d); "
            "pinning None/True/False. Pin PySide6-Essentials!=6.12.0 to drop this workaround.",
            PySide6.__version__,
            " and ".join(name for name, leaked in leaks.items() if leaked),
            *sys.version_info[:2],
        )
        for obj in (None, True, False):
            # ob_refcnt is the first field of every object (CPython 3.11 layout); a race with
            # another thread can cost it a count or two, which the margin absorbs.
            ctypes.c_ssize_t.from_address(id(obj)).value += _MARGIN
        _applied = True
    return _applied
