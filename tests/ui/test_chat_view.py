import random

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QFont, QGuiApplication, QTextCursor
from pytestqt.qtbot import QtBot

import kvchat.ui.chat_view
import kvchat.ui.markdown
from kvchat.ui.chat_view import RENDER_INTERVAL_MS, ChatView, MessageView
from kvchat.ui.markdown import Block

REPLY = """Here is a **function** and `inline code`:

```python
def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)
```

Then a list:

1. first
2. second

<b>not markup</b> and a [link](https://example.org).
"""


def _view(qtbot: QtBot) -> ChatView:
    view = ChatView()
    qtbot.addWidget(view)
    view.resize(500, 400)
    view.show()
    return view


def _link_point(view: ChatView, href: str) -> QPoint:
    """Where on screen the link with this href is drawn."""
    block = view.document().begin()
    while block.isValid():
        iterator = block.begin()
        while not iterator.atEnd():
            fragment = iterator.fragment()
            if fragment.charFormat().anchorHref() == href:
                cursor = QTextCursor(view.document())
                cursor.setPosition(fragment.position() + 1)
                view.setTextCursor(cursor)
                view.ensureCursorVisible()
                return view.cursorRect(cursor).center()
            iterator += 1
        block = block.next()
    raise AssertionError(f"no link {href}")


def _click_link(qtbot: QtBot, view: ChatView, href: str) -> None:
    point = _link_point(view, href)
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=point)


def test_reply_grows_in_place(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.add_message("You", "Hi <b>there</b>", from_person=True)
    view.begin_reply("Model")
    for piece in ("Hel", "lo", "\nsecond line", " 🎉"):
        view.append_reply(piece)
    assert view.reply_text() == "Hello\nsecond line 🎉"
    assert view.replying
    view.end_reply("3 tokens")
    text = view.toPlainText()
    # The person's text is shown as typed, never interpreted as markup.
    assert "Hi <b>there</b>" in text
    assert text.endswith("Model   Copy\nHello\nsecond line 🎉\n3 tokens")
    assert view.message_count == 2
    assert not view.replying


def test_every_line_of_a_reply_starts_at_the_same_margin(qtbot: QtBot) -> None:
    # A poem's single newlines are line breaks, each a block of its own in Qt's
    # markdown: the second and later lines once lost the margin of the first.
    view = _view(qtbot)
    view.add_message("You", "A poem, please.", from_person=True)
    view.begin_reply("Model")
    lines = ["In the realm of memory,", "A new tale with no edges,", "To cherish forevermore."]
    view.append_reply("\n".join(lines) + "\n\nAnd a paragraph after.")
    view.end_reply("")
    margins = set()
    for line in [*lines, "And a paragraph after.", "A poem, please."]:
        block = view.document().findBlock(view.toPlainText().index(line))
        margins.add(block.blockFormat().leftMargin())
    assert margins == {6.0}


def test_reply_is_rendered_as_markdown_with_highlighted_code(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.add_message("Model", REPLY, key="r1")
    text = view.toPlainText()
    assert "Here is a function and inline code:" in text  # emphasis rendered, not shown
    assert "<b>not markup</b>" in text  # raw HTML in a reply stays text
    assert "def fib(n: int) -> int:" in text
    assert "```" not in text
    # The code sits on its own background, in a fixed-pitch font with more than one colour.
    code_lines = []
    colours = set()
    block = view.document().begin()
    while block.isValid():
        if block.blockFormat().background().style() != Qt.BrushStyle.NoBrush:
            code_lines.append(block.text())
            fragments = block.begin()
            while not fragments.atEnd() and "fib" in block.text():
                fmt = fragments.fragment().charFormat()
                assert fmt.fontFixedPitch()
                colours.add(fmt.foreground().color().name())
                fragments += 1
        block = block.next()
    assert code_lines == [
        "python   Copy",
        "def fib(n: int) -> int:",
        "    return n if n < 2 else fib(n - 1) + fib(n - 2)",
    ]
    assert len(colours) >= 3
    # "function" is bold.
    cursor = view.document().find("function")
    assert cursor.charFormat().fontWeight() == QFont.Weight.Bold


def test_copy_links_copy_a_code_block_and_a_message(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.add_message("Model", REPLY, key="r1")
    assert view.copied_note == ""
    _click_link(qtbot, view, "kvchat-code:r1/1")
    code = "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)"
    assert QGuiApplication.clipboard().text() == code
    assert view.copied_note == "Copied"  # said for a moment, by the pointer
    _click_link(qtbot, view, "kvchat-action:copy/r1")
    assert QGuiApplication.clipboard().text() == REPLY


def test_a_long_code_line_keeps_its_indentation_and_scrolls_sideways(qtbot: QtBot) -> None:
    view = _view(qtbot)
    long_line = "    result = " + " + ".join(f"value_{i}" for i in range(60))
    view.add_message("Model", f"```python\ndef f():\n{long_line}\n```", key="r1")
    qtbot.wait(1)
    block = view.document().findBlock(view.toPlainText().index("result"))
    assert block.blockFormat().nonBreakableLines()
    assert block.layout().lineCount() == 1  # not wrapped back to column 0
    assert view.horizontalScrollBar().maximum() > 0


def test_actions_emit_what_was_clicked(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.add_message("You", "question", from_person=True, key="u1")
    view.add_message("Model", "answer", key="r1", footer="2 tokens")
    view.set_reply_actions(regenerate=True, continue_=True)
    with qtbot.waitSignal(view.edit_requested) as edit:
        _click_link(qtbot, view, "kvchat-action:edit/u1")
    assert edit.args == ["u1"]
    with qtbot.waitSignal(view.regenerate_requested) as regenerate:
        _click_link(qtbot, view, "kvchat-action:regenerate/r1")
    assert regenerate.args == ["r1"]
    with qtbot.waitSignal(view.continue_requested) as cont:
        _click_link(qtbot, view, "kvchat-action:continue/r1")
    assert cont.args == ["r1"]
    assert view.toPlainText().endswith("2 tokens\n   ↻ Regenerate   → Continue")
    # A new message takes the actions away from the reply before it.
    view.add_message("You", "next", from_person=True, key="u2")
    assert "Regenerate" not in view.toPlainText()
    assert view.toPlainText().endswith("2 tokens\nYou   Copy   Edit\nnext")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_streaming_in_any_pieces_ends_as_a_finished_message_would(qtbot: QtBot, seed: int) -> None:
    finished = _view(qtbot)
    finished.add_message("Model", REPLY, key="r")
    streamed = _view(qtbot)
    streamed.begin_reply("Model", key="r")
    chooser = random.Random(seed)
    position = 0
    while position < len(REPLY):
        step = chooser.randint(1, 12)
        streamed.append_reply(REPLY[position : position + step])
        position += step
        if chooser.random() < 0.3:
            streamed.flush()
    streamed.end_reply("")
    assert streamed.toPlainText() == finished.toPlainText()
    assert streamed.toHtml() == finished.toHtml()


def test_only_the_block_being_written_is_rendered_again(
    qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered: list[Block] = []
    real = kvchat.ui.chat_view.render_block

    def counting(cursor: QTextCursor, block: Block, code_id: str, look: object) -> None:
        rendered.append(block)
        real(cursor, block, code_id, look)  # type: ignore[arg-type]

    monkeypatch.setattr(kvchat.ui.chat_view, "render_block", counting)
    view = _view(qtbot)
    view.add_message("You", "old " * 50, from_person=True)
    view.begin_reply("Model")
    paragraphs = 60
    for index in range(paragraphs):
        view.append_reply(f"Paragraph {index} grows")
        view.append_reply(" word by word.\n\n")
        view.flush()
    view.end_reply("")
    # Each flush renders the paragraphs completed since the last one once, and
    # the one being written; nothing before it is rendered again.
    assert len(rendered) <= 2 * paragraphs + 1
    assert view.toPlainText().count("Paragraph") == paragraphs


def test_a_long_code_block_being_written_is_drawn_line_by_line(
    qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    highlighted: list[int] = []
    real = kvchat.ui.markdown.highlighted

    def counting(code: str, language: str, dark: bool) -> object:
        highlighted.append(len(code))
        return real(code, language, dark)

    monkeypatch.setattr(kvchat.ui.markdown, "highlighted", counting)
    view = _view(qtbot)
    view.begin_reply("Model", key="r")
    view.append_reply("Here:\n\n```python\n")
    lines = [f"value_{index} = {index} * 2  # line {index}\n" for index in range(400)]
    for line in lines:
        view.append_reply(line[:10])
        view.flush()
        view.append_reply(line[10:])
        view.flush()
    # Each render highlights what arrived and the line it continues, not the block.
    longest_line = max(len(line) for line in lines)
    assert max(highlighted) <= 2 * longest_line
    # The copy link has the whole block while it is being written.
    _click_link(qtbot, view, "kvchat-code:r/1")
    assert QGuiApplication.clipboard().text() == "".join(lines).removesuffix("\n")
    highlighted.clear()
    view.append_reply("```\nDone.")
    view.end_reply("")
    # Closed: drawn whole once, now that multi-line constructs can be coloured right.
    assert highlighted == [len("".join(lines)) - 1]
    finished = _view(qtbot)
    finished.add_message("Model", view.message_text("r"), key="r")
    assert view.toHtml() == finished.toHtml()


def test_rendering_waits_for_the_next_tick(qtbot: QtBot, monkeypatch: pytest.MonkeyPatch) -> None:
    renders: list[int] = []
    view = _view(qtbot)
    real = view._render_reply
    monkeypatch.setattr(view, "_render_reply", lambda final=False: (renders.append(1), real(final)))
    view._render_timer.timeout.disconnect()
    view._render_timer.timeout.connect(view._render_reply)
    view.begin_reply("Model")
    for _ in range(200):
        view.append_reply("token ")
    assert renders == []  # 200 tokens inside one interval: not one render yet
    qtbot.waitUntil(lambda: len(renders) == 1, timeout=10 * RENDER_INTERVAL_MS)
    assert "token token" in view.toPlainText()


def test_appending_keeps_the_view_at_the_bottom(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.resize(300, 200)
    view.begin_reply("Model")
    for index in range(200):
        view.append_reply(f"line {index}\n")
    bar = view.verticalScrollBar()
    qtbot.waitUntil(lambda: "line 199" in view.toPlainText())
    assert bar.maximum() > 0
    assert bar.value() == bar.maximum()


def _conversation(count: int) -> list[MessageView]:
    return [
        MessageView(
            f"k{index}",
            "You" if index % 2 == 0 else "Model",
            f"message {index}",
            index % 2 == 0,
            "" if index % 2 == 0 else f"{index} tokens",
        )
        for index in range(count)
    ]


def test_truncating_removes_a_message_and_all_after_it(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.show_conversation(_conversation(6))
    view.truncate_from("k2")
    assert view.keys == ["k0", "k1"]
    assert view.toPlainText() == "You   Copy   Edit\nmessage 0\nModel   Copy\nmessage 1\n1 tokens"
    view.add_message("You", "edited", from_person=True, key="k2b")
    assert view.toPlainText().endswith("1 tokens\nYou   Copy   Edit\nedited")


def test_the_models_view_is_marked_and_moves(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.show_conversation(_conversation(8), view_start=2)
    lines = view.toPlainText().splitlines()
    marker = next(i for i, line in enumerate(lines) if "view starts here" in line)
    assert lines[marker + 1 : marker + 3] == ["You   Copy   Edit", "message 2"]
    assert "the 2 messages above" in lines[marker]
    view.set_view_start(4)
    lines = view.toPlainText().splitlines()
    (marker,) = [i for i, line in enumerate(lines) if "view starts here" in line]
    assert lines[marker + 1 : marker + 3] == ["You   Copy   Edit", "message 4"]
    # Positions after the marker are still right: truncating and appending work.
    view.truncate_from("k6")
    view.add_message("You", "new", from_person=True, key="n")
    assert view.toPlainText().endswith("message 5\n5 tokens\nYou   Copy   Edit\nnew")
    view.set_view_start(0)
    assert "view starts here" not in view.toPlainText()


def test_a_long_conversation_opens_with_its_end_and_shows_the_rest_on_request(
    qtbot: QtBot,
) -> None:
    view = _view(qtbot)
    view.show_conversation(_conversation(300), view_start=10, shown=50)
    assert view.message_count == 300
    text = view.toPlainText()
    assert text.startswith("250 earlier messages not shown. The model no longer sees the first 10")
    assert "message 249\n" not in text and "message 250" in text
    bar = view.verticalScrollBar()
    assert bar.value() == bar.maximum()
    _click_link(qtbot, view, "kvchat-action:earlier/")
    text = view.toPlainText()
    assert text.startswith("You   Copy   Edit\nmessage 0\n")
    assert "the 10 messages above left its context" in text
    assert text.endswith("message 299\n299 tokens")
    assert view.keys == [f"k{index}" for index in range(300)]


def test_continuing_a_reply_reopens_it(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.add_message("You", "count", from_person=True, key="u")
    view.add_message("Model", "one two", key="r", footer="stopped at the token limit")
    view.resume_reply("r")
    assert view.replying and view.reply_text() == "one two"
    view.append_reply(" three")
    view.end_reply("done")
    assert view.toPlainText().endswith("Model   Copy\none two three\ndone")
    assert view.message_text("r") == "one two three"


def _bottom(view: ChatView) -> bool:
    bar = view.verticalScrollBar()
    return bar.maximum() > 0 and bar.value() >= bar.maximum() - 4


def test_the_view_follows_until_the_person_scrolls_up(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.resize(500, 300)
    for index in range(20):
        view.add_message("You", f"question {index}", from_person=True)
        view.add_message("Model", "answer " * 40)
    assert _bottom(view) and not view.jump_button.isVisible()
    # Less room (the composer grows, a panel opens): the bottom stays in view.
    view.resize(500, 180)
    qtbot.wait(1)
    assert _bottom(view)
    # Scrolled up: a streaming reply does not pull the view down, and the
    # button that does appears.
    bar = view.verticalScrollBar()
    bar.setValue(bar.maximum() // 2)
    assert view.jump_button.isVisible()
    view.begin_reply("Model")
    view.append_reply("more " * 200)
    qtbot.wait(80)
    assert not _bottom(view)
    view.end_reply("")
    view.jump_button.click()
    assert _bottom(view) and not view.jump_button.isVisible()
    # Scrolled up again, the person's own message always brings the view down.
    bar.setValue(0)
    view.add_message("You", "a new question", from_person=True)
    assert _bottom(view)
    view.begin_reply("Model")
    view.append_reply("streamed " * 200)
    qtbot.wait(80)
    assert _bottom(view)
    view.end_reply("")
