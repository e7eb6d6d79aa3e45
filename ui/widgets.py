"""Small widgets of the window: a label that elides instead of cutting, and a message banner."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QFontMetrics, QResizeEvent
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QWidget

from ui.qt_fixes import apply_qt_workarounds


class ElidedLabel(QLabel):
    """A one-line label that shows ``…`` where its text does not fit, with the whole text as tooltip.

    It may shrink to nothing (the status bar then gives the room to the others) and never cuts a
    text silently.
    """

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        apply_qt_workarounds()
        super().__init__(parent)
        self._full = ""
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(40)
        self.setText(text)

    def setText(self, text: str) -> None:
        self._full = text
        self.setToolTip(text)
        self._elide()

    def full_text(self) -> str:
        """The text as set, before eliding."""
        return self._full

    def shown_text(self) -> str:
        """The text on screen (elided when it does not fit)."""
        return super().text()

    def sizeHint(self) -> QSize:
        fm = QFontMetrics(self.font())
        return QSize(fm.horizontalAdvance(self._full) + 8, super().sizeHint().height())

    def _elide(self) -> None:
        fm = QFontMetrics(self.font())
        super().setText(fm.elidedText(self._full, Qt.TextElideMode.ElideRight, max(0, self.width() - 4)))

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._elide()


_BANNER_STYLES = {
    "error": "background:#b71c1c; color:white;",
    "warning": "background:#f9a825; color:black;",
    "info": "background:#1565c0; color:white;",
}


class Banner(QFrame):
    """A coloured message across the top of the video, with buttons for the ways out.

    ``show_message(kind, title, text, actions)``: ``kind`` is error, warning or info;
    ``actions`` (label, callback) become buttons; a close button hides the banner.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        apply_qt_workarounds()
        super().__init__(parent)
        self.kind = ""
        self._layout = QHBoxLayout(self)
        self._layout.setContentsMargins(10, 6, 6, 6)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self._layout.addWidget(self.label, 1)
        self._buttons: list[QPushButton] = []
        self._close = QPushButton("✕")
        self._close.setFlat(True)
        self._close.setFixedWidth(28)
        self._close.setToolTip("Hide this message")
        self._close.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self._close.clicked.connect(self.hide)
        self._layout.addWidget(self._close)
        self.hide()

    def show_message(
        self, kind: str, title: str, text: str = "", actions: list[tuple[str, Callable[[], None]]] | None = None
    ) -> None:
        self.kind = kind
        self.setStyleSheet(f"Banner {{{_BANNER_STYLES[kind]}}} QLabel {{{_BANNER_STYLES[kind]}}}")
        body = f"<b>{_escape(title)}</b>" + (f"<br>{_escape(text)}" if text else "")
        self.label.setText(body)
        self.label.setToolTip(text)
        for b in self._buttons:
            self._layout.removeWidget(b)
            b.deleteLater()
        self._buttons = []
        for label, callback in actions or []:
            b = QPushButton(label)
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            b.clicked.connect(callback)
            self._layout.insertWidget(self._layout.count() - 1, b)
            self._buttons.append(b)
        self.show()

    @property
    def text(self) -> str:
        return self.label.text()

    @property
    def button_labels(self) -> list[str]:
        return [b.text() for b in self._buttons]

    def click(self, label: str) -> None:
        """Press the button labelled ``label`` (tests, keyboard access)."""
        for b in self._buttons:
            if b.text() == label:
                b.click()
                return
        raise KeyError(f"no button {label!r} on the banner; have {self.button_labels}")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "<br>")
