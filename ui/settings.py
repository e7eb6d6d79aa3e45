"""What the window remembers between sessions (QSettings): recent sources and configs, folders."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, QStandardPaths

RECENT_MAX = 10
ORGANIZATION = "people-counter"
APPLICATION = "operator-window"


def settings() -> QSettings:
    """The window's settings store (per user; tests point ``QSettings`` at a temporary folder)."""
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION)


def _list(key: str) -> list[str]:
    value = settings().value(key, [])
    if isinstance(value, str):
        return [value] if value else []
    # QSettings.value is typed ``object``: an INI list reads back as a list (or None when empty)
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else []


def recent_sources() -> list[str]:
    """Sources opened before, newest first."""
    return _list("recent/sources")


def remember_source(uri: str) -> list[str]:
    """Put ``uri`` first in the recent list (at most :data:`RECENT_MAX`); returns the list."""
    items = [uri] + [u for u in recent_sources() if u != uri]
    items = items[:RECENT_MAX]
    s = settings()
    s.setValue("recent/sources", items)
    s.sync()
    return items


def clear_recent_sources() -> None:
    s = settings()
    s.setValue("recent/sources", [])
    s.sync()


def last_folder(kind: str) -> str:
    """The folder of the last ``kind`` dialog (``export``, ``open``, ``config``); the user's documents first."""
    saved = settings().value(f"folders/{kind}", "")
    if saved and Path(str(saved)).is_dir():
        return str(saved)
    docs = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation)
    if docs and Path(docs).is_dir():
        return docs
    return str(Path.home())


def remember_folder(kind: str, path: str) -> None:
    p = Path(path)
    s = settings()
    s.setValue(f"folders/{kind}", str(p if p.is_dir() else p.parent))
    s.sync()
