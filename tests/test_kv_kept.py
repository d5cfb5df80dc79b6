"""The window keeps each conversation's keys and values: a switch back and a
restart evaluate only the new tokens (real window, engine and model)."""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from kvchat.app.core.settings import EngineSettings
from kvchat.app.presenters.controller import Controller
from kvchat.app.presenters.gui import build_window
from kvchat.engine.protocol import TurnStats
from kvchat.ui.main_window import MainWindow

WAIT_MS = 60_000
SETTINGS = EngineSettings(seed=3, max_tokens=24)


def _send(qtbot: QtBot, controller: Controller, text: str) -> TurnStats:
    with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS) as finished:
        controller.send(text)
    stats: TurnStats = finished.args[0]
    return stats


def _open(qtbot: QtBot, data_dir: Path) -> tuple[MainWindow, Controller]:
    window, controller = build_window(None, SETTINGS, data_dir)
    if controller.model is None:
        with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS):
            pass
    return window, controller


def _close(qtbot: QtBot, window: MainWindow) -> None:
    window.close()
    window.deleteLater()
    qtbot.wait(1)


def test_a_switch_back_and_a_restart_restore_instead_of_evaluating(
    qtbot: QtBot, data_dir: Path
) -> None:
    window, controller = _open(qtbot, data_dir)
    try:
        first = _send(qtbot, controller, "Tell me about the history of tea, in detail. " * 4)
        conversation = controller.history.conversation
        assert conversation is not None
        window.new_action.trigger()
        _send(qtbot, controller, "Name three birds. " * 6)
        controller.open_conversation(conversation.key)
        back = _send(qtbot, controller, "And coffee?")
        assert back.restored_from == "RAM"
        assert back.restored_tokens >= first.prompt_tokens
        assert back.evaluated_tokens < 25
        assert "restored from RAM" in window.chat_view.toPlainText()
    finally:
        _close(qtbot, window)
    assert list((data_dir / "kv-cache").glob("*.kvstate"))

    window, controller = _open(qtbot, data_dir)
    try:
        controller.open_conversation(conversation.key)
        again = _send(qtbot, controller, "And cocoa?")
        assert again.restored_from == "disk"
        assert again.restored_tokens >= back.prompt_tokens
        assert again.evaluated_tokens < 25
    finally:
        _close(qtbot, window)
