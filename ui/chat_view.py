"""The conversation, drawn into one text document.

Messages are only ever appended at the end, or cut from some message to the
end (an edit, a regenerated reply), so the start of every message on screen
stays where it is and is kept as a plain position, not as a QTextCursor (the
document would move every cursor it knows of on each insertion). What is
drawn again in place (a heading's version pager, a thinking section opened
or closed) moves the positions after it by what it added.

A message is a heading line (its name, its version pager, Copy and Edit);
for a reply, a thinking section (a note line that opens and closes it, and
the thinking text while open); then the body and the footer. The blocks of
a thinking section are marked with THINKING_BLOCK, so the section is found
from the heading rather than tracked.

A streamed reply collects its text and is rendered at most every
RENDER_INTERVAL_MS. Markdown blocks that are complete are rendered once;
only the block being written is rendered again. Thinking is plain text, and
only what arrived since the last render is added. So the cost of a token
does not depend on how long the conversation or the reply already is, only
on the block it lands in.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from PySide6.QtCore import QEvent, QRect, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (
    QColor,
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
    QTextFormat,
    QWheelEvent,
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
# Marks the blocks of a thinking section (its note line and its text).
THINKING_BLOCK = QTextFormat.Property.UserProperty.value + 1
THINKING_INDENT = 22
# The pager's links, and the step each asks for.
VERSION_STEPS = {"previous": -1, "next": 1}


@dataclass(frozen=True)
class MessageView:
    """A message as the view shows it.

    `footer` is the quiet line under a reply: its figures, or that it was
    interrupted. `versions` is (which, of how many) 1-based, for a message
    with kept alternatives (the person's edits, regenerated replies).
    `thinking` is a reasoning model's thinking, shown apart from the answer
    (`text`) under the line `thinking_note` ("Thought for 214 tokens, 3.1 s").
    """

    key: str
    heading: str
    text: str
    from_person: bool
    footer: str = ""
    versions: tuple[int, int] = (1, 1)
    thinking: str = ""
    thinking_note: str = ""

    @property
    def has_thinking(self) -> bool:
        return not self.from_person and bool(self.thinking or self.thinking_note)


@dataclass
class _Reply:
    """The reply being generated: what arrived so far, and where it is drawn.

    The thinking section ends at `thinking_end` (the heading's end while there
    is none). The answer is drawn from `tail` to `end`: blocks before `tail`
    are drawn for good, the one after it is drawn again on each render.
    """

    key: str
    answer: str = ""
    thinking: str = ""
    thinking_note: str = ""
    thinking_end: int = 0
    # The note as drawn, None while the section is not drawn; and how many
    # characters of the thinking are drawn.
    drawn_note: str | None = None
    drawn_thinking: int = 0
    rendered: int = 0  # characters of the answer when it was last rendered
    settled: int = 0  # characters of the answer drawn for good
    blocks: int = 0  # answer blocks drawn for good
    tail: int = 0
    end: int = 0
    # A code block being written: where its body starts in the answer, where
    # its last line starts there and in the document, and the block.
    open_code: tuple[int, int, int, Block] | None = None

    @property
    def has_thinking(self) -> bool:
        return bool(self.thinking or self.thinking_note)

    def shift(self, at: int, delta: int) -> None:
        """Moves the document positions at or after `at` by `delta`."""
        if self.thinking_end >= at:
            self.thinking_end += delta
        if self.tail >= at:
            self.tail += delta
        if self.end >= at:
            self.end += delta
        if self.open_code is not None and self.open_code[2] >= at:
            body, last_line, position, block = self.open_code
            self.open_code = (body, last_line, position + delta, block)


def thinking_drawn(thinking: str) -> tuple[str, int]:
    """The thinking as drawn (without the blank lines around it, at most
    DRAWN_CHARACTERS), and how many characters are left out.

    As thinking streams, what is drawn only ever grows at its end (a trailing
    line break is held back until text follows it), so each render adds the
    new text after what is drawn.
    """
    text = thinking.strip()
    return text[:DRAWN_CHARACTERS], max(len(text) - DRAWN_CHARACTERS, 0)


class ChatView(QTextBrowser):
    """Read-only view of the messages; the reply being generated grows in place.

    Signals:
        edit_requested(str): Edit was clicked on the person's message with this key.
        regenerate_requested(str): Regenerate was clicked on the last reply.
        continue_requested(str): Continue was clicked on the last reply.
        version_requested(str, int): the pager of the message with this key
            was clicked: -1 for the version before, +1 for the one after.
    """

    edit_requested = Signal(str)
    regenerate_requested = Signal(str)
    continue_requested = Signal(str)
    version_requested = Signal(str, int)

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
        # Choices of the person's that outlive what is shown.
        self._open_thinking: set[str] = set()  # keys of messages with thinking opened
        self._show_thinking = True
        self._max_width = 0
        # While version_requested is handled: the index of the paged message
        # and how far below the top of the view its heading was.
        self._paging: tuple[int, float] | None = None
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
        self._messages: dict[str, MessageView] = {}
        self._code: dict[str, str] = {}
        self._hidden: list[MessageView] = []
        self._top: tuple[int, int] | None = None
        self._view_start = 0
        self._marker: tuple[int, int] | None = None
        self._actions: tuple[int, int] | None = None
        self._last_end = 0
        self._auto_keys = 0
        # The reply being written; its entry in _messages has its heading and
        # versions, this has its text.
        self._reply: _Reply | None = None
        self._render_timer.stop()

    # Counting and reading.

    @property
    def message_count(self) -> int:
        return len(self._hidden) + len(self._keys)

    @property
    def replying(self) -> bool:
        return self._reply is not None

    @property
    def keys(self) -> list[str]:
        """The keys of the messages, hidden earlier ones included, in order."""
        return [m.key for m in self._hidden] + self._keys

    def _message(self, key: str) -> MessageView | None:
        """The message with this key as it stands, the reply being written included."""
        reply = self._reply
        if reply is not None and key == reply.key:
            return replace(
                self._messages[key],
                text=reply.answer,
                thinking=reply.thinking,
                thinking_note=reply.thinking_note,
            )
        drawn = self._messages.get(key)
        return drawn if drawn is not None else next((m for m in self._hidden if m.key == key), None)

    def message_text(self, key: str) -> str:
        """The text of a message as written (markdown for a reply, the answer
        without its thinking), "" if unknown."""
        message = self._message(key)
        return message.text if message is not None else ""

    def reply_text(self) -> str:
        """The answer of the reply being generated, as received; empty between replies."""
        return self._reply.answer if self._reply is not None else ""

    def reply_thinking(self) -> str:
        """The thinking of the reply being generated, as received; empty between replies."""
        return self._reply.thinking if self._reply is not None else ""

    # Formats.

    def _look(self) -> Look:
        palette = self.palette()
        return Look(
            dark=palette.color(QPalette.ColorRole.Base).lightness() < 128,
            quiet=palette.color(QPalette.ColorRole.PlaceholderText),
            link=palette.color(QPalette.ColorRole.Link),
            small_point_size=self._small_point_size(),
        )

    def _small_point_size(self) -> float:
        return max(self.font().pointSizeF() - 1.5, 6.0)

    def _heading_format(self, from_person: bool) -> QTextCharFormat:
        heading = QTextCharFormat()
        heading.setFontWeight(QFont.Weight.Bold)
        role = QPalette.ColorRole.WindowText if from_person else QPalette.ColorRole.Highlight
        heading.setForeground(self.palette().color(role))
        return heading

    def _quiet_format(self) -> QTextCharFormat:
        quiet = QTextCharFormat()
        quiet.setForeground(self.palette().color(QPalette.ColorRole.PlaceholderText))
        quiet.setFontPointSize(self._small_point_size())
        return quiet

    def _link_format(
        self, href: str, role: QPalette.ColorRole = QPalette.ColorRole.Link
    ) -> QTextCharFormat:
        link = self._quiet_format()
        link.setAnchor(True)
        link.setAnchorHref(href)
        link.setForeground(self.palette().color(role))
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

    def _scroll_to(self, value: int) -> None:
        """Scrolls to `value` and follows again only if that is the bottom."""
        self.verticalScrollBar().setValue(value)
        self._following = self._really_at_bottom()
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
        self._fit_column()
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

    # Readable width.

    def set_max_width(self, px: int) -> None:
        """Keeps the text at most `px` wide, centred in a wider view; 0 lets it
        fill the view. Lines much wider than that are hard to read."""
        self._max_width = max(px, 0)
        self._fit_column()

    def event(self, event: QEvent) -> bool:
        # A wheel turned over the margins beside the column reaches the view,
        # not its viewport, and a scroll area ignores it there: it scrolls all
        # the same. (One that the viewport passes up lies inside it.)
        if isinstance(event, QWheelEvent) and not self.viewport().geometry().contains(
            event.position().toPoint()
        ):
            self.wheelEvent(event)
            return True
        return super().event(event)

    def _fit_column(self) -> None:
        """Narrows the viewport to the column with margins on both sides.

        Margins around the viewport rather than in the document: a code line
        too long for the column scrolls within it rather than running on into
        the margin, and once the view is wider than the column a resize
        leaves the viewport as it was, so the document is not laid out again.
        """
        margins = self.viewportMargins()
        room = self.viewport().width() + margins.left() + margins.right()
        side = max((room - self._max_width) // 2, 0) if self._max_width else 0
        if (margins.left(), margins.right()) != (side, side):
            self.setViewportMargins(side, 0, side, 0)

    # Positions. Everything tracked lies at or after a message start, so an
    # insertion or removal moves the positions at or after it by the same amount.

    def _end_cursor(self) -> QTextCursor:
        cursor = QTextCursor(self._doc)
        cursor.movePosition(QTextCursor.MoveOperation.End)
        return cursor

    def _shift(self, at: int, delta: int) -> None:
        # Message starts are in order: only those after `at` are visited, so a
        # change in the last message costs the same however many come before.
        for index in range(bisect_left(self._starts, at), len(self._starts)):
            self._starts[index] += delta

        def moved(span: tuple[int, int] | None) -> tuple[int, int] | None:
            if span is None or span[0] < at:
                return span
            return span[0] + delta, span[1] + delta

        self._marker = moved(self._marker)
        self._actions = moved(self._actions)
        if self._last_end >= at:
            self._last_end += delta
        if self._reply is not None:
            self._reply.shift(at, delta)

    def _remove(self, start: int, end: int) -> None:
        cursor = QTextCursor(self._doc)
        cursor.setPosition(start)
        cursor.setPosition(end, QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()
        self._shift(end, start - end)

    def _replace(self, start: int, end: int, draw: Callable[[QTextCursor], None]) -> None:
        """Draws again what lies from `start` to `end`, and moves what follows."""
        before = self._doc.characterCount()
        cursor = QTextCursor(self._doc)
        cursor.setPosition(start)
        cursor.setPosition(end, QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()
        draw(cursor)
        self._shift(end, self._doc.characterCount() - before)

    def _heading_end(self, index: int) -> int:
        """Where the heading line of the drawn message at `index` ends."""
        block = self._doc.findBlock(self._starts[index])
        return block.position() + block.length() - 1

    def _thinking_span(self, index: int) -> tuple[int, int]:
        """Where the thinking section of the drawn message at `index` lies: from
        its heading's end to the end of its last marked block (empty if none)."""
        start = end = self._heading_end(index)
        block = self._doc.findBlock(start).next()
        while block.isValid() and block.blockFormat().hasProperty(THINKING_BLOCK):
            end = block.position() + block.length() - 1
            block = block.next()
        return start, end

    # Messages.

    def _new_key(self, key: str) -> str:
        if key:
            return key
        self._auto_keys += 1
        return f"shown-{self._auto_keys}"

    def _start_message(self, message: MessageView) -> QTextCursor:
        """Draws a message's heading line and thinking section; the cursor is
        left where its body goes."""
        self._clear_actions()
        cursor = self._end_cursor()
        if self._doc.isEmpty():
            cursor.setBlockFormat(plain_block(0))
        else:
            cursor.insertBlock(plain_block(14), QTextCharFormat())
        self._keys.append(message.key)
        self._starts.append(cursor.block().position())
        self._messages[message.key] = message
        self._insert_heading(cursor, message)
        if self._show_thinking and message.has_thinking:
            self._insert_thinking(cursor, message.key, message.thinking, message.thinking_note)
        cursor.insertBlock(plain_block(4), QTextCharFormat())
        return cursor

    def _insert_heading(self, cursor: QTextCursor, message: MessageView) -> None:
        cursor.insertText(message.heading, self._heading_format(message.from_person))
        self._insert_pager(cursor, message.key, message.versions)
        links = [("Copy", f"{ACTION_SCHEME}:copy/{message.key}")]
        if message.from_person:
            links.append(("Edit", f"{ACTION_SCHEME}:edit/{message.key}"))
        self._insert_links(cursor, links)

    def _draw_message(self, message: MessageView) -> None:
        """Appends a finished message."""
        cursor = self._start_message(message)
        self._insert_body(cursor, message.key, message.text, message.from_person)
        self._insert_footer(cursor, message.footer)
        self._last_end = cursor.position()

    def _insert_footer(self, cursor: QTextCursor, footer: str) -> None:
        if footer:
            start_block(cursor, 2)
            cursor.insertText(footer, self._quiet_format())

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

    def add_message(
        self,
        heading: str,
        text: str,
        *,
        from_person: bool = False,
        key: str = "",
        footer: str = "",
        versions: tuple[int, int] = (1, 1),
        thinking: str = "",
        thinking_note: str = "",
    ) -> None:
        """Appends a finished message under a heading ("You", the model's name).

        The person's text is shown as typed; a reply is rendered as markdown.
        The person's own message always brings the view to the bottom.
        """
        if from_person:
            self._following = True
        follow = self._at_bottom()
        message = MessageView(
            self._new_key(key),
            heading,
            text,
            from_person,
            footer,
            versions,
            thinking,
            thinking_note,
        )
        self._draw_message(message)
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

    # Versions.

    def _insert_pager(self, cursor: QTextCursor, key: str, versions: tuple[int, int]) -> None:
        """The pager after the heading of a message with kept alternatives: an
        arrow each side of "2 / 3"; one with no version beyond it is greyed,
        and no link."""
        index, count = versions
        if count <= 1:
            return
        cursor.insertText("   ", self._quiet_format())
        self._insert_step(cursor, "‹", f"{ACTION_SCHEME}:previous/{key}" if index > 1 else "")
        cursor.insertText(f"{index} / {count}", self._quiet_format())
        self._insert_step(cursor, "›", f"{ACTION_SCHEME}:next/{key}" if index < count else "")

    def _insert_step(self, cursor: QTextCursor, arrow: str, href: str) -> None:
        if href:
            step = self._link_format(href)
        else:
            step = self._quiet_format()
            greyed = QColor(step.foreground().color())
            greyed.setAlphaF(greyed.alphaF() * 0.5)
            step.setForeground(greyed)
        # Larger than the text, with a space each side in the link: a lone
        # arrow in the small size of the links around it is a hard target.
        step.setFontPointSize(self.font().pointSizeF() * 1.4)
        cursor.insertText(f" {arrow} ", step)

    def set_versions(self, key: str, index: int, count: int) -> None:
        """Changes what the pager of a message already shown says (`index` of
        `count`, 1-based): a version was added or removed."""
        versions = (index, count)
        for position, hidden in enumerate(self._hidden):
            if hidden.key == key:
                self._hidden[position] = replace(hidden, versions=versions)
                return
        message = self._messages.get(key)
        if message is None or message.versions == versions:
            return
        message = self._messages[key] = replace(message, versions=versions)
        drawn = self._keys.index(key)
        self._replace(
            self._starts[drawn],
            self._heading_end(drawn),
            lambda cursor: self._insert_heading(cursor, message),
        )

    def _request_version(self, key: str, step: int) -> None:
        """Emits version_requested. While it is handled, a conversation shown
        again (the branch under the other version) keeps this message where
        it is on screen, so the pager stays under the pointer."""
        if key not in self._keys:
            return
        index = self._keys.index(key)
        offset = self._block_top(self._starts[index]) - self.verticalScrollBar().value()
        self._paging = (len(self._hidden) + index, offset)
        try:
            self.version_requested.emit(key, step)
        finally:
            self._paging = None

    def page_last(self, step: int) -> bool:
        """Another version of the last message on screen that has one, from the
        keyboard; False when there is none that way."""
        for key in reversed(self._keys):
            index, count = self._messages[key].versions
            if count > 1:
                if 1 <= index + step <= count:
                    self._request_version(key, step)
                    return True
                return False
        return False

    def regenerate_last(self) -> bool:
        """Regenerate, from the keyboard: only where the link is offered."""
        if self._actions is None or self._reply is not None or not self._keys:
            return False
        self.regenerate_requested.emit(self._keys[-1])
        return True

    def _block_top(self, position: int) -> float:
        """How far down the document the block at `position` is drawn."""
        layout = self._doc.documentLayout()
        return layout.blockBoundingRect(self._doc.findBlock(position)).top()

    # Thinking.

    def _thinking_block(self, indent: float = 0, top_margin: float = 0) -> QTextBlockFormat:
        """A block of a thinking section. Its lines, each a block, are apart by
        a bottom margin: the last one's keeps the answer a little further off."""
        block = plain_block(top_margin)
        block.setLeftMargin(block.leftMargin() + indent)
        block.setBottomMargin(3 if indent else 0)
        block.setProperty(THINKING_BLOCK, True)
        return block

    def _insert_thinking(
        self, cursor: QTextCursor, key: str, thinking: str, note: str, finished: bool = True
    ) -> int:
        """Draws a thinking section after the heading line the cursor ends: the
        note (a link that opens and closes it), and the thinking while open.
        Returns how many characters of the thinking it drew."""
        cursor.insertBlock(self._thinking_block(top_margin=4), QTextCharFormat())
        self._insert_thinking_note(cursor, key, note)
        if key not in self._open_thinking:
            return 0
        return self._insert_thinking_text(cursor, thinking, 0, finished)

    def _insert_thinking_note(self, cursor: QTextCursor, key: str, note: str) -> None:
        arrow = "▾" if key in self._open_thinking else "▸"
        link = self._link_format(
            f"{ACTION_SCHEME}:thinking/{key}", QPalette.ColorRole.PlaceholderText
        )
        cursor.insertText(f"{arrow} {note or 'Thinking…'}", link)

    def _insert_thinking_text(
        self, cursor: QTextCursor, thinking: str, drawn: int, finished: bool
    ) -> int:
        """Adds the thinking after its first `drawn` characters, at the end of an
        open section. Returns how many characters are drawn now.

        Plain text: each render adds only what arrived, whatever the thinking
        holds (markdown would draw its last block again and again).
        """
        text, left_out = thinking_drawn(thinking)
        if len(text) > drawn:
            if drawn == 0:
                cursor.insertBlock(self._thinking_block(THINKING_INDENT), QTextCharFormat())
            cursor.insertText(text[drawn:], self._thinking_format())
        if finished and left_out:
            cursor.insertBlock(self._thinking_block(THINKING_INDENT), QTextCharFormat())
            cursor.insertText(
                f"… {left_out:,} more characters of thinking are not drawn, "
                "to keep the window quick.",
                self._quiet_format(),
            )
        return len(text)

    def _thinking_format(self) -> QTextCharFormat:
        thinking = QTextCharFormat()
        thinking.setForeground(self.palette().color(QPalette.ColorRole.PlaceholderText))
        return thinking

    def _redraw_thinking(self, index: int, finished: bool = True) -> None:
        """Draws the thinking section of the drawn message at `index` again, as
        the person's choices stand (open or closed, shown or hidden)."""
        key = self._keys[index]
        message = self._message(key)
        reply = self._reply if self._reply is not None and self._reply.key == key else None
        assert message is not None

        def draw(cursor: QTextCursor) -> None:
            drawn: int | None = None
            if self._show_thinking and message.has_thinking:
                drawn = self._insert_thinking(
                    cursor, key, message.thinking, message.thinking_note, finished
                )
            if reply is not None:
                reply.drawn_note = None if drawn is None else message.thinking_note
                reply.drawn_thinking = drawn or 0

        self._replace(*self._thinking_span(index), draw)

    def _toggle_thinking(self, key: str) -> None:
        """Opens or closes a thinking section; its note line stays where it is."""
        self._open_thinking ^= {key}
        if key not in self._keys or not self._show_thinking:
            return
        value = self.verticalScrollBar().value()
        # What opens below the note must not pull the view down to the bottom.
        self._following = False
        reply = self._reply
        self._redraw_thinking(self._keys.index(key), reply is None or reply.key != key)
        self._scroll_to(value)

    def set_show_thinking(self, show: bool) -> None:
        """Shows or hides every thinking section; the thinking is kept either way."""
        if show == self._show_thinking:
            return
        self._show_thinking = show
        follow = self._at_bottom()
        reply = self._reply
        for index, key in enumerate(self._keys):
            message = self._message(key)
            if message is not None and message.has_thinking:
                self._redraw_thinking(index, reply is None or reply.key != key)
        if follow:
            self._scroll_to_bottom()

    # The reply being generated.

    def begin_reply(
        self, heading: str, key: str = "", *, versions: tuple[int, int] = (1, 1)
    ) -> None:
        """Starts an empty reply that `append_thinking` and `append_reply` grow."""
        follow = self._at_bottom()
        message = MessageView(self._new_key(key), heading, "", False, versions=versions)
        cursor = self._start_message(message)
        body = cursor.position()
        self._reply = _Reply(message.key, thinking_end=body - 1, tail=body, end=body)
        if follow:
            self._scroll_to_bottom()

    def append_reply(self, text: str) -> None:
        """Adds text to the answer; it reaches the screen within RENDER_INTERVAL_MS."""
        if self._reply is None:
            return
        self._reply.answer += text
        self._schedule_render()

    def append_thinking(self, text: str) -> None:
        """Adds text to the reply's thinking (which comes before its answer); it
        reaches the screen within RENDER_INTERVAL_MS if the section is open."""
        if self._reply is None:
            return
        self._reply.thinking += text
        self._schedule_render()

    def set_thinking_note(self, text: str) -> None:
        """Sets the note line of the reply's thinking ("Thinking… 12 tokens, 0.8 s")."""
        if self._reply is None:
            return
        self._reply.thinking_note = text
        self._schedule_render()

    def _schedule_render(self) -> None:
        if not self._render_timer.isActive():
            self._render_timer.start()

    def _render_reply(self, final: bool = False) -> None:
        """Draws what arrived since the last render: the thinking's note and new
        text, the answer's blocks completed since then once, and its last block again."""
        reply = self._reply
        if reply is None:
            return
        follow = self._at_bottom()
        self._render_thinking(reply, final)
        if final or len(reply.answer) != reply.rendered:
            reply.rendered = len(reply.answer)
            if final or not self._extend_open_code(reply):
                self._render_answer(reply, final)
        if follow:
            self._scroll_to_bottom()

    def _render_thinking(self, reply: _Reply, final: bool) -> None:
        if not (self._show_thinking and reply.has_thinking):
            return
        index = len(self._keys) - 1  # the reply is the last message
        if reply.drawn_note is None:
            self._redraw_thinking(index, final)
            return
        if reply.drawn_note != reply.thinking_note:
            note = self._doc.findBlock(self._heading_end(index) + 1)
            start = note.position()
            self._replace(
                start,
                start + note.length() - 1,
                lambda cursor: self._insert_thinking_note(cursor, reply.key, reply.thinking_note),
            )
            reply.drawn_note = reply.thinking_note
        if reply.key in self._open_thinking:

            def add(cursor: QTextCursor) -> None:
                reply.drawn_thinking = self._insert_thinking_text(
                    cursor, reply.thinking, reply.drawn_thinking, final
                )

            self._replace(reply.thinking_end, reply.thinking_end, add)

    def _render_answer(self, reply: _Reply, final: bool) -> None:
        """Renders the answer's blocks completed since the last time once, and
        its last block again."""
        reply.open_code = None
        blocks = split_blocks(reply.answer[reply.settled :])
        cursor = QTextCursor(self._doc)
        cursor.setPosition(reply.tail)
        cursor.setPosition(reply.end, QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()
        look = self._look()
        settled = blocks if final else blocks[:-1]
        for block in settled:
            self._render_block(cursor, f"{reply.key}/{reply.blocks}", block, look)
            reply.settled += block.length
            reply.blocks += 1
        reply.tail = cursor.position()
        if not final and blocks:
            self._render_block(cursor, f"{reply.key}/{reply.blocks}", blocks[-1], look)
        reply.end = cursor.position()
        if not final and blocks and blocks[-1].kind == "code":
            self._remember_open_code(reply, blocks[-1])

    def _remember_open_code(self, reply: _Reply, block: Block) -> None:
        """Notes where a code block still being written ends, so that the next
        renders add its new lines instead of drawing it all again."""
        tail = reply.answer[reply.settled :]
        fence_line = tail.splitlines(keepends=True)[0]
        if fence_line == fence_line.rstrip("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
            return  # the fence line is still being written: its language may change
        body = reply.settled + len(fence_line)
        last_line = body + block.text.rfind("\n") + 1
        position = last_line_start(self._doc, reply.end)
        reply.open_code = (body, last_line, position, block)

    def _extend_open_code(self, reply: _Reply) -> bool:
        """Adds what arrived to the code block being written; False when the
        block closed or there is none, and it must be drawn whole."""
        if reply.open_code is None:
            return False
        body, last_line, position, block = reply.open_code
        text = reply.answer[last_line:]
        if any(closes(line, block.fence) for line in text.splitlines()):
            return False
        reply.end = extend_code(
            self._doc, position, reply.end, text, block.language, self._look().dark
        )
        self._code[f"{reply.key}/{reply.blocks}"] = reply.answer[body:].removesuffix("\n")
        last_line += text.rfind("\n") + 1
        position = last_line_start(self._doc, reply.end)
        reply.open_code = (body, last_line, position, block)
        return True

    def flush(self) -> None:
        """Draws what the reply received so far now, rather than on the next tick."""
        if self._render_timer.isActive():
            self._render_timer.stop()
            self._render_reply()

    def end_reply(self, footer: str) -> None:
        """Closes the reply with a quiet line of figures under it."""
        reply = self._reply
        if reply is None:
            return
        self._render_timer.stop()
        self._render_reply(final=True)
        follow = self._at_bottom()
        cursor = QTextCursor(self._doc)
        cursor.setPosition(reply.end)
        self._insert_footer(cursor, footer)
        finished = self._message(reply.key)
        assert finished is not None
        self._messages[reply.key] = replace(finished, footer=footer)
        self._last_end = cursor.position()
        self._reply = None
        if follow:
            self._scroll_to_bottom()

    def resume_reply(self, key: str) -> None:
        """Reopens the last reply, its thinking included, so that `append_reply`
        (or `append_thinking`) continues it."""
        if self._reply is not None or not self._keys or self._keys[-1] != key:
            return
        message = self._messages[key]
        self.truncate_from(key)
        self.begin_reply(message.heading, key, versions=message.versions)
        assert self._reply is not None
        self._reply.thinking = message.thinking
        self._reply.thinking_note = message.thinking_note
        self.append_reply(message.text)

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
        once rather than after every insertion. The view goes to the bottom,
        except while version_requested is handled: then the branch shown is
        the other version's, and the paged message stays where it was.
        """
        paging = self._paging
        if paging is not None and paging[0] < len(messages):
            shown = max(shown, len(messages) - paging[0])
        else:
            paging = None
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
            self._draw_message(message)
        self._draw_marker()
        self.setDocument(self._doc)
        # Lays the document out down to its end, so the bottom is known.
        self.moveCursor(QTextCursor.MoveOperation.End)
        self.ensureCursorVisible()
        if paging is None:
            self.follow()
        else:
            index, offset = paging
            top = self._block_top(self._starts[index - len(self._hidden)])
            self._scroll_to(round(top - offset))

    def show_earlier(self) -> None:
        """Draws the messages kept behind the "earlier messages" link (not while
        a reply is being written: drawing everything again would lose it)."""
        if not self._hidden or self._reply is not None:
            return
        bar = self.verticalScrollBar()
        from_bottom = bar.maximum() - bar.value()
        everything = self._hidden + [self._messages[key] for key in self._keys]
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
        if key not in self._keys or self._reply is not None:
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
            self._messages.pop(gone, None)
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
        if self._reply is not None or not self._keys or not (regenerate or continue_):
            return
        key = self._keys[-1]
        if self._messages[key].from_person:
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
            elif action in VERSION_STEPS:
                self._request_version(key, VERSION_STEPS[action])
            elif action == "thinking":
                self._toggle_thinking(key)
            elif action == "earlier":
                self.show_earlier()
        elif scheme in ("http", "https", "mailto"):
            QDesktopServices.openUrl(url)
