"""Markdown for the chat view, rendered block by block.

A reply is cut into blocks: fenced code blocks, and runs of prose that end
where a blank line is followed by a line that starts a new block. Blocks
before the last can no longer change while a reply streams, so the view
renders them once and re-renders only the last. Prose goes through Qt's own
markdown reader (raw HTML is shown as text, never interpreted); code is
highlighted with Pygments and set on its own background, with a copy link above it.

markdown-it and Pygments are imported when a message is first rendered and a
code block first highlighted: an empty window is painted without them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from PySide6.QtGui import (
    QColor,
    QFont,
    QFontDatabase,
    QTextBlockFormat,
    QTextCharFormat,
    QTextCursor,
    QTextDocument,
)

if TYPE_CHECKING:
    from markdown_it import MarkdownIt
    from pygments.lexer import Lexer
    from pygments.token import _TokenType

_MARKDOWN = QTextDocument.MarkdownFeature(
    QTextDocument.MarkdownFeature.MarkdownDialectGitHub.value
    | QTextDocument.MarkdownFeature.MarkdownNoHTML.value
)
LIGHT_STYLE = "default"
DARK_STYLE = "github-dark"
COPY_CODE_SCHEME = "kvchat-code"


@dataclass(frozen=True)
class Block:
    """A piece of a message. `text` is markdown for prose, the bare code for code.

    `length` is how many characters of the message the block spans; `fence`
    is the backticks or tildes that opened a code block.
    """

    kind: str
    text: str
    length: int
    language: str = ""
    closed: bool = True
    fence: str = ""


def closes(line: str, fence: str) -> bool:
    """Whether `line` closes a code block opened with `fence`."""
    stripped = line.strip()
    return (
        len(line) - len(line.lstrip(" ")) <= 3
        and stripped.startswith(fence[0] * len(fence))
        and not stripped.strip(fence[0])
    )


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark")


# Line ends as markdown-it counts them (it reads \r\n and \r as \n too).
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def split_blocks(text: str) -> list[Block]:
    """Cuts a message into blocks; joined, their spans cover the text exactly.

    The cut follows markdown-it's top-level block tokens, so a fenced code
    block inside a list item stays in its list (the list is one prose
    block); a top-level fence is a code block of its own. Prose breaks only
    where a blank line ends a block, so a paragraph that runs into a list
    stays with it, and splitting a suffix that starts at a block gives the
    same blocks.
    """
    lines = _LINE.findall(text)
    starts = [
        token
        for token in _parser().parse(text)
        if token.level == 0 and token.map is not None and token.nesting >= 0
    ]
    if not starts:  # blank lines only
        return [Block("prose", text, len(text))] if text else []
    blocks: list[Block] = []
    prose = ""
    for index, token in enumerate(starts):
        assert token.map is not None
        first = 0 if index == 0 else token.map[0]
        following = starts[index + 1].map if index + 1 < len(starts) else None
        last = following[0] if following is not None else len(lines)
        region = "".join(lines[first:last])
        if token.type != "fence":
            prose += region
            if _ends_blank(region):
                blocks.append(Block("prose", prose, len(prose)))
                prose = ""
            continue
        if prose:
            blocks.append(Block("prose", prose, len(prose)))
            prose = ""
        fence = token.markup
        body = lines[token.map[0] + 1 : token.map[1]]
        closed = bool(body) and closes(body[-1], fence)
        if closed:
            body = body[:-1]
        # The fence's own indentation comes off each line, as markdown-it's content does.
        code = token.content if token.content or not body else "".join(body)
        blocks.append(
            Block(
                "code",
                code.removesuffix("\n"),
                len(region),
                token.info.split()[0] if token.info.strip() else "",
                closed,
                fence,
            )
        )
    if prose:
        blocks.append(Block("prose", prose, len(prose)))
    return blocks


def _ends_blank(region: str) -> bool:
    """Whether a block's lines end with a blank line (where prose may break)."""
    tail = _LINE.findall(region)
    return len(tail) > 1 and not tail[-1].strip()


def _hard_breaks(text: str) -> str:
    """A single newline in a reply is a line break, as people mean it in a chat
    (plain markdown would join the lines into one)."""
    return re.sub(r"(?<=[^\s\\])\n(?=[^\n])", "  \n", text)


@lru_cache(maxsize=64)
def _lexer(language: str) -> Lexer:
    from pygments.lexers import TextLexer, get_lexer_by_name
    from pygments.util import ClassNotFound

    if language:
        try:
            lexer: Lexer = get_lexer_by_name(language, stripnl=False, ensurenl=False)
            return lexer
        except ClassNotFound:
            pass
    plain: Lexer = TextLexer(stripnl=False, ensurenl=False)
    return plain


@lru_cache(maxsize=4)
def _style(dark: bool) -> tuple[QColor, dict[_TokenType, QTextCharFormat]]:
    """The code background, and a monospace format per token type."""
    from pygments.styles import get_style_by_name

    style = get_style_by_name(DARK_STYLE if dark else LIGHT_STYLE)
    mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
    formats: dict[_TokenType, QTextCharFormat] = {}
    for token_type, spec in style:
        char = QTextCharFormat()
        char.setFontFamilies(mono.families())
        char.setFontFixedPitch(True)
        if spec["color"]:
            char.setForeground(QColor(f"#{spec['color']}"))
        if spec["bold"]:
            char.setFontWeight(QFont.Weight.Bold)
        if spec["italic"]:
            char.setFontItalic(True)
        formats[token_type] = char
    return QColor(style.background_color), formats


def _format_for(formats: dict[_TokenType, QTextCharFormat], token: _TokenType) -> QTextCharFormat:
    while token not in formats and token.parent is not None:
        token = token.parent
    return formats[token]


def highlighted(code: str, language: str, dark: bool) -> Iterator[tuple[str, QTextCharFormat]]:
    """The code as runs of text with their highlighting formats."""
    _background, formats = _style(dark)
    for token, value in _lexer(language.lower()).get_tokens(code):
        yield value, _format_for(formats, token)


def plain_block(top_margin: float = 0.0) -> QTextBlockFormat:
    block = QTextBlockFormat()
    block.setTopMargin(top_margin)
    block.setLeftMargin(6)
    block.setRightMargin(6)
    return block


def start_block(cursor: QTextCursor, top_margin: float = 0.0) -> bool:
    """Puts the cursor at the start of a fresh block, reusing an empty one.

    Returns whether a block was inserted.
    """
    if cursor.block().length() > 1 or cursor.currentFrame() != cursor.document().rootFrame():
        cursor.insertBlock(plain_block(top_margin), QTextCharFormat())
        return True
    cursor.setBlockFormat(plain_block(top_margin))
    cursor.setCharFormat(QTextCharFormat())
    return False


def _keep_margins(cursor: QTextCursor, start: int) -> None:
    """Gives the blocks markdown made from `start` on the prose margins of the
    first: a line break there starts a block of its own, with none."""
    first = plain_block()
    margins = QTextBlockFormat()
    margins.setLeftMargin(first.leftMargin())
    margins.setRightMargin(first.rightMargin())
    block = cursor.document().findBlock(start)
    while block.isValid() and block.position() <= cursor.position():
        if not block.blockFormat().leftMargin():  # a quote's or a list's own margin stays
            QTextCursor(block).mergeBlockFormat(margins)
        block = block.next()


def _drop_empty_block(cursor: QTextCursor, start: int) -> None:
    """Removes the block inserted at `start` if the content went after it, as
    a list does, rather than into it."""
    document = cursor.document()
    block = document.findBlock(start)
    if block.position() == start and block.length() == 1 and block.next().isValid():
        remover = QTextCursor(document)
        remover.setPosition(start - 1)
        remover.setPosition(start, QTextCursor.MoveMode.KeepAnchor)
        remover.removeSelectedText()


@dataclass(frozen=True)
class Look:
    """What rendering takes from the palette."""

    dark: bool
    quiet: QColor
    link: QColor
    small_point_size: float


def render_block(cursor: QTextCursor, block: Block, code_id: str, look: Look) -> None:
    """Renders one block at the cursor, which ends after it."""
    inserted = start_block(cursor, 6)
    start = cursor.position()
    if block.kind == "prose":
        text = _hard_breaks(block.text.strip("\n"))
        if text:
            cursor.insertMarkdown(text, _MARKDOWN)
            _keep_margins(cursor, start)
    else:
        _render_code(cursor, block, code_id, look)
    if inserted:
        _drop_empty_block(cursor, start)


def _code_block_format(
    background: QColor, top: float = 0.0, bottom: float = 0.0
) -> QTextBlockFormat:
    block = QTextBlockFormat()
    block.setBackground(background)
    # Every line of the code indented alike, and no line wrapped: a long one
    # would go on at column 0 and lose its indentation; the view scrolls
    # sideways instead.
    block.setLeftMargin(14)
    block.setRightMargin(6)
    block.setNonBreakableLines(True)
    block.setTopMargin(top)
    block.setBottomMargin(bottom)
    return block


def _render_code(cursor: QTextCursor, block: Block, code_id: str, look: Look) -> None:
    """A header line (the language and a copy link), then the highlighted code,
    all on the code background.

    Plain blocks with a background rather than a frame: Qt lays out a
    document's frames on every change, so frames would make a token cost
    more as the conversation grows.
    """
    background, _formats = _style(look.dark)
    cursor.setBlockFormat(_code_block_format(background, top=6))
    header = QTextCharFormat()
    header.setForeground(look.quiet)
    header.setFontPointSize(look.small_point_size)
    cursor.insertText(f"{block.language or 'code'}   ", header)
    link = QTextCharFormat(header)
    link.setAnchor(True)
    link.setAnchorHref(f"{COPY_CODE_SCHEME}:{code_id}")
    link.setForeground(look.link)
    cursor.insertText("Copy", link)
    cursor.insertBlock(_code_block_format(background), QTextCharFormat())
    for value, char in highlighted(block.text, block.language, look.dark):
        cursor.insertText(value, char)


def extend_code(
    document: QTextDocument, line_start: int, end: int, text: str, language: str, dark: bool
) -> int:
    """Redraws a code block being written from its last line on, without
    drawing the lines before again.

    `line_start` is where the block's last line starts in the document, `end`
    where the block ends, and `text` the block's text from that line on. Each
    call highlights only that text (so a construct spanning lines may be
    coloured as plain until the block is drawn whole, once it closes).
    Returns where the block ends now.
    """
    cursor = QTextCursor(document)
    cursor.setPosition(line_start)
    cursor.setPosition(end, QTextCursor.MoveMode.KeepAnchor)
    cursor.removeSelectedText()
    for value, char in highlighted(text, language, dark):
        cursor.insertText(value, char)
    return cursor.position()


def last_line_start(document: QTextDocument, end: int) -> int:
    """Where the line that ends at `end` starts."""
    return document.findBlock(end).position()
