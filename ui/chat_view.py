"""The conversation, drawn into one text document.

A streamed reply is appended with `QTextCursor.insertText` at a cursor kept
at its end, so the cost of a token does not depend on how long the
conversation already is: nothing on screen is laid out again.
"""

from __future__ import annotations

from PySide6.QtGui import QFont, QPalette, QTextBlockFormat, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import QTextBrowser, QWidget

PARAGRAPH_SEPARATOR = "\u2029"


class ChatView(QTextBrowser):
    """Read-only view of the messages; the reply being generated grows in place."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("chatView")
        self.setOpenExternalLinks(True)
        self._reply_cursor: QTextCursor | None = None
        self._reply_start = 0
        self._message_count = 0

    @property
    def message_count(self) -> int:
        return self._message_count

    def _at_bottom(self) -> bool:
        bar = self.verticalScrollBar()
        return bar.value() >= bar.maximum() - 4

    def _scroll_to_bottom(self) -> None:
        bar = self.verticalScrollBar()
        bar.setValue(bar.maximum())

    def _block_format(self, top_margin: float) -> QTextBlockFormat:
        block = QTextBlockFormat()
        block.setTopMargin(top_margin)
        block.setLeftMargin(6)
        block.setRightMargin(6)
        return block

    def _heading_format(self, from_person: bool) -> QTextCharFormat:
        heading = QTextCharFormat()
        heading.setFontWeight(QFont.Weight.Bold)
        role = QPalette.ColorRole.WindowText if from_person else QPalette.ColorRole.Highlight
        heading.setForeground(self.palette().color(role))
        return heading

    def _quiet_format(self) -> QTextCharFormat:
        quiet = QTextCharFormat()
        quiet.setForeground(self.palette().color(QPalette.ColorRole.PlaceholderText))
        quiet.setFontPointSize(max(self.font().pointSizeF() - 1.5, 6.0))
        return quiet

    def _start_message(self, heading: str, from_person: bool) -> QTextCursor:
        cursor = QTextCursor(self.document())
        cursor.movePosition(QTextCursor.MoveOperation.End)
        if self.document().isEmpty():
            cursor.setBlockFormat(self._block_format(0))
        else:
            cursor.insertBlock(self._block_format(14))
        cursor.insertText(heading, self._heading_format(from_person))
        cursor.insertBlock(self._block_format(4), QTextCharFormat())
        self._message_count += 1
        return cursor

    def add_message(self, heading: str, text: str, *, from_person: bool = False) -> None:
        """Appends a finished message under a heading ("You", the model's name)."""
        follow = self._at_bottom()
        cursor = self._start_message(heading, from_person)
        cursor.insertText(text)
        if follow:
            self._scroll_to_bottom()

    def add_notice(self, text: str) -> None:
        """A line from kvchat itself (an error, a model change), set apart from messages."""
        follow = self._at_bottom()
        cursor = QTextCursor(self.document())
        cursor.movePosition(QTextCursor.MoveOperation.End)
        if not self.document().isEmpty():
            cursor.insertBlock(self._block_format(10))
        cursor.insertText(text, self._quiet_format())
        if follow:
            self._scroll_to_bottom()

    def begin_reply(self, heading: str) -> None:
        """Starts an empty message that `append_reply` grows."""
        follow = self._at_bottom()
        self._reply_cursor = self._start_message(heading, from_person=False)
        self._reply_start = self._reply_cursor.position()
        if follow:
            self._scroll_to_bottom()

    def append_reply(self, text: str) -> None:
        if self._reply_cursor is None:
            return
        follow = self._at_bottom()
        self._reply_cursor.insertText(text)
        if follow:
            self._scroll_to_bottom()

    def reply_text(self) -> str:
        """The text of the reply being generated, as shown; empty between replies."""
        if self._reply_cursor is None:
            return ""
        cursor = QTextCursor(self.document())
        cursor.setPosition(self._reply_start)
        cursor.setPosition(self._reply_cursor.position(), QTextCursor.MoveMode.KeepAnchor)
        return cursor.selectedText().replace(PARAGRAPH_SEPARATOR, "\n")

    def end_reply(self, footer: str) -> None:
        """Closes the reply with a quiet line of figures under it."""
        if self._reply_cursor is None:
            return
        follow = self._at_bottom()
        if footer:
            self._reply_cursor.insertBlock(self._block_format(2), QTextCharFormat())
            self._reply_cursor.insertText(footer, self._quiet_format())
        self._reply_cursor = None
        if follow:
            self._scroll_to_bottom()

    @property
    def replying(self) -> bool:
        return self._reply_cursor is not None
