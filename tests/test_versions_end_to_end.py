"""Kept versions with the real window, engine and model: paging back to an
older branch and going on with it evaluates only what is new, because that
branch's keys and values were kept aside when the other one took the cache."""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from kvchat.app.core.settings import EngineSettings
from kvchat.app.presenters.controller import Controller
from kvchat.app.presenters.gui import build_window
from kvchat.engine.protocol import TurnStats
from tests.model_factory import TINY_THINKING, ModelFactory, model_factory  # noqa: F401
from tests.test_kv_kept import WAIT_MS, _close, _open, _send


def _edit(qtbot: QtBot, controller: Controller, key: str, text: str) -> TurnStats:
    with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS) as finished:
        controller.edit(key, text)
    stats: TurnStats = finished.args[0]
    return stats


def test_paging_back_and_going_on_evaluates_only_the_new_turn(qtbot: QtBot, data_dir: Path) -> None:
    window, controller = _open(qtbot, data_dir)
    try:
        _send(qtbot, controller, "Tell me about the history of tea, in detail. " * 4)
        first = _send(qtbot, controller, "And what about green tea in particular?")
        branch = [m.key for m in controller.history.messages]
        # A new version of the first message: the other branch leaves the cache.
        _edit(qtbot, controller, branch[0], "Name three rivers in Europe. " * 6)
        assert len(controller.history.messages) == 2
        assert "2 / 2" in window.chat_view.toPlainText()

        controller.page(controller.history.messages[0].key, -1)
        assert [m.key for m in controller.history.messages] == branch
        assert "1 / 2" in window.chat_view.toPlainText()
        going_on = _send(qtbot, controller, "And oolong?")
        # The old branch came back from where it was kept: the new message and
        # the template's few tokens around it are all that was evaluated.
        assert going_on.restored_from == "RAM"
        assert going_on.restored_tokens >= first.prompt_tokens
        assert going_on.evaluated_tokens < 25
        sent = [m.key for m in controller.history.messages]
        assert sent[:4] == branch and len(sent) == 6
    finally:
        _close(qtbot, window)


def test_a_thinking_models_reply_is_split_in_the_window(
    qtbot: QtBot,
    data_dir: Path,
    model_factory: ModelFactory,  # noqa: F811
) -> None:
    """A generated model whose template opens `<think>` (DeepSeek-R1's way)
    and whose tags are control tokens: the window gets thinking and answer
    apart, with no tag in either, and the store keeps both."""
    path = model_factory.path(TINY_THINKING)
    window, controller = build_window(str(path), EngineSettings(temperature=0), data_dir)
    try:
        with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS):
            pass
        stats = _send(qtbot, controller, "Hello")
        reply = controller.history.messages[-1]
        assert (reply.thinking, reply.content) == (" Hmm so", "Yes indeed")
        assert stats.thinking_tokens == 3  # " Hmm", " so" and the closing tag
        text = window.chat_view.toPlainText()
        assert "Thought for 3 tokens" in text and "Hmm" not in text
        assert "think>" not in text
    finally:
        _close(qtbot, window)
