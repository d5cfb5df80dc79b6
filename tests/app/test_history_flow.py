"""The window, the controller and the store together, with a scripted engine
for exact timing (the real model is in tests/test_end_to_end.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

import kvchat.app.presenters.saving
from kvchat.app.core.settings import EngineSettings
from kvchat.app.core.store import DB_NAME
from kvchat.app.presenters.controller import Controller
from kvchat.app.presenters.instance_lock import AlreadyRunningError
from kvchat.app.presenters.settings_flow import SettingsFlow
from kvchat.engine.protocol import ChatMessage
from kvchat.ui.main_window import MainWindow
from tests.read_only import read_only
from tests.scripted_engine import ScriptedEngine, open_window
from tests.stored import stored_rows, wait_until_saved

Words = Callable[[list[ChatMessage]], list[str]]


def numbered(count: int) -> Words:
    return lambda _messages: [f"w{i} " for i in range(count)]


class App:
    """One scripted window on a data folder; `restart` closes and opens it again."""

    def __init__(self, qtbot: QtBot, data_dir: Path) -> None:
        self.qtbot = qtbot
        self.data_dir = data_dir
        self.windows: list[MainWindow] = []

    def open(
        self,
        words: Words | None = None,
        rate: float = 2000.0,
        n_ctx: int = 4096,
        settings: EngineSettings | None = None,
    ) -> tuple[MainWindow, Controller, ScriptedEngine]:
        engine = ScriptedEngine(words or numbered(20), rate=rate, n_ctx=n_ctx)
        window, controller = open_window(self.data_dir, engine, settings)
        self.windows.append(window)
        self.qtbot.waitUntil(lambda: controller.model is not None)
        return window, controller, engine

    def close_all(self) -> None:
        for window in self.windows:
            if window.isVisible():
                window.close()
            window.deleteLater()
        self.qtbot.wait(1)


@pytest.fixture
def scripted(qtbot: QtBot, data_dir: Path) -> Iterator[App]:
    runner = App(qtbot, data_dir)
    yield runner
    runner.close_all()


def _send(qtbot: QtBot, controller: Controller, text: str) -> None:
    with qtbot.waitSignal(controller.reply_finished, timeout=10_000):
        controller.send(text)
    wait_until_saved(qtbot, controller.history.saver)


def test_messages_are_stored_and_come_back_after_a_restart(
    qtbot: QtBot, scripted: App, data_dir: Path
) -> None:
    window, controller, _engine = scripted.open()
    committed: list[list[tuple[str, str, str]]] = []
    real_chat = controller.engine.chat

    def chat_and_look(*args: object, **kwargs: object) -> int:
        committed.append(stored_rows(data_dir))  # what is on disk as the request leaves
        return real_chat(*args, **kwargs)  # type: ignore[arg-type]

    controller.engine.chat = chat_and_look  # type: ignore[method-assign]
    _send(qtbot, controller, "First question\nwith two lines")
    _send(qtbot, controller, "Second question")
    reply = "".join(f"w{i} " for i in range(20))
    # The person's message was committed before the request went to the engine.
    assert committed[0] == [("user", "First question\nwith two lines", "done")]
    assert committed[1][-1] == ("user", "Second question", "done")
    assert stored_rows(data_dir) == [
        ("user", "First question\nwith two lines", "done"),
        ("assistant", reply, "done"),
        ("user", "Second question", "done"),
        ("assistant", reply, "done"),
    ]
    assert window.conversation_list.titles() == ["First question"]
    shown = window.chat_view.toPlainText()
    window.close()

    window, controller, _engine = scripted.open()
    assert window.conversation_list.titles() == ["First question"]
    assert [m.content for m in controller.history.messages][::2] == [
        "First question\nwith two lines",
        "Second question",
    ]
    # The same conversation, drawn the same way, figures and all (the notice
    # of the model's load comes after it now, not before).
    conversation = shown[shown.index("You   Copy   Edit") :].removesuffix("\n   ↻ Regenerate")
    assert window.chat_view.toPlainText().startswith(conversation + "\n   ↻ Regenerate\nLoaded")
    assert "20 tokens · " in conversation
    # It goes on from there: the model is sent the earlier turns.
    _send(qtbot, controller, "Third")
    assert [m.role for m in controller.conversation] == ["user", "assistant"] * 3


def test_a_streaming_reply_is_checkpointed_and_a_stopped_one_is_interrupted(
    qtbot: QtBot, scripted: App, data_dir: Path
) -> None:
    window, controller, _engine = scripted.open(numbered(2000), rate=100)
    controller.send("Tell me everything")
    qtbot.waitUntil(lambda: len(stored_rows(data_dir)) == 2, timeout=3000)
    role, content, state = stored_rows(data_dir)[1]
    assert (role, state) == ("assistant", "streaming")
    assert content and "".join(f"w{i} " for i in range(2000)).startswith(content)
    # Checkpoints keep coming, at least once a second.
    qtbot.waitUntil(lambda: len(stored_rows(data_dir)[1][1]) > len(content), timeout=1500)
    with qtbot.waitSignal(controller.reply_finished) as finished:
        window.stop_action.trigger()
    assert finished.args[0].stop_reason == "cancelled"
    wait_until_saved(qtbot, controller.history.saver)
    role, content, state = stored_rows(data_dir)[1]
    assert state == "interrupted"
    assert content == window.chat_view.message_text(controller.history.messages[1].key)


def test_a_reply_left_streaming_by_a_dead_app_shows_as_interrupted(
    qtbot: QtBot, scripted: App, data_dir: Path
) -> None:
    window, controller, _engine = scripted.open(numbered(2000), rate=100)
    controller.send("Go")
    qtbot.waitUntil(lambda: len(stored_rows(data_dir)) == 2, timeout=3000)
    # What a killed app leaves: the row says streaming. Copy the files as they are.
    copy = data_dir.parent / "copy"
    copy.mkdir()
    for name in (DB_NAME, f"{DB_NAME}-wal"):
        (copy / name).write_bytes((data_dir / name).read_bytes())
    window.close()
    restarted = App(qtbot, copy)
    try:
        window, controller, _engine = restarted.open()
        assert controller.history.messages[1].state == "interrupted"
        assert "\ninterrupted\n   ↻ Regenerate\n" in window.chat_view.toPlainText()
    finally:
        restarted.close_all()


def test_regenerate_keeps_the_old_reply_as_a_version(
    qtbot: QtBot, scripted: App, data_dir: Path
) -> None:
    replies = iter([["alpha"], ["beta"]])
    window, controller, engine = scripted.open(lambda _m: next(replies))
    _send(qtbot, controller, "Q")
    key = controller.history.messages[-1].key
    with qtbot.waitSignal(controller.reply_finished):
        window.chat_view.regenerate_requested.emit(key)
    wait_until_saved(qtbot, controller.history.saver)
    assert [m.content for m in engine.requests[1].messages] == ["Q"]
    assert stored_rows(data_dir) == [
        ("user", "Q", "done"),
        ("assistant", "alpha", "done"),
        ("assistant", "beta", "done"),
    ]
    text = window.chat_view.toPlainText()
    assert "alpha" not in text and "beta" in text and "2 / 2" in text
    assert text.count("Copy") == 2  # the question and one reply
    newest = controller.history.messages[-1].key
    window.chat_view.version_requested.emit(newest, -1)
    text = window.chat_view.toPlainText()
    assert "alpha" in text and "beta" not in text and "1 / 2" in text
    assert [m.content for m in controller.history.messages] == ["Q", "alpha"]
    window.close()
    # The version last shown is the one shown again.
    window, controller, _engine = scripted.open()
    assert [m.content for m in controller.history.messages] == ["Q", "alpha"]


def test_editing_a_message_keeps_the_branch_it_replaces(
    qtbot: QtBot, scripted: App, data_dir: Path
) -> None:
    window, controller, engine = scripted.open(lambda m: [f"re: {m[-1].content}"])
    _send(qtbot, controller, "one")
    _send(qtbot, controller, "two")
    _send(qtbot, controller, "three")
    second = controller.history.messages[2].key
    window.chat_view.edit_requested.emit(second)
    assert window.composer.toPlainText() == "two"
    assert window.edit_label.isVisibleTo(window)
    window.composer.selectAll()
    with qtbot.waitSignal(controller.reply_finished):
        qtbot.keyClicks(window.composer, "TWO, edited")
        qtbot.keyClick(window.composer, Qt.Key.Key_Return)
    wait_until_saved(qtbot, controller.history.saver)
    assert [m.content for m in engine.requests[-1].messages] == ["one", "re: one", "TWO, edited"]
    assert len(stored_rows(data_dir)) == 8  # nothing was lost
    assert [m.content for m in controller.history.messages] == [
        "one",
        "re: one",
        "TWO, edited",
        "re: TWO, edited",
    ]
    text = window.chat_view.toPlainText()
    assert "three" not in text and "re: two" not in text and "2 / 2" in text
    assert not window.edit_label.isVisibleTo(window)
    # Back to the first version: the branch under it as it was, and a
    # message sent from there goes on with that branch.
    window.chat_view.version_requested.emit(controller.history.messages[2].key, -1)
    assert [m.content for m in controller.history.messages] == [
        "one",
        "re: one",
        "two",
        "re: two",
        "three",
        "re: three",
    ]
    assert "re: two" in window.chat_view.toPlainText()
    _send(qtbot, controller, "four")
    assert [m.content for m in engine.requests[-1].messages] == [
        "one",
        "re: one",
        "two",
        "re: two",
        "three",
        "re: three",
        "four",
    ]
    assert len(stored_rows(data_dir)) == 10


def test_escape_cancels_an_edit(qtbot: QtBot, scripted: App) -> None:
    window, controller, _engine = scripted.open()
    _send(qtbot, controller, "one")
    window.chat_view.edit_requested.emit(controller.history.messages[0].key)
    window.stop_action.trigger()
    assert window.composer.toPlainText() == ""
    assert window.editing_key == ""


def test_continue_asks_the_engine_to_go_on_with_the_reply(
    qtbot: QtBot, scripted: App, data_dir: Path
) -> None:
    window, controller, engine = scripted.open(numbered(30), settings=EngineSettings(max_tokens=10))
    _send(qtbot, controller, "Count")
    reply = controller.history.messages[-1]
    assert json.loads(reply.stats or "")["stop_reason"] == "length"
    assert window.chat_view.toPlainText().endswith("→ Continue")
    engine.reply = lambda _m: ["more ", "words"]
    with qtbot.waitSignal(controller.reply_finished):
        window.chat_view.continue_requested.emit(reply.key)
    wait_until_saved(qtbot, controller.history.saver)
    request = engine.requests[-1]
    assert request.continue_last
    assert request.messages[-1] == ChatMessage("assistant", reply.content)
    full = reply.content + "more words"
    assert stored_rows(data_dir)[-1] == ("assistant", full, "done")
    assert window.chat_view.message_text(reply.key) == full
    assert window.chat_view.toPlainText().count("Scripted   Copy") == 1


def test_continue_is_offered_only_for_a_reply_cut_at_its_limit(qtbot: QtBot, scripted: App) -> None:
    window, controller, _engine = scripted.open(
        numbered(5), settings=EngineSettings(max_tokens=100)
    )
    _send(qtbot, controller, "Count")
    reply = controller.history.messages[-1]
    assert json.loads(reply.stats or "")["stop_reason"] == "eos"
    assert window.chat_view.toPlainText().endswith("↻ Regenerate")


def test_old_turns_leave_the_models_view_and_the_view_says_where(
    qtbot: QtBot, scripted: App, data_dir: Path
) -> None:
    # Each turn is about 60 words, the context 400 tokens, 100 kept for the reply.
    settings = EngineSettings(system_prompt="Be terse.", max_tokens=100)
    window, controller, engine = scripted.open(numbered(30), n_ctx=400, settings=settings)
    for turn in range(8):
        _send(qtbot, controller, f"question {turn} " + "word " * 28)
    for request in engine.requests:
        assert request.messages[0] == ChatMessage("system", "Be terse.")
        assert request.messages[1].role == "user"
    last = engine.requests[-1].messages
    assert last[-1].content.startswith("question 7")
    start = controller.history.view_start
    assert start > 0
    assert len(last) == 1 + 15 - start  # the system prompt, and the 15 messages from the start
    text = window.chat_view.toPlainText()
    assert f"the {start} messages above left its context" in text
    marker_line = text.splitlines().index(
        next(line for line in text.splitlines() if "view starts here" in line)
    )
    assert text.splitlines()[marker_line + 2].startswith(f"question {start // 2}")
    assert window.view_label.text() == f"the model sees messages {start + 1}–16 of 16"
    # The engine never refused a prompt, and every reply had its room.
    assert all(m.state == "done" for m in controller.history.messages)
    window.close()
    # The marker comes back with the conversation.
    window, controller, _engine = scripted.open(numbered(30), n_ctx=400, settings=settings)
    assert f"the {start} messages above left its context" in window.chat_view.toPlainText()


def test_a_message_longer_than_the_context_is_refused_and_given_back(
    qtbot: QtBot, scripted: App, data_dir: Path
) -> None:
    window, controller, engine = scripted.open(n_ctx=300)
    _send(qtbot, controller, "short")
    long = "word " * 400
    with qtbot.waitSignal(controller.engine.chat_failed):
        controller.send(long)
    qtbot.wait(1)
    wait_until_saved(qtbot, controller.history.saver)
    assert window.banner.text().startswith("The message was not sent: the conversation is ")
    assert "tokens long, and the context holds 300" in window.banner.text()
    assert window.composer.toPlainText() == long
    assert [row[1] for row in stored_rows(data_dir)] == [
        "short",
        "".join(f"w{i} " for i in range(20)),
    ]
    assert long not in window.chat_view.toPlainText()
    assert not controller.busy
    # A refusal changes nothing: the view, stored and shown, is where it was,
    # and the next turn sees the earlier messages.
    assert controller.history.view_start == 0
    assert window.view_label.text() == ""
    assert "view starts here" not in window.chat_view.toPlainText()
    _send(qtbot, controller, "again")
    assert [m.content for m in engine.requests[-1].messages][:1] == ["short"]
    window.close()
    _window, reopened, _engine = scripted.open(n_ctx=300)
    assert reopened.history.view_start == 0


def test_the_list_news_renames_deletes_undoes_and_searches(
    qtbot: QtBot, scripted: App, data_dir: Path
) -> None:
    window, controller, _engine = scripted.open()
    listing = window.conversation_list
    _send(qtbot, controller, "about apples")
    window.new_action.trigger()
    assert window.chat_view.toPlainText() == ""
    _send(qtbot, controller, "about pears")
    assert listing.titles() == ["about pears", "about apples"]  # newest first
    apples = listing.keys()[1]
    with qtbot.waitSignal(listing.chosen):
        row = listing.list.item(1)
        qtbot.mouseClick(
            listing.list.viewport(),
            Qt.MouseButton.LeftButton,
            pos=listing.list.visualItemRect(row).center(),
        )
    assert "about apples" in window.chat_view.toPlainText()
    listing.rename_requested.emit(apples, "Fruit talk")
    wait_until_saved(qtbot, controller.history.saver)  # the list shows what is on disk
    assert listing.titles() == ["about pears", "Fruit talk"]
    listing.search.setText("PEAR")
    qtbot.waitUntil(lambda: listing.titles() == ["about pears"])
    listing.search.clear()
    qtbot.waitUntil(lambda: len(listing.titles()) == 2)
    listing.delete_requested.emit(apples)
    assert listing.titles() == ["about pears"]
    # It was open: the one left takes its place.
    assert "about pears" in window.chat_view.toPlainText()
    assert listing.undo_bar.isVisibleTo(listing)
    assert listing.undo_label.text() == "Deleted “Fruit talk”."
    qtbot.mouseClick(listing.undo_button, Qt.MouseButton.LeftButton)
    wait_until_saved(qtbot, controller.history.saver)
    assert listing.titles() == ["about pears", "Fruit talk"]
    assert "about apples" in window.chat_view.toPlainText()  # and comes back with Undo
    listing.delete_requested.emit(apples)
    window.close()
    # Not undone before the restart: gone for good.
    window, _controller, _engine = scripted.open()
    assert window.conversation_list.titles() == ["about pears"]


def test_markdown_export_keeps_each_message_inside_its_section(
    qtbot: QtBot, scripted: App, tmp_path: Path
) -> None:
    window, controller, _engine = scripted.open(lambda _m: ["# A heading\n", "---\ntext"])
    _send(qtbot, controller, "# Fruits\n- apple\n````\nnot a fence")
    key = controller.history.conversation.key  # type: ignore[union-attr]
    window.export_requested.emit(key, str(tmp_path / "chat.md"), "markdown")
    lines = (tmp_path / "chat.md").read_text(encoding="utf-8").split("\n")
    # Outside fenced blocks, only kvchat's own headings start a line with '#'.
    outside, fence = [], ""
    for line in lines:
        if fence:
            fence = "" if line == fence else fence
        elif line.startswith("```"):
            fence = line[: len(line) - len(line.lstrip("`"))]
        elif line.startswith("#"):
            outside.append(line)
    assert outside == [
        "# # Fruits",
        "## You",
        "## Scripted",
    ]
    start = lines.index("## You") + 2
    assert lines[start : start + 6] == [
        "`````text",
        "# Fruits",
        "- apple",
        "````",
        "not a fence",
        "`````",
    ]
    assert "> # A heading" in lines and "> ---" in lines


def test_export_as_markdown_and_json(qtbot: QtBot, scripted: App, tmp_path: Path) -> None:
    window, controller, _engine = scripted.open(lambda _m: ["Here:\n", "```py\nx = 1\n```"])
    _send(qtbot, controller, "Show code")
    key = controller.history.conversation.key  # type: ignore[union-attr]
    window.export_requested.emit(key, str(tmp_path / "chat.md"), "markdown")
    window.export_requested.emit(key, str(tmp_path / "chat.json"), "json")
    markdown = (tmp_path / "chat.md").read_text(encoding="utf-8")
    assert markdown.startswith("# Show code\n\n- Model: Scripted (`/models/scripted.gguf`)\n")
    assert (
        "## You\n\n```text\nShow code\n```\n\n## Scripted\n\n"
        "> Here:\n> ```py\n> x = 1\n> ```\n\n*2 tokens · " in markdown
    )
    document = json.loads((tmp_path / "chat.json").read_text(encoding="utf-8"))
    assert document["format"] == "kvchat-conversation"
    assert [(m["role"], m["content"], m["state"]) for m in document["messages"]] == [
        ("user", "Show code", "done"),
        ("assistant", "Here:\n```py\nx = 1\n```", "done"),
    ]
    assert document["messages"][1]["stats"]["generated_tokens"] == 2
    assert "Exported “Show code” to " in window.chat_view.toPlainText()


def test_an_export_while_a_reply_streams_has_it_as_far_as_it_got(
    qtbot: QtBot, scripted: App, tmp_path: Path
) -> None:
    """The reply's text has one owner while it streams (the chat session):
    an export asks for it, rather than reading a copy made at each piece."""
    window, controller, _engine = scripted.open(numbered(400), rate=200.0)
    controller.send("Count")
    qtbot.waitUntil(lambda: "w5 " in window.chat_view.toPlainText(), timeout=10_000)
    key = controller.history.conversation.key  # type: ignore[union-attr]
    window.export_requested.emit(key, str(tmp_path / "chat.json"), "json")
    turn = controller.session.turn  # its owner's text, as it was at the export
    assert turn is not None
    document = json.loads((tmp_path / "chat.json").read_text(encoding="utf-8"))
    _user, reply = document["messages"]
    assert reply["state"] == "streaming"
    # The chat view draws at most ~30 times a second, so it may lag: not compared.
    assert reply["content"].startswith("w0 w1 w2 w3 w4 w5 ") and reply["content"] == turn.answer
    with qtbot.waitSignal(controller.reply_finished, timeout=10_000):
        window.stop_action.trigger()


def test_a_full_disk_keeps_the_text_says_so_and_saves_it_later(
    qtbot: QtBot, scripted: App, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kvchat.app.presenters.saving, "RETRY_MS", 50)
    window, controller, _engine = scripted.open()
    _send(qtbot, controller, "before")
    store = controller.history.saver.store
    assert store is not None
    pages = store._connection.execute("PRAGMA page_count").fetchone()[0]
    store._connection.execute(f"PRAGMA max_page_count = {pages}")
    big = "x" * 20_000
    _send(qtbot, controller, big)
    (rescue,) = (data_dir / "unsaved").iterdir()
    assert window.storage_banner.text() == (
        "Could not save the conversation: the disk is full. Everything stays on screen, "
        "and kvchat keeps trying to save it every few seconds. Until then, a copy of what "
        f"is unsaved is kept in {rescue}."
    )
    assert big in rescue.read_text(encoding="utf-8")
    assert big in window.chat_view.toPlainText()
    assert controller.history.saver.pending > 0
    _send(qtbot, controller, "while full")  # still accepted, still said
    assert window.storage_banner.text().startswith("Could not save the conversation")
    store._connection.execute("PRAGMA max_page_count = 1073741823")
    qtbot.waitUntil(lambda: controller.history.saver.pending == 0, timeout=5000)
    assert not window.storage_banner.isVisibleTo(window)
    assert "Saving works again" in window.chat_view.toPlainText()
    assert not rescue.exists()
    contents = [row[1] for row in stored_rows(data_dir)]
    assert contents[::2] == ["before", big, "while full"]


def test_a_read_only_data_folder_keeps_messages_until_it_can_save(
    qtbot: QtBot, scripted: App, data_dir: Path
) -> None:
    with read_only(data_dir):
        window, controller, _engine = scripted.open()
        assert window.storage_banner.text().startswith("Conversations cannot be saved: ")
        _send(qtbot, controller, "kept in memory")
        assert "kept in memory" in window.chat_view.toPlainText()
        assert controller.history.saver.pending > 0
    controller.history.saver.retry()  # on the save worker
    qtbot.waitUntil(lambda: controller.history.saver.pending == 0, timeout=5000)
    assert stored_rows(data_dir)[0][1] == "kept in memory"
    assert window.conversation_list.titles() == ["kept in memory"]


def test_a_read_only_folder_still_shows_the_history(
    qtbot: QtBot, scripted: App, data_dir: Path
) -> None:
    window, controller, _engine = scripted.open()
    _send(qtbot, controller, "written before")
    window.close()
    with read_only(data_dir):
        window, controller, _engine = scripted.open()
        assert window.storage_banner.text().startswith("Conversations cannot be saved: ")
        assert "Your conversations are shown as they were" in window.storage_banner.text()
        assert window.conversation_list.titles() == ["written before"]
        window.new_action.trigger()
        _send(qtbot, controller, "typed while read-only")
        assert "typed while read-only" in window.chat_view.toPlainText()
        assert controller.history.saver.pending > 0
    controller.history.saver.retry()  # on the save worker
    qtbot.waitUntil(lambda: controller.history.saver.pending == 0, timeout=5000)
    assert {row[1] for row in stored_rows(data_dir)} >= {"written before", "typed while read-only"}


def test_a_second_window_on_the_same_folder_is_refused(scripted: App, data_dir: Path) -> None:
    scripted.open()
    with pytest.raises(AlreadyRunningError, match="kvchat is already running"):
        scripted.open()


def test_typing_always_lands_in_the_composer(qtbot: QtBot, scripted: App, data_dir: Path) -> None:
    """At start, after a reply, a new conversation, a switch between
    conversations and a closed dialog, the keyboard is the composer's."""
    window, controller, _engine = scripted.open()
    window.show()
    qtbot.waitExposed(window)
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow)
    assert window.focusWidget() is window.composer
    qtbot.keyClicks(window.composer, "typed at once")
    assert window.composer.toPlainText() == "typed at once"
    window.composer.clear()

    def focus_elsewhere() -> None:
        window.chat_view.setFocus()
        assert window.focusWidget() is window.chat_view

    focus_elsewhere()
    _send(qtbot, controller, "first")
    assert window.focusWidget() is window.composer
    first = controller.history.conversation
    assert first is not None
    focus_elsewhere()
    window.new_action.trigger()
    assert window.focusWidget() is window.composer
    _send(qtbot, controller, "second")
    focus_elsewhere()
    controller.open_conversation(first.key)
    assert window.focusWidget() is window.composer
    focus_elsewhere()
    dialog = SettingsFlow(controller, data_dir).open()
    dialog.close()
    qtbot.waitUntil(lambda: window.focusWidget() is window.composer)


def test_reloads_add_the_loaded_line_once_per_conversation(qtbot: QtBot, scripted: App) -> None:
    window, controller, _engine = scripted.open()
    _send(qtbot, controller, "hello")
    assert controller.model is not None
    path = controller.model.path
    for _ in range(4):
        with qtbot.waitSignal(controller.engine.model_loaded):
            controller.switch_model(path)
    text = window.chat_view.toPlainText()
    assert text.count("Loaded ") == 1
    assert " threads · " in text or " thread · " in text


def test_deleting_the_shown_conversation_opens_another_and_undo_brings_it_back(
    qtbot: QtBot, scripted: App
) -> None:
    window, controller, _engine = scripted.open()
    for topic in ("apples", "pears", "plums"):
        window.new_action.trigger()
        _send(qtbot, controller, f"about {topic}")
    listing = window.conversation_list
    assert listing.titles() == ["about plums", "about pears", "about apples"]
    pears = listing.keys()[1]
    controller.open_conversation(pears)
    controller.delete_conversation(pears)
    # Its neighbour below opens: the pane is never left blank.
    assert listing.titles() == ["about plums", "about apples"]
    assert controller.history.conversation is not None
    assert controller.history.conversation.title == "about apples"
    assert "about apples" in window.chat_view.toPlainText()
    controller.restore_conversation(pears)
    assert controller.history.conversation is not None
    assert controller.history.conversation.key == pears
    assert "about pears" in window.chat_view.toPlainText()
    # The last one left: a new conversation takes its place.
    wait_until_saved(qtbot, controller.history.saver)  # listed again once that is on disk
    for key in list(listing.keys()):
        controller.open_conversation(key)
        controller.delete_conversation(key)
    assert controller.history.conversation is None
    assert window.chat_view.toPlainText() == ""


def test_a_conversations_system_prompt_is_shown_and_changed_at_its_top(
    qtbot: QtBot, scripted: App, data_dir: Path
) -> None:
    settings = EngineSettings(system_prompt="Be terse.")
    window, controller, engine = scripted.open(settings=settings)
    assert window.system_label.text() == "System prompt: Be terse."
    _send(qtbot, controller, "first")
    assert engine.requests[-1].messages[0] == ChatMessage("system", "Be terse.")
    window.conversation_settings_edited.emit("Answer in French.", {})
    assert window.system_label.text() == "System prompt: Answer in French."
    _send(qtbot, controller, "second")
    assert engine.requests[-1].messages[0] == ChatMessage("system", "Answer in French.")
    first = controller.history.conversation
    assert first is not None
    # A new conversation starts from the default, and can be given its own
    # before its first message.
    window.new_action.trigger()
    assert window.system_label.text() == "System prompt: Be terse."
    window.conversation_settings_edited.emit("", {})
    assert window.system_label.text() == "No system prompt"
    _send(qtbot, controller, "third")
    assert engine.requests[-1].messages[0].role == "user"
    controller.open_conversation(first.key)
    assert window.system_label.text() == "System prompt: Answer in French."
    window.close()
    _window, reopened, _engine = scripted.open(settings=settings)
    stored = {c.key: c.system_prompt for c in reopened.history.conversations()}
    assert stored[first.key] == "Answer in French."
