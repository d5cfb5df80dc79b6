"""The conversation, drawn into one text document.

Messages are only ever appended at the end, or cut from some message to the
end (an edit, a regenerated reply), so the start of every message on screen
stays where it is and is kept as a plain position, not as a QTextCursor (the
document would move every cursor it knows of on each insertion).

A streamed reply collects its text and is rendered at most every
RENDER_INTERVAL_MS. Markdown blocks that are complete are rendered once;
only the block being written is rendered again. So the cost of a token does
not depend on how long the conversation or the reply already is, only on
the block it lands in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PySide6.QtCore import QRect, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (
    QCursor,
    QDesktopServices,
    QFont,
    QGuiApplication,
    QPalette,
    QResizeEvent,
    QTextBlockFormat,
    QTextCharFormat,
    QTextCursor,
    QTextDocument,
)
from PySide6.QtWidgets import QTextBrowser, QToolButton, QToolTip, QWidget

from kvchat.ui.markdown import (
    COPY_CODE_SCHEME,
    Block,
    Look,
    closes,
    extend_code,
    last_line_start,
    plain_block,
    render_block,
    split_blocks,
    start_block,
)

RENDER_INTERVAL_MS = 33
COPIED_SHOWN_MS = 1500
# Characters of one message drawn at most. Qt lays text out at about half a
# microsecond a character, all at once: a pasted megabyte would hold the
# window for half a second each time it is drawn. The rest is kept, not
# drawn; Copy and Edit have all of it, and so do the store and exports.
DRAWN_CHARACTERS = 50_000
# A conversation opens with at most this many of its last messages drawn; the
# rest wait behind a link, so a long one opens at once.
SHOWN_AT_OPEN = 120
ACTION_SCHEME = "kvchat-action"


@dataclass(frozen=True)
class MessageView:
    """A finished message as the view shows it. `footer` is the quiet line
    under a reply: its figures, or that it was interrupted."""

    key: str
    heading: str
    text: str
    from_person: bool
    footer: str = ""


class ChatView(QTextBrowser):
    """Read-only view of the messages; the reply being generated grows in place.

    Signals:
        edit_requested(str): Edit was clicked on the person's message with this key.
        regenerate_requested(str): Regenerate was clicked on the last reply.
        continue_requested(str): Continue was clicked on the last reply.
    """

    edit_requested = Signal(str)
    regenerate_requested = Signal(str)
    continue_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("chatView")
        self.setOpenLinks(False)
        self._doc = self.document()
        self.anchorClicked.connect(self._on_anchor)
        self._render_timer = QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.setInterval(RENDER_INTERVAL_MS)
        self._render_timer.timeout.connect(self._render_reply)
        self._following = True
        self._scrolling = False
        self.copied_note = ""  # what the last Copy said, for a moment
        self.jump_button = QToolButton(self)
        self.jump_button.setObjectName("jumpButton")
        self.jump_button.setText("↓ Jump to latest")
        self.jump_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.jump_button.clicked.connect(self.follow)
        self.jump_button.hide()
        bar = self.verticalScrollBar()
        bar.valueChanged.connect(self._on_scrolled)
        bar.rangeChanged.connect(self._on_range_changed)
        self._reset()

    def _reset(self) -> None:
        self._keys: list[str] = []
        self._starts: list[int] = []
        self._texts: dict[str, str] = {}
        self._headings: dict[str, tuple[str, bool]] = {}
        self._footers: dict[str, str] = {}
        self._code: dict[str, str] = {}
        self._hidden: list[MessageView] = []
        self._top: tuple[int, int] | None = None
        self._view_start = 0
        self._marker: tuple[int, int] | None = None
        self._actions: tuple[int, int] | None = None
        self._last_end = 0
        self._auto_keys = 0
        self._reply_key: str | None = None
        self._reply_raw = ""
        self._reply_settled = 0
        self._reply_blocks = 0
        self._reply_tail = 0
        self._reply_end = 0
        # A code block being written: where its body starts in the reply, where
        # its last line starts there and in the document, and the block.
        self._open_code: tuple[int, int, int, Block] | None = None
        self._render_timer.stop()

    # Counting and reading.

    @property
    def message_count(self) -> int:
        return len(self._hidden) + len(self._keys)

    @property
    def replying(self) -> bool:
        return self._reply_key is not None

    @property
    def keys(self) -> list[str]:
        """The keys of the messages, hidden earlier ones included, in order."""
        return [m.key for m in self._hidden] + self._keys

    def message_text(self, key: str) -> str:
        """The text of a message as written (markdown for a reply), "" if unknown."""
        if key == self._reply_key:
            return self._reply_raw
        hidden = next((m.text for m in self._hidden if m.key == key), None)
        return hidden if hidden is not None else self._texts.get(key, "")

    def reply_text(self) -> str:
        """The text of the reply being generated, as received; empty between replies."""
        return self._reply_raw if self._reply_key is not None else ""

    # Formats.

    def _look(self) -> Look:
        palette = self.palette()
        return Look(
            dark=palette.color(QPalette.ColorRole.Base).lightness() < 128,
            quiet=palette.color(QPalette.ColorRole.PlaceholderText),
            link=palette.color(QPalette.ColorRole.Link),
            small_point_size=max(self.font().pointSizeF() - 1.5, 6.0),
        )

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

    def _link_format(self, href: str) -> QTextCharFormat:
        link = self._quiet_format()
        link.setAnchor(True)
        link.setAnchorHref(href)
        link.setForeground(self.palette().color(QPalette.ColorRole.Link))
        return link

    def _insert_links(self, cursor: QTextCursor, links: Sequence[tuple[str, str]]) -> None:
        for label, href in links:
            cursor.insertText("   ", self._quiet_format())
            cursor.insertText(label, self._link_format(href))

    # Scrolling.

    # The view follows the newest text until the person scrolls up, and again
    # once they scroll back down, send a message or press "Jump to latest".
    # Following is a state, not a position: whatever changes the room (the
    # composer growing, a panel shown, a resize) keeps the bottom in view.

    def _at_bottom(self) -> bool:
        return self._following

    def _really_at_bottom(self) -> bool:
        bar = self.verticalScrollBar()
        return bar.value() >= bar.maximum() - 4

    def _scroll_to_bottom(self) -> None:
        bar = self.verticalScrollBar()
        self._scrolling = True
        try:
            bar.setValue(bar.maximum())
        finally:
            self._scrolling = False

    def follow(self) -> None:
        """Brings the newest text into view and keeps it there."""
        self._following = True
        self._scroll_to_bottom()
        self._sync_jump()

    def _on_scrolled(self, _value: int) -> None:
        if not self._scrolling:
            self._following = self._really_at_bottom()
            self._sync_jump()

    def _on_range_changed(self, _low: int, _high: int) -> None:
        if self._following:
            self._scroll_to_bottom()
        self._sync_jump()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        if self._following:
            self._scroll_to_bottom()
        self._place_jump()

    def _sync_jump(self) -> None:
        shown = not self._following and self.verticalScrollBar().maximum() > 0
        if shown != self.jump_button.isVisible():
            self.jump_button.setVisible(shown)
            self._place_jump()

    def _place_jump(self) -> None:
        hint = self.jump_button.sizeHint()
        area = self.viewport().geometry()
        self.jump_button.resize(hint)
        self.jump_button.move(area.right() - hint.width() - 12, area.bottom() - hint.height() - 12)

    # Positions. Everything tracked lies at or after a message start, so an
    # insertion or removal moves the positions at or after it by the same amount.

    def _end_cursor(self) -> QTextCursor:
        cursor = QTextCursor(self._doc)
        cursor.movePosition(QTextCursor.MoveOperation.End)
        return cursor

    def _shift(self, at: int, delta: int) -> None:
        self._starts = [s + delta if s >= at else s for s in self._starts]

        def moved(span: tuple[int, int] | None) -> tuple[int, int] | None:
            if span is None or span[0] < at:
                return span
            return span[0] + delta, span[1] + delta

        self._marker = moved(self._marker)
        self._actions = moved(self._actions)
        if self._last_end >= at:
            self._last_end += delta
        if self._reply_key is not None and self._reply_tail >= at:
            self._reply_tail += delta
            self._reply_end += delta

    def _remove(self, start: int, end: int) -> None:
        cursor = QTextCursor(self._doc)
        cursor.setPosition(start)
        cursor.setPosition(end, QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()
        self._shift(end, start - end)

    # Messages.

    def _new_key(self, key: str) -> str:
        if key:
            return key
        self._auto_keys += 1
        return f"shown-{self._auto_keys}"

    def _start_message(self, heading: str, from_person: bool, key: str) -> QTextCursor:
        self._clear_actions()
        cursor = self._end_cursor()
        if self._doc.isEmpty():
            cursor.setBlockFormat(plain_block(0))
        else:
            cursor.insertBlock(plain_block(14), QTextCharFormat())
        self._keys.append(key)
        self._starts.append(cursor.block().position())
        self._headings[key] = (heading, from_person)
        cursor.insertText(heading, self._heading_format(from_person))
        links = [("Copy", f"{ACTION_SCHEME}:copy/{key}")]
        if from_person:
            links.append(("Edit", f"{ACTION_SCHEME}:edit/{key}"))
        self._insert_links(cursor, links)
        cursor.insertBlock(plain_block(4), QTextCharFormat())
        return cursor

    def _insert_body(self, cursor: QTextCursor, key: str, text: str, from_person: bool) -> None:
        drawn = text[:DRAWN_CHARACTERS]
        if from_person:
            cursor.insertText(drawn)
        else:
            look = self._look()
            for index, block in enumerate(split_blocks(drawn)):
                self._render_block(cursor, block_key=f"{key}/{index}", block=block, look=look)
        if len(drawn) < len(text):
            start_block(cursor, 4)
            actions = "Copy and Edit take" if from_person else "Copy takes"
            cursor.insertText(
                f"… {len(text) - len(drawn):,} more characters are kept but not drawn, "
                f"to keep the window quick: {actions} the whole message.",
                self._quiet_format(),
            )

    def _render_block(self, cursor: QTextCursor, block_key: str, block: Block, look: Look) -> None:
        if block.kind == "code":
            self._code[block_key] = block.text
        render_block(cursor, block, block_key, look)

    def _insert_footer(self, cursor: QTextCursor, key: str, footer: str) -> None:
        self._footers[key] = footer
        if footer:
            start_block(cursor, 2)
            cursor.insertText(footer, self._quiet_format())

    def add_message(
        self, heading: str, text: str, *, from_person: bool = False, key: str = "", footer: str = ""
    ) -> None:
        """Appends a finished message under a heading ("You", the model's name).

        The person's text is shown as typed; a reply is rendered as markdown.
        The person's own message always brings the view to the bottom.
        """
        if from_person:
            self._following = True
        follow = self._at_bottom()
        key = self._new_key(key)
        cursor = self._start_message(heading, from_person, key)
        self._texts[key] = text
        self._insert_body(cursor, key, text, from_person)
        self._insert_footer(cursor, key, footer)
        self._last_end = cursor.position()
        if follow:
            self._scroll_to_bottom()

    def add_notice(self, text: str) -> None:
        """A line from kvchat itself (an error, a model change), set apart from messages."""
        follow = self._at_bottom()
        cursor = self._end_cursor()
        if not self._doc.isEmpty():
            cursor.insertBlock(plain_block(10), QTextCharFormat())
        # Lines of one notice (a crash report's log lines) break within its
        # paragraph rather than each becoming a paragraph of its own.
        cursor.insertText(text.replace("\n", "\u2028"), self._quiet_format())
        if follow:
            self._scroll_to_bottom()

    # The reply being generated.

    def begin_reply(self, heading: str, key: str = "") -> None:
        """Starts an empty reply that `append_reply` grows."""
        follow = self._at_bottom()
        key = self._new_key(key)
        cursor = self._start_message(heading, False, key)
        self._reply_key = key
        self._reply_raw = ""
        self._reply_settled = 0
        self._reply_blocks = 0
        self._reply_tail = self._reply_end = cursor.position()
        if follow:
            self._scroll_to_bottom()

    def append_reply(self, text: str) -> None:
        """Adds text to the reply; it reaches the screen within RENDER_INTERVAL_MS."""
        if self._reply_key is None:
            return
        self._reply_raw += text
        if not self._render_timer.isActive():
            self._render_timer.start()

    def _render_reply(self, final: bool = False) -> None:
        """Renders blocks completed since the last time once, and the last block again."""
        key = self._reply_key
        if key is None:
            return
        follow = self._at_bottom()
        if not final and self._extend_open_code(key):
            if follow:
                self._scroll_to_bottom()
            return
        self._open_code = None
        blocks = split_blocks(self._reply_raw[self._reply_settled :])
        cursor = QTextCursor(self._doc)
        cursor.setPosition(self._reply_tail)
        cursor.setPosition(self._reply_end, QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()
        look = self._look()
        settled = blocks if final else blocks[:-1]
        for block in settled:
            self._render_block(cursor, f"{key}/{self._reply_blocks}", block, look)
            self._reply_settled += block.length
            self._reply_blocks += 1
        self._reply_tail = cursor.position()
        if not final and blocks:
            self._render_block(cursor, f"{key}/{self._reply_blocks}", blocks[-1], look)
        self._reply_end = cursor.position()
        if not final and blocks and blocks[-1].kind == "code":
            self._remember_open_code(blocks[-1])
        if follow:
            self._scroll_to_bottom()

    def _remember_open_code(self, block: Block) -> None:
        """Notes where a code block still being written ends, so that the next
        renders add its new lines instead of drawing it all again."""
        tail = self._reply_raw[self._reply_settled :]
        fence_line = tail.splitlines(keepends=True)[0]
        if fence_line == fence_line.rstrip("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
            return  # the fence line is still being written: its language may change
        body = self._reply_settled + len(fence_line)
        last_line = body + block.text.rfind("\n") + 1
        position = last_line_start(self._doc, self._reply_end)
        self._open_code = (body, last_line, position, block)

    def _extend_open_code(self, key: str) -> bool:
        """Adds what arrived to the code block being written; False when the
        block closed or there is none, and it must be drawn whole."""
        if self._open_code is None:
            return False
        body, last_line, position, block = self._open_code
        text = self._reply_raw[last_line:]
        if any(closes(line, block.fence) for line in text.splitlines()):
            return False
        self._reply_end = extend_code(
            self._doc, position, self._reply_end, text, block.language, self._look().dark
        )
        self._code[f"{key}/{self._reply_blocks}"] = self._reply_raw[body:].removesuffix("\n")
        last_line += text.rfind("\n") + 1
        position = last_line_start(self._doc, self._reply_end)
        self._open_code = (body, last_line, position, block)
        return True

    def flush(self) -> None:
        """Draws what the reply received so far now, rather than on the next tick."""
        if self._render_timer.isActive():
            self._render_timer.stop()
            self._render_reply()

    def end_reply(self, footer: str) -> None:
        """Closes the reply with a quiet line of figures under it."""
        key = self._reply_key
        if key is None:
            return
        self._render_timer.stop()
        self._render_reply(final=True)
        follow = self._at_bottom()
        cursor = QTextCursor(self._doc)
        cursor.setPosition(self._reply_end)
        self._insert_footer(cursor, key, footer)
        self._texts[key] = self._reply_raw
        self._last_end = cursor.position()
        self._reply_key = None
        self._reply_raw = ""
        if follow:
            self._scroll_to_bottom()

    def resume_reply(self, key: str) -> None:
        """Reopens the last reply so that `append_reply` continues it."""
        if self._reply_key is not None or not self._keys or self._keys[-1] != key:
            return
        heading, _from_person = self._headings[key]
        text = self._texts[key]
        self.truncate_from(key)
        self.begin_reply(heading, key)
        self.append_reply(text)

    # Whole conversations.

    def clear_conversation(self) -> None:
        """Empties the view (a new conversation)."""
        self._doc.clear()
        self._reset()
        self.follow()

    def show_conversation(
        self, messages: Sequence[MessageView], view_start: int = 0, shown: int = SHOWN_AT_OPEN
    ) -> None:
        """Replaces what is shown with these messages; the last `shown` are drawn at once.

        The document is built before the view owns it, so that it is laid out
        once rather than after every insertion.
        """
        self._reset()
        old = self._doc
        # No parent: the view uses it, and the reference held here keeps it alive.
        self._doc = QTextDocument()
        self._doc.setDefaultFont(old.defaultFont())
        self._doc.setDocumentMargin(old.documentMargin())
        self._hidden = list(messages[: max(len(messages) - shown, 0)])
        self._view_start = view_start
        if self._hidden:
            self._draw_top()
        for message in messages[len(self._hidden) :]:
            key = message.key
            cursor = self._start_message(message.heading, message.from_person, key)
            self._texts[key] = message.text
            self._insert_body(cursor, key, message.text, message.from_person)
            self._insert_footer(cursor, key, message.footer)
            self._last_end = cursor.position()
        self._draw_marker()
        self.setDocument(self._doc)
        # Lays the document out down to its end, so the bottom is known.
        self.moveCursor(QTextCursor.MoveOperation.End)
        self.ensureCursorVisible()
        self.follow()

    def show_earlier(self) -> None:
        """Draws the messages kept behind the "earlier messages" link."""
        if not self._hidden:
            return
        bar = self.verticalScrollBar()
        from_bottom = bar.maximum() - bar.value()
        everything = self._hidden + [
            MessageView(
                key,
                self._headings[key][0],
                self._texts[key],
                self._headings[key][1],
                self._footers.get(key, ""),
            )
            for key in self._keys
        ]
        self.show_conversation(everything, self._view_start, shown=len(everything))
        bar.setValue(bar.maximum() - from_bottom)

    def _draw_top(self) -> None:
        """The first block: how many earlier messages wait, and a link to show them."""
        count = len(self._hidden)
        words = f"{count} earlier message{'s' if count != 1 else ''} not shown."
        if 0 < self._view_start <= count:
            words += (
                f" The model no longer sees the first {self._view_start}: they left its context."
            )
        before = self._doc.characterCount()
        cursor = QTextCursor(self._doc)
        old = self._top
        if old is not None:
            cursor.setPosition(old[1], QTextCursor.MoveMode.KeepAnchor)
            cursor.removeSelectedText()
        cursor.setBlockFormat(plain_block(0))
        cursor.insertText(words, self._quiet_format())
        self._insert_links(cursor, [("Show them", f"{ACTION_SCHEME}:earlier/")])
        self._top = (0, cursor.position())
        if old is None:
            self._last_end = cursor.position()
        else:
            self._shift(old[1], self._doc.characterCount() - before)

    # The model's view.

    def set_view_start(self, position: int) -> None:
        """Marks where the model's view begins: the messages before `position`
        left its context. 0 removes the mark."""
        if position == self._view_start:
            return
        self._view_start = position
        if self._top is not None:
            self._draw_top()
        self._draw_marker()

    def _draw_marker(self) -> None:
        if self._marker is not None:
            start, end = self._marker
            self._marker = None
            self._remove(start, end)
        index = self._view_start - len(self._hidden)
        if self._view_start <= 0 or index <= 0 or index >= len(self._starts):
            return
        at = self._starts[index]
        before = self._doc.characterCount()
        cursor = QTextCursor(self._doc)
        cursor.setPosition(at)
        marker = self._quiet_format()
        marker.setForeground(self.palette().color(QPalette.ColorRole.Highlight))
        hidden = self._view_start
        cursor.insertText(
            f"── The model's view starts here: the {hidden} message"
            f"{'s' if hidden != 1 else ''} above left its context "
            "(the system prompt stays) ──",
            marker,
        )
        block = QTextBlockFormat(plain_block(14))
        block.setAlignment(Qt.AlignmentFlag.AlignCenter)
        cursor.setBlockFormat(block)
        cursor.insertBlock(plain_block(14), QTextCharFormat())
        delta = self._doc.characterCount() - before
        self._shift(at, delta)
        self._marker = (at, at + delta)

    # Cutting.

    def truncate_from(self, key: str) -> None:
        """Removes the message with this key and everything after it."""
        if key not in self._keys or self._reply_key is not None:
            return
        index = self._keys.index(key)
        if self._marker is not None and self._marker[1] >= self._starts[index] - 1:
            # The "view starts here" line above this message goes with it.
            marker, self._marker = self._marker, None
            self._remove(*marker)
        start = self._starts[index]
        cut = max(start - 1, 0)
        cursor = QTextCursor(self._doc)
        cursor.setPosition(cut)
        cursor.movePosition(QTextCursor.MoveOperation.End, QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()
        for gone in self._keys[index:]:
            self._texts.pop(gone, None)
            self._headings.pop(gone, None)
        del self._keys[index:]
        del self._starts[index:]
        if self._marker is not None and self._marker[0] >= cut:
            self._marker = None
        self._actions = None
        self._last_end = cut

    # Actions on the last reply.

    def _clear_actions(self) -> None:
        if self._actions is not None:
            start, end = self._actions
            self._actions = None
            self._remove(start, end)

    def set_reply_actions(self, regenerate: bool, continue_: bool) -> None:
        """Offers Regenerate and Continue under the last reply (or takes them away)."""
        self._clear_actions()
        if self._reply_key is not None or not self._keys or not (regenerate or continue_):
            return
        key = self._keys[-1]
        if self._headings[key][1]:
            return
        follow = self._at_bottom()
        links = []
        if regenerate:
            links.append(("↻ Regenerate", f"{ACTION_SCHEME}:regenerate/{key}"))
        if continue_:
            links.append(("→ Continue", f"{ACTION_SCHEME}:continue/{key}"))
        before = self._doc.characterCount()
        cursor = QTextCursor(self._doc)
        cursor.setPosition(self._last_end)
        cursor.insertBlock(plain_block(2), QTextCharFormat())
        self._insert_links(cursor, links)
        delta = self._doc.characterCount() - before
        start = self._last_end
        self._actions = (start, start + delta)
        if follow:
            self._scroll_to_bottom()

    # Links.

    def _say_copied(self) -> None:
        """'Copied', for a moment, where the pointer is: the document is not
        touched, so nothing in it moves."""
        self.copied_note = "Copied"
        QToolTip.showText(QCursor.pos(), self.copied_note, self, QRect(), COPIED_SHOWN_MS)

    def _on_anchor(self, url: QUrl) -> None:
        scheme = url.scheme()
        if scheme == COPY_CODE_SCHEME:
            QGuiApplication.clipboard().setText(self._code.get(url.path(), ""))
            self._say_copied()
        elif scheme == ACTION_SCHEME:
            action, _, key = url.path().partition("/")
            if action == "copy":
                QGuiApplication.clipboard().setText(self.message_text(key))
                self._say_copied()
            elif action == "edit":
                self.edit_requested.emit(key)
            elif action == "regenerate":
                self.regenerate_requested.emit(key)
            elif action == "continue":
                self.continue_requested.emit(key)
            elif action == "earlier":
                self.show_earlier()
        elif scheme in ("http", "https", "mailto"):
            QDesktopServices.openUrl(url)
