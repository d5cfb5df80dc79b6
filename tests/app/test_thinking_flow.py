"""A reasoning model's thinking through the window, the controller and the
store, with the scripted engine (the real model's thinking is split in
tests/engine/test_reasoning.py)."""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from kvchat.app.core.settings import EngineSettings
from kvchat.app.presenters.history import stats_of
from tests.app.test_history_flow import App, _send, scripted  # noqa: F401
from tests.stored import stored_rows

THOUGHT = ["<think>", "The ", "person ", "greets ", "me.", "</think>", "Hello ", "there."]


def test_thinking_is_shown_apart_counted_and_stored(
    qtbot: QtBot,
    scripted: App,  # noqa: F811
    data_dir: Path,
) -> None:
    window, controller, engine = scripted.open(lambda _m: list(THOUGHT))
    _send(qtbot, controller, "Hi")
    reply = controller.history.messages[-1]
    assert (reply.content, reply.thinking) == ("Hello there.", "The person greets me.")
    assert stored_rows(data_dir, "thinking")[-1] == (
        "assistant",
        "Hello there.",
        "The person greets me.",
    )
    text = window.chat_view.toPlainText()
    assert "▸ Thought for" in text  # collapsed: the note, not the thinking
    assert "person greets" not in text
    assert "Hello there." in text
    assert "thinking)" in text  # the figures count its tokens apart
    assert window.chat_view.message_text(reply.key) == "Hello there."
    stats = stats_of(reply)
    assert stats is not None and stats.thinking_tokens == 6  # its words and both tags
    # The KV panel's share of thinking (the panel itself: tests/ui/test_memory_panel.py).
    assert controller.memory_monitor.thinking_tokens == 6
    # The next turn sends it back with the reply; the template decides.
    _send(qtbot, controller, "And?")
    sent = engine.requests[-1].messages
    assert (sent[1].content, sent[1].thinking) == ("Hello there.", "The person greets me.")


def test_thinking_cut_off_at_the_limit_is_kept_and_marked(
    qtbot: QtBot,
    scripted: App,  # noqa: F811
    data_dir: Path,
) -> None:
    settings = EngineSettings(max_tokens=4)
    window, controller, _engine = scripted.open(lambda _m: list(THOUGHT), settings=settings)
    _send(qtbot, controller, "Hi")
    reply = controller.history.messages[-1]
    assert reply.content == ""
    assert reply.thinking == "The person greets "
    assert stored_rows(data_dir, "thinking")[-1] == ("assistant", "", "The person greets ")
    assert "Thinking cut off at the token limit" in window.chat_view.toPlainText()
    assert window.chat_view.toPlainText().endswith("→ Continue")


def test_thinking_can_be_hidden_entirely(
    qtbot: QtBot,
    scripted: App,  # noqa: F811
) -> None:
    window, controller, _engine = scripted.open(lambda _m: list(THOUGHT))
    _send(qtbot, controller, "Hi")
    window.chat_view.set_show_thinking(False)
    text = window.chat_view.toPlainText()
    assert "Thought" not in text and "Hello there." in text
