"""Kept versions and a conversation's own settings, through the window, the
controller and the store, with a scripted engine for exact timing (the real
model pages branches in tests/test_versions_end_to_end.py)."""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from kvchat.app.core.settings import EngineSettings
from tests.app.test_history_flow import App, _send, numbered, scripted  # noqa: F401
from tests.stored import stored_rows, wait_until_saved


def test_paging_while_a_reply_streams_leaves_it_in_its_own_branch(
    qtbot: QtBot,
    scripted: App,  # noqa: F811
    data_dir: Path,
) -> None:
    window, controller, engine = scripted.open(lambda _m: ["first "])
    _send(qtbot, controller, "Q")
    engine.reply = numbered(400)
    engine.rate = 200.0
    old = controller.history.messages[-1].key
    with qtbot.waitSignal(controller.reply_finished, timeout=20_000):
        window.chat_view.regenerate_requested.emit(old)
        qtbot.waitUntil(lambda: "w3 " in window.chat_view.toPlainText())
        # Back to the first version while the second is being written.
        window.chat_view.version_requested.emit(controller.history.messages[-1].key, -1)
        assert [m.content for m in controller.history.messages] == ["Q", "first "]
        qtbot.wait(50)
        assert "w30 " not in window.chat_view.toPlainText()  # it grows elsewhere
        # And forward again: the reply goes on growing on screen.
        window.chat_view.version_requested.emit(old, +1)
        qtbot.waitUntil(lambda: "w200 " in window.chat_view.toPlainText(), timeout=10_000)
    wait_until_saved(qtbot, controller.history.saver)
    whole = "".join(f"w{i} " for i in range(400))
    assert stored_rows(data_dir) == [
        ("user", "Q", "done"),
        ("assistant", "first ", "done"),
        ("assistant", whole, "done"),
    ]
    assert window.chat_view.message_text(controller.history.messages[-1].key) == whole


def test_a_refused_edit_brings_the_version_it_edited_back(
    qtbot: QtBot,
    scripted: App,  # noqa: F811
    data_dir: Path,
) -> None:
    window, controller, engine = scripted.open(lambda m: [f"re: {m[-1].content}"])
    _send(qtbot, controller, "one")
    engine.fail_next = "the engine is busy"
    controller.edit(controller.history.messages[0].key, "ONE")
    qtbot.waitUntil(lambda: not controller.busy)
    wait_until_saved(qtbot, controller.history.saver)
    assert [m.content for m in controller.history.messages] == ["one", "re: one"]
    assert stored_rows(data_dir) == [("user", "one", "done"), ("assistant", "re: one", "done")]
    text = window.chat_view.toPlainText()
    assert "re: one" in text and "/ 2" not in text
    assert window.composer.toPlainText() == "ONE"  # given back, not lost


def test_a_conversation_samples_with_its_own_values_from_its_next_turn(
    qtbot: QtBot,
    scripted: App,  # noqa: F811
) -> None:
    defaults = EngineSettings(temperature=0.7, max_tokens=50, system_prompt="Be terse.")
    window, controller, engine = scripted.open(numbered(3), settings=defaults)
    _send(qtbot, controller, "first")
    assert engine.requests[-1].sampling.temperature == 0.7
    window.conversation_settings_edited.emit("Be kind.", {"temperature": 0.2, "top_k": 5})
    assert "2 sampling values of its own" in window.system_label.text()
    _send(qtbot, controller, "second")
    request = engine.requests[-1]
    assert (request.sampling.temperature, request.sampling.top_k) == (0.2, 5)
    assert request.sampling.max_tokens == 50  # the rest are the defaults
    assert request.messages[0].content == "Be kind."
    first = controller.history.conversation
    assert first is not None
    # A new conversation starts from the defaults.
    window.new_action.trigger()
    _send(qtbot, controller, "other")
    assert engine.requests[-1].sampling.temperature == 0.7
    window.close()
    # Stored with the conversation: it samples the same way after a restart.
    window, controller, engine = scripted.open(numbered(3), settings=defaults)
    controller.open_conversation(first.key)
    _send(qtbot, controller, "third")
    assert engine.requests[-1].sampling.temperature == 0.2


def test_defaults_changed_later_reach_what_a_conversation_did_not_change(
    qtbot: QtBot,
    scripted: App,  # noqa: F811
) -> None:
    window, controller, engine = scripted.open(numbered(3))
    window.conversation_settings_edited.emit("", {"top_k": 7})
    _send(qtbot, controller, "first")
    controller.settings = controller.settings.model_copy(update={"temperature": 1.3, "top_k": 40})
    _send(qtbot, controller, "second")
    sampling = engine.requests[-1].sampling
    assert (sampling.temperature, sampling.top_k) == (1.3, 7)


def test_the_keyboard_regenerates_and_pages_the_last_reply(
    qtbot: QtBot,
    scripted: App,  # noqa: F811
) -> None:
    replies = iter([["alpha"], ["beta"], ["gamma"]])
    window, controller, _engine = scripted.open(lambda _m: next(replies))
    _send(qtbot, controller, "Q")
    for _ in range(2):
        with qtbot.waitSignal(controller.reply_finished):
            window.regenerate_action.trigger()
    assert [m.content for m in controller.history.messages] == ["Q", "gamma"]
    window.previous_version_action.trigger()
    window.previous_version_action.trigger()
    assert [m.content for m in controller.history.messages] == ["Q", "alpha"]
    assert "1 / 3" in window.chat_view.toPlainText()
    window.previous_version_action.trigger()  # the first already: nothing happens
    window.next_version_action.trigger()
    assert [m.content for m in controller.history.messages] == ["Q", "beta"]
    keys = dict(window.shortcut_rows())
    assert keys["Ctrl+R"] == "A new version of the last reply; the old one stays"
    assert "Alt+Left" in keys and "Alt+Right" in keys


def test_the_panel_shows_the_conversation_once_its_first_message_starts_it(
    qtbot: QtBot,
    scripted: App,  # noqa: F811
) -> None:
    window, controller, _engine = scripted.open(numbered(3))
    window.new_action.trigger()
    panel = window.conversation_panel
    assert panel.title.text() == "The next conversation"
    window.conversation_settings_edited.emit("Be brief.", {"top_k": 9})
    _send(qtbot, controller, "first")
    assert panel.title.text() == "This conversation"
    conversation = controller.history.conversation
    assert conversation is not None and conversation.system_prompt == "Be brief."
    assert conversation.sampling == '{"top_k": 9}'
    window.show()
    window.conversation_panel_action.trigger()
    assert window.conversation_dock.isVisible()
