"""Where the person writes: Enter sends, Shift+Enter starts a new line."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QPlainTextEdit, QWidget

MIN_LINES = 2
MAX_LINES = 8


class Composer(QPlainTextEdit):
    """A message editor.

    Signals:
        submitted(str): Enter was pressed on text that is not only whitespace.
            The text stays until the owner calls `clear()`, so a message that
            cannot be sent yet is not lost.
    """

    submitted = Signal(str)
    # The keys keyPressEvent gives a meaning of its own, for the shortcuts list
    # (they are not actions, so the window cannot find them there).
    KEYS = (("Enter", "Send the message"), ("Shift+Enter", "Start a new line"))

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("composer")
        self.setPlaceholderText("Message the model (Enter sends, Shift+Enter adds a line)")
        self.setTabChangesFocus(True)
        self.document().contentsChanged.connect(self.updateGeometry)

    def _height_for_lines(self, lines: int) -> int:
        margins = self.contentsMargins()
        frame = round(self.document().documentMargin() * 2) + margins.top() + margins.bottom()
        return self.fontMetrics().lineSpacing() * lines + frame + 4

    def sizeHint(self) -> QSize:
        """Tall enough for the text written so far: two to eight lines."""
        hint = super().sizeHint()
        lines = min(max(self.document().size().height(), MIN_LINES), MAX_LINES)
        return QSize(hint.width(), self._height_for_lines(int(lines)))

    def minimumSizeHint(self) -> QSize:
        return QSize(super().minimumSizeHint().width(), self._height_for_lines(MIN_LINES))

    def keyPressEvent(self, event: QKeyEvent) -> None:
        is_enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        if is_enter and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            text = self.toPlainText()
            if text.strip():
                self.submitted.emit(text)
            return
        super().keyPressEvent(event)
