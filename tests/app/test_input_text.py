"""Text people do not usually type, through the real window, controller and
store (the engine scripted; tests/test_abuse.py sends the same to the real
model): what the composer gets, what the store holds, what the view shows,
what the model is sent and what an export writes.

Qt itself changes two things on the way in, and nothing else: a carriage
return becomes a line break (QPlainTextEdit keeps paragraphs, not \\r), and a
lone surrogate is dropped (a QString cannot carry one into Python). A lone
surrogate that reaches the store another way becomes U+FFFD, never a crash.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from pytestqt.qtbot import QtBot

from kvchat.app.core.store import DB_NAME, storable
from kvchat.app.presenters.controller import Controller
from kvchat.engine.protocol import ChatMessage
from kvchat.ui.chat_view import DRAWN_CHARACTERS
from kvchat.ui.main_window import MainWindow
from tests.scripted_engine import ScriptedEngine, open_window
from tests.stored import wait_until_saved

# name: (typed, what the composer holds)
HOSTILE = {
    "emoji with ZWJ": ("👩\u200d💻 at work", "👩\u200d💻 at work"),
    "CJK": ("漢字とかな、한국어", "漢字とかな、한국어"),
    "Arabic and Hebrew": ("مرحبا بالعالم שלום עולם", "مرحبا بالعالم שלום עולם"),
    "mixed directions": ("abc مرحبا 123 שלום!", "abc مرحبا 123 שלום!"),
    "combining marks": ("e\u0301 a\u0308\u0301 Z\u0351\u0333",) * 2,
    "NUL": ("before\x00after", "before\x00after"),
    "bell and escape": ("ring\x07 \x1b[31mred\x1b[0m", "ring\x07 \x1b[31mred\x1b[0m"),
    "carriage returns": ("one\rtwo\r\nthree", "one\ntwo\nthree"),
    "lone surrogate": ("broken\ud800here", "brokenhere"),
    "markdown and HTML": ("<b>not bold</b> **bold** <script>x</script>", None),
}


@pytest.fixture
def chat(qtbot: QtBot, data_dir: Path) -> Iterator[tuple[MainWindow, Controller, ScriptedEngine]]:
    engine = ScriptedEngine(lambda m: ["echo: ", m[-1].content], n_ctx=1 << 20)
    window, controller = open_window(data_dir, engine)
    qtbot.waitUntil(lambda: controller.model is not None)
    yield window, controller, engine
    window.close()
    window.deleteLater()
    qtbot.wait(1)


def _rows(data_dir: Path) -> list[tuple[str, str]]:
    connection = sqlite3.connect(data_dir / DB_NAME)
    rows = connection.execute("SELECT role, content FROM messages ORDER BY position").fetchall()
    connection.close()
    return [(str(role), str(content)) for role, content in rows]


def _paste_and_send(qtbot: QtBot, window: MainWindow, controller: Controller, text: str) -> None:
    window.composer.setPlainText(text)  # what a paste does
    with qtbot.waitSignal(controller.reply_finished, timeout=10_000):
        qtbot.keyClick(window.composer, Qt.Key.Key_Return)
    wait_until_saved(qtbot, controller.history.saver)


@pytest.mark.parametrize("name", HOSTILE)
def test_unusual_text_is_stored_shown_sent_and_exported_as_given(
    qtbot: QtBot,
    chat: tuple[MainWindow, Controller, ScriptedEngine],
    data_dir: Path,
    tmp_path: Path,
    name: str,
) -> None:
    window, controller, engine = chat
    typed, held = HOSTILE[name]
    window.composer.setPlainText(typed)
    composed = window.composer.toPlainText()
    assert composed == (typed if held is None else held)
    _paste_and_send(qtbot, window, controller, typed)
    assert not window.banner.isVisibleTo(window)
    assert not window.storage_banner.isVisibleTo(window)
    reply = "echo: " + composed
    assert _rows(data_dir) == [("user", composed), ("assistant", reply)]
    assert engine.requests[-1].messages == [ChatMessage("user", composed)]
    view = window.chat_view
    user, answer = controller.history.messages
    assert view.message_text(user.key) == composed
    assert view.message_text(answer.key) == reply
    assert composed in view.toPlainText()  # the person's text is drawn as typed
    # Copy gives the text back as it was typed.
    view.anchorClicked.emit(f"kvchat-action:copy/{user.key}")  # type: ignore[arg-type]
    assert QGuiApplication.clipboard().text() == composed
    # The title is its first line, and the list shows it.
    assert window.conversation_list.titles() == [composed.splitlines()[0].strip()]
    key = controller.history.conversation.key  # type: ignore[union-attr]
    window.export_requested.emit(key, str(tmp_path / "chat.json"), "json")
    window.export_requested.emit(key, str(tmp_path / "chat.md"), "markdown")
    exported = json.loads((tmp_path / "chat.json").read_text(encoding="utf-8"))
    assert [m["content"] for m in exported["messages"]] == [composed, reply]
    with open(tmp_path / "chat.md", encoding="utf-8", newline="") as file:
        markdown = file.read()
    # The person's text, fenced, comes back exactly; the reply is quoted.
    fence = "`" * max(3, max((len(r) for r in re.findall("`+", composed)), default=0) + 1)
    assert f"## You\n\n{fence}text\n{composed}\n{fence}\n\n## Scripted\n\n" in markdown
    quoted = "\n".join(f"> {line}" if line else ">" for line in reply.split("\n"))
    assert f"\n{quoted}\n" in markdown


def test_a_reply_with_unusual_text_is_stored_as_streamed(
    qtbot: QtBot, chat: tuple[MainWindow, Controller, ScriptedEngine], data_dir: Path
) -> None:
    window, controller, engine = chat
    words = ["👩\u200d💻 ", "漢字 ", "مرحبا ", "e\u0301 ", "\x07\x1b[0m ", "<i>x</i>"]
    engine.reply = lambda _m: words
    _paste_and_send(qtbot, window, controller, "Say odd things")
    reply = "".join(words)
    assert _rows(data_dir)[-1] == ("assistant", reply)
    shown = window.chat_view.toPlainText()
    # Markdown shows raw HTML as text, and every character arrives.
    for word in words:
        assert word.strip() in shown


def test_a_lone_surrogate_from_outside_qt_is_stored_replaced_not_crashing(
    qtbot: QtBot, chat: tuple[MainWindow, Controller, ScriptedEngine], data_dir: Path
) -> None:
    """Qt drops lone surrogates, but a caller can hand one over in a str
    (a file name decoded with surrogateescape): SQLite's UTF-8 cannot hold it."""
    window, controller, engine = chat
    with qtbot.waitSignal(controller.reply_finished, timeout=10_000):
        controller.send("broken\ud800here \udcff")
    wait_until_saved(qtbot, controller.history.saver)
    kept = "broken\ufffdhere \ufffd"
    assert _rows(data_dir)[0] == ("user", kept)
    assert controller.history.messages[0].content == kept
    assert engine.requests[-1].messages[-1].content == kept
    assert not window.storage_banner.isVisibleTo(window)  # saving did not fail
    assert controller.history.saver.pending == 0
    # A pair of surrogates written as two code points is the character it stands for.
    assert storable("\ud83d\ude00") == "😀"


def test_a_message_longer_than_drawn_is_kept_whole(
    qtbot: QtBot, chat: tuple[MainWindow, Controller, ScriptedEngine], data_dir: Path
) -> None:
    window, controller, engine = chat
    engine.reply = lambda _m: ["seen"]
    big = "".join(f"line {i:06d} of a long paste\n" for i in range(12_000))  # 300 kB
    assert len(big) > DRAWN_CHARACTERS
    _paste_and_send(qtbot, window, controller, big)
    user = controller.history.messages[0]
    assert _rows(data_dir)[0] == ("user", big)
    assert engine.requests[-1].messages[-1].content == big
    shown = window.chat_view.toPlainText()
    assert big[:DRAWN_CHARACTERS] in shown
    assert big[DRAWN_CHARACTERS : DRAWN_CHARACTERS + 100] not in shown
    more = len(big) - DRAWN_CHARACTERS
    assert f"… {more:,} more characters are kept but not drawn" in shown
    view = window.chat_view
    view.anchorClicked.emit(f"kvchat-action:copy/{user.key}")  # type: ignore[arg-type]
    assert QGuiApplication.clipboard().text() == big
    view.edit_requested.emit(user.key)
    assert window.composer.toPlainText() == big
