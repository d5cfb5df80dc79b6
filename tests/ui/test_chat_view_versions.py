"""The chat view's version pager, thinking sections and readable width."""

import random

import pytest
from PySide6.QtCore import QCoreApplication, QPoint, QPointF, Qt
from PySide6.QtGui import QGuiApplication, QPalette, QTextBlock, QTextCursor, QWheelEvent
from PySide6.QtWidgets import QWidget
from pytestqt.qtbot import QtBot

from kvchat.ui.chat_view import THINKING_BLOCK, ChatView, MessageView
from tests.ui.test_chat_view import _click_link, _view

THINKING = "\nThe person asks for a count.\nOne, then two.\n\nThat should do.\n"
NOTE = "Thought for 14 tokens, 1.2 s"
TOGGLE = "kvchat-action:thinking/r"


def _hrefs(view: ChatView) -> set[str]:
    """Every link in the document."""
    found = set()
    block = view.document().begin()
    while block.isValid():
        iterator = block.begin()
        while not iterator.atEnd():
            href = iterator.fragment().charFormat().anchorHref()
            if href:
                found.add(href)
            iterator += 1
        block = block.next()
    return found


def _block_with(view: ChatView, text: str) -> QTextBlock:
    block = view.document().findBlock(view.toPlainText().index(text))
    assert block.isValid()
    return block


def _reply(key: str = "r", *, thinking: str = THINKING, note: str = NOTE) -> MessageView:
    return MessageView(key, "Model", "The answer.", False, "9 tokens", (1, 1), thinking, note)


# Versions.


def test_the_pager_shows_which_version_and_asks_for_the_others(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.add_message("You", "count", from_person=True, key="u", versions=(1, 2))
    view.add_message("Model", "one two", key="r", footer="2 tokens", versions=(2, 3))
    lines = view.toPlainText().splitlines()
    assert lines[0] == "You    ‹ 1 / 2 ›    Copy   Edit"
    assert lines[2] == "Model    ‹ 2 / 3 ›    Copy"
    with qtbot.waitSignal(view.version_requested) as back:
        _click_link(qtbot, view, "kvchat-action:previous/r")
    assert back.args == ["r", -1]
    with qtbot.waitSignal(view.version_requested) as forward:
        _click_link(qtbot, view, "kvchat-action:next/r")
    assert forward.args == ["r", 1]
    with qtbot.waitSignal(view.version_requested) as person:
        _click_link(qtbot, view, "kvchat-action:next/u")
    assert person.args == ["u", 1]


def test_the_pager_ends_are_greyed_and_no_links(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.add_message("Model", "first", key="a", versions=(1, 3))
    view.add_message("Model", "last", key="b", versions=(3, 3))
    view.add_message("Model", "only", key="c")
    hrefs = _hrefs(view)
    assert "kvchat-action:next/a" in hrefs and "kvchat-action:previous/a" not in hrefs
    assert "kvchat-action:previous/b" in hrefs and "kvchat-action:next/b" not in hrefs
    assert not any(href.endswith("/c") and "copy" not in href for href in hrefs)
    assert "Model   Copy\nonly" in view.toPlainText()  # one version: no pager at all
    heading = _block_with(view, "‹ 1 / 3 ›")
    fragments = heading.begin()
    arrows = {}
    while not fragments.atEnd():
        fragment = fragments.fragment()
        if fragment.text().strip() in ("‹", "›"):
            arrows[fragment.text().strip()] = fragment.charFormat()
        fragments += 1
    assert not arrows["‹"].isAnchor() and arrows["›"].isAnchor()
    quiet = view.palette().color(QPalette.ColorRole.PlaceholderText)
    assert arrows["‹"].foreground().color().alphaF() < quiet.alphaF()
    assert arrows["›"].foreground().color() == view.palette().color(QPalette.ColorRole.Link)
    # Where the greyed arrow is drawn there is no link to click.
    cursor = QTextCursor(view.document())
    cursor.setPosition(heading.position() + heading.text().index("‹"))
    assert view.anchorAt(view.cursorRect(cursor).center()) == ""
    cursor.setPosition(heading.position() + heading.text().index("›"))
    assert view.anchorAt(view.cursorRect(cursor).center()) == "kvchat-action:next/a"


def test_versions_change_in_place_and_what_follows_still_works(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.show_conversation(
        [
            MessageView("u", "You", "count", True),
            MessageView("r", "Model", "one two", False, "2 tokens"),
            MessageView("u2", "You", "again", True),
            MessageView("r2", "Model", "three", False, "1 token"),
        ]
    )
    view.set_versions("r", 2, 2)
    view.set_versions("u2", 1, 3)
    assert view.toPlainText().splitlines()[2:7] == [
        "Model    ‹ 2 / 2 ›    Copy",
        "one two",
        "2 tokens",
        "You    ‹ 1 / 3 ›    Copy   Edit",
        "again",
    ]
    # The positions after the changed headings moved with them.
    view.truncate_from("r2")
    view.add_message("Model", "four", key="r3")
    assert view.toPlainText().endswith("You    ‹ 1 / 3 ›    Copy   Edit\nagain\nModel   Copy\nfour")
    view.set_versions("r", 1, 1)
    assert "Model   Copy\none two" in view.toPlainText()


def test_a_reply_being_written_has_its_pager(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.add_message("You", "count", from_person=True, key="u")
    view.begin_reply("Model", "r", versions=(3, 3))
    view.append_reply("one")
    view.flush()
    view.set_versions("r", 3, 4)
    view.append_reply(" two")
    view.end_reply("2 tokens")
    assert view.toPlainText().endswith("Model    ‹ 3 / 4 ›    Copy\none two\n2 tokens")


def _branch(count: int, changed: int, tag: str) -> list[MessageView]:
    """A long conversation; from `changed` on, messages of another branch."""
    return [
        MessageView(
            f"k{index}" if index < changed else f"{tag}{index}",
            "You" if index % 2 == 0 else "Model",
            f"message {index} of {tag if index >= changed else 'both'} " * 30,
            index % 2 == 0,
            versions=(2, 2) if index == changed else (1, 1),
        )
        for index in range(count)
    ]


def test_paging_keeps_the_paged_message_where_it_was(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.show_conversation(_branch(40, 21, "a"))
    key = "a21"
    top = view.document().find("message 21 of a").block()
    layout = view.document().documentLayout()
    bar = view.verticalScrollBar()
    bar.setValue(int(layout.blockBoundingRect(top).top()) - 60)
    # The controller shows the other version's branch while the click is handled.
    view.version_requested.connect(lambda _key, _step: view.show_conversation(_branch(40, 21, "b")))
    offset = layout.blockBoundingRect(top.previous()).top() - bar.value()
    _click_link(qtbot, view, f"kvchat-action:previous/{key}")
    heading = view.document().find("message 21 of b").block().previous()
    assert heading.text().startswith("Model    ‹ 2 / 2 ›")
    shown_at = view.document().documentLayout().blockBoundingRect(heading).top() - bar.value()
    assert abs(shown_at - offset) <= 1
    assert bar.value() < bar.maximum() and view.jump_button.isVisible()
    # Shown again for any other reason, a conversation opens at its end.
    view.show_conversation(_branch(40, 21, "c"))
    assert bar.value() == bar.maximum()


# Thinking.


def test_thinking_is_collapsed_to_a_note_and_opens_on_click(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.show_conversation([MessageView("u", "You", "count", True), _reply()])
    assert view.toPlainText().endswith(f"Model   Copy\n▸ {NOTE}\nThe answer.\n9 tokens")
    _click_link(qtbot, view, TOGGLE)
    assert view.toPlainText().endswith(
        f"Model   Copy\n▾ {NOTE}\nThe person asks for a count.\nOne, then two.\n\n"
        "That should do.\nThe answer.\n9 tokens"
    )
    # Set apart from the answer: indented, quiet, and marked as thinking.
    thinking = _block_with(view, "One, then two.")
    answer = _block_with(view, "The answer.")
    assert thinking.blockFormat().leftMargin() > answer.blockFormat().leftMargin()
    assert thinking.blockFormat().hasProperty(THINKING_BLOCK)
    assert not answer.blockFormat().hasProperty(THINKING_BLOCK)
    quiet = view.palette().color(QPalette.ColorRole.PlaceholderText)
    assert thinking.begin().fragment().charFormat().foreground().color() == quiet
    _click_link(qtbot, view, TOGGLE)
    assert view.toPlainText().endswith(f"Model   Copy\n▸ {NOTE}\nThe answer.\n9 tokens")
    # Copy has the answer only.
    _click_link(qtbot, view, "kvchat-action:copy/r")
    assert QGuiApplication.clipboard().text() == "The answer."


def test_opened_thinking_stays_open_when_the_conversation_is_shown_again(qtbot: QtBot) -> None:
    view = _view(qtbot)
    messages = [MessageView("u", "You", "count", True), _reply("r"), _reply("r2")]
    view.show_conversation(messages)
    _click_link(qtbot, view, TOGGLE)
    view.show_conversation(messages)
    text = view.toPlainText()
    assert f"▾ {NOTE}\nThe person asks" in text
    assert text.endswith(f"▸ {NOTE}\nThe answer.\n9 tokens")  # r2 was never opened


def test_thinking_can_be_hidden_and_shown_again(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.show_conversation([MessageView("u", "You", "count", True), _reply("r"), _reply("r2")])
    _click_link(qtbot, view, TOGGLE)
    shown = view.toPlainText()
    view.set_show_thinking(False)
    assert view.toPlainText() == (
        "You   Copy   Edit\ncount\nModel   Copy\nThe answer.\n9 tokens\n"
        "Model   Copy\nThe answer.\n9 tokens"
    )
    assert _hrefs(view) == {"kvchat-action:copy/u", "kvchat-action:edit/u"} | {
        f"kvchat-action:copy/{key}" for key in ("r", "r2")
    }
    # Hidden, it stays hidden in a conversation shown again and in a new reply.
    view.show_conversation([MessageView("u", "You", "count", True), _reply("r"), _reply("r2")])
    view.begin_reply("Model", "r3")
    view.append_thinking("hidden")
    view.set_thinking_note("Thinking… 1 tokens, 0.1 s")
    view.append_reply("Shown.")
    view.end_reply("")
    assert "hidden" not in view.toPlainText() and "Thinking" not in view.toPlainText()
    view.truncate_from("r3")
    view.set_show_thinking(True)
    assert view.toPlainText() == shown
    # Positions after the sections drawn again are still right.
    view.add_message("You", "next", from_person=True, key="u2")
    assert view.toPlainText().endswith("9 tokens\nYou   Copy   Edit\nnext")


def test_collapsed_streamed_thinking_changes_only_the_note(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.add_message("You", "count", from_person=True, key="u")
    view.begin_reply("Model", "r")
    changes: list[tuple[int, int, int]] = []
    view.document().contentsChange.connect(lambda *change: changes.append(change))
    pieces = THINKING.split(" ")
    for index, piece in enumerate(pieces):
        view.append_thinking(f"{piece} ")
        view.set_thinking_note(f"Thinking… {index + 1} tokens, 0.{index} s")
        view.flush()
    assert view.reply_thinking() == f"{THINKING} "
    assert view.reply_text() == ""
    note = f"▸ Thinking… {len(pieces)} tokens, 0.{len(pieces) - 1} s"
    assert view.toPlainText().endswith(f"Model   Copy\n{note}\n")
    # Each render wrote the note line again (took the old one out, put the new
    # one in) and nothing else; the first also put in the line break before it.
    note_start = view.toPlainText().index(note)
    assert len(changes) == 2 * len(pieces)
    assert {at for at, _, _ in changes} == {note_start - 1, note_start}
    assert max(max(removed, added) for _, removed, added in changes) <= len(note)


def test_open_streamed_thinking_is_added_to_not_drawn_again(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.show_conversation([MessageView(f"old{i}", "You", "old " * 50, True) for i in range(20)])
    view.begin_reply("Model", "r")
    view.append_thinking("Let me think.\n")
    view.flush()
    _click_link(qtbot, view, TOGGLE)
    changes: list[tuple[int, int]] = []
    view.document().contentsChange.connect(
        lambda _at, removed, added: changes.append((removed, added))
    )
    lines = [f"Step {index}: weigh option {index} against the rest.\n" for index in range(300)]
    for line in lines:
        view.append_thinking(line)
        view.flush()
    # What each render took out and put in is a line's worth, however long
    # the thinking already is: the note stays, and only the new text is added.
    assert max(removed for removed, _ in changes) == 0
    assert max(added for _, added in changes) <= max(len(line) for line in lines)
    assert view.toPlainText().endswith("Step 299: weigh option 299 against the rest.\n")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_streamed_thinking_and_answer_end_as_a_finished_reply_would(
    qtbot: QtBot, seed: int
) -> None:
    answer = "Counting:\n\n```python\nprint(1, 2)\n```\n\nDone **now**.\n"
    finished = _view(qtbot)
    finished.add_message(
        "Model", answer, key="r", footer="7 tokens", thinking=THINKING * 3, thinking_note=NOTE
    )
    _click_link(qtbot, finished, TOGGLE)
    streamed = _view(qtbot)
    streamed.begin_reply("Model", "r")
    chooser = random.Random(seed)
    opened = False
    for text, append in ((THINKING * 3, streamed.append_thinking), (answer, streamed.append_reply)):
        position = 0
        while position < len(text):
            step = chooser.randint(1, 9)
            append(text[position : position + step])
            position += step
            if append == streamed.append_thinking:
                streamed.set_thinking_note(f"Thinking… {position} tokens")
            if chooser.random() < 0.4:
                streamed.flush()
            if position > 40 and not opened:
                streamed.flush()
                _click_link(qtbot, streamed, TOGGLE)  # opened while it streams
                opened = True
    assert streamed.reply_thinking() == THINKING * 3
    streamed.set_thinking_note(NOTE)
    streamed.end_reply("7 tokens")
    assert streamed.toPlainText() == finished.toPlainText()
    assert streamed.toHtml() == finished.toHtml()
    assert streamed.message_text("r") == answer
    # Its section is found and closed as a finished one's is.
    for view in (streamed, finished):
        _click_link(qtbot, view, TOGGLE)
    assert streamed.toPlainText() == finished.toPlainText()
    assert streamed.toPlainText() == (
        f"Model   Copy\n▸ {NOTE}\nCounting:\npython   Copy\nprint(1, 2)\nDone now.\n7 tokens"
    )


def test_thinking_cut_off_before_an_answer_is_still_shown(qtbot: QtBot) -> None:
    view = _view(qtbot)
    cut = MessageView("r", "Model", "", False, "interrupted: stopped", (1, 1), THINKING, NOTE)
    view.show_conversation([MessageView("u", "You", "count", True), cut])
    assert view.toPlainText().endswith(f"Model   Copy\n▸ {NOTE}\ninterrupted: stopped")
    _click_link(qtbot, view, TOGGLE)
    assert view.toPlainText().endswith("That should do.\ninterrupted: stopped")


def test_continuing_a_reply_keeps_its_thinking(qtbot: QtBot) -> None:
    view = _view(qtbot)
    view.show_conversation(
        [MessageView("u", "You", "count", True), _reply("r", note="Thought for 14 tokens")]
    )
    _click_link(qtbot, view, TOGGLE)
    view.set_reply_actions(regenerate=True, continue_=True)
    with qtbot.waitSignal(view.continue_requested):
        _click_link(qtbot, view, "kvchat-action:continue/r")
    view.resume_reply("r")
    assert view.replying
    assert view.reply_text() == "The answer." and view.reply_thinking() == THINKING
    view.append_reply(" And more.")
    view.end_reply("12 tokens")
    assert view.toPlainText().endswith(
        "▾ Thought for 14 tokens\nThe person asks for a count.\nOne, then two.\n\n"
        "That should do.\nThe answer. And more.\n12 tokens"
    )
    assert view.message_text("r") == "The answer. And more."


# Readable width.


def _wheel(widget: QWidget, where: QPoint) -> None:
    """One notch of the wheel up, at `where` in `widget`."""
    event = QWheelEvent(
        QPointF(where),
        QPointF(widget.mapToGlobal(where)),
        QPoint(),
        QPoint(0, 120),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QCoreApplication.sendEvent(widget, event)


def test_a_wide_view_centres_a_column_of_the_chosen_width(qtbot: QtBot) -> None:
    view = _view(qtbot)
    for index in range(30):
        view.add_message("Model", f"reply {index} " * 40, key=f"r{index}")
    view.resize(1400, 600)
    view.set_max_width(700)
    qtbot.wait(1)
    margins = view.viewportMargins()
    assert view.viewport().width() == 700
    assert abs(margins.left() - margins.right()) <= 1 and margins.left() > 300
    # The jump button sits in the column's corner, and still works.
    view.verticalScrollBar().setValue(0)
    assert view.jump_button.isVisible()
    assert view.viewport().geometry().contains(view.jump_button.geometry())
    qtbot.mouseClick(view.jump_button, Qt.MouseButton.LeftButton)
    assert view.verticalScrollBar().value() == view.verticalScrollBar().maximum()
    # A wheel turned over the margin scrolls as one over the column does.
    bar = view.verticalScrollBar()
    before = bar.value()
    _wheel(view.viewport(), view.viewport().rect().center())
    over_column = before - bar.value()
    _wheel(view, QPoint(margins.left() // 2, 300))
    assert over_column > 0 and before - bar.value() == 2 * over_column
    # Narrower than the column: no margins; wide again: centred again.
    view.resize(600, 600)
    qtbot.wait(1)
    assert view.viewportMargins().left() == view.viewportMargins().right() == 0
    assert view.viewport().width() < 600
    view.resize(1000, 600)
    qtbot.wait(1)
    assert view.viewport().width() == 700
    view.set_max_width(0)
    assert view.viewportMargins().left() == 0 and view.viewport().width() > 900
