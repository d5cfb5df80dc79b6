"""Abuse of the interface with the real model through the real engine host
and the real window: random sessions, unusual text, a 1 MB message.

The scripted engine runs hundreds of random sessions
(tests/app/test_random_sessions.py); these few check that the real pipe,
host and store keep the same invariants, and the autouse fixture in
conftest.py fails any test that leaves an engine process running.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from kvchat.app.core.settings import EngineSettings
from kvchat.app.presenters.gui import build_window
from tests.app.test_input_text import HOSTILE
from tests.random_sessions import Session
from tests.stored import stored_rows, wait_until_saved

WAIT_MS = 60_000
SEEDS = range(6)
STEPS = 10


@pytest.mark.parametrize("seed", SEEDS)
def test_random_sessions_with_the_real_model(
    qtbot: QtBot, data_dir: Path, model_path: Path, seed: int
) -> None:
    # Short replies and a small context keep each load and reply quick.
    settings = EngineSettings(seed=seed, max_tokens=12, n_ctx=1024)
    window, controller = build_window(None, settings, data_dir)
    try:
        qtbot.waitUntil(lambda: controller.model is not None, timeout=WAIT_MS)
        session = Session(
            qtbot,
            window,
            controller,
            data_dir,
            str(model_path),
            random.Random(seed),
            wait_ms=(0, 150),
            settle_ms=WAIT_MS,
        )
        session.send()
        for _ in range(STEPS):
            session.step()
        session.check(idle=False)
        session.settle()
        session.check()
    finally:
        window.close()
        window.deleteLater()
        qtbot.wait(1)
    assert not controller.engine.running
    session.check()


def test_unusual_text_reaches_the_real_model_and_comes_back_stored(
    qtbot: QtBot, data_dir: Path
) -> None:
    window, controller = build_window(None, EngineSettings(seed=3, max_tokens=16), data_dir)
    try:
        qtbot.waitUntil(lambda: controller.model is not None, timeout=WAIT_MS)
        typed = "\n".join(text for text, _held in HOSTILE.values())
        window.composer.setPlainText(typed)
        composed = window.composer.toPlainText()
        with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS) as finished:
            qtbot.keyClick(window.composer, Qt.Key.Key_Return)
        assert finished.args[0].prompt_tokens > 20  # the engine tokenized all of it
        assert not window.banner.isVisibleTo(window)
        reply = controller.history.messages[-1].content
        wait_until_saved(qtbot, controller.history.saver)
        assert stored_rows(data_dir) == [("user", composed, "done"), ("assistant", reply, "done")]
        assert "before\x00after" in composed and "\ud800" not in composed
        # The engine is still there for the next message.
        with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS):
            controller.send("And now plainly: hello.")
    finally:
        window.close()
        window.deleteLater()
        qtbot.wait(1)


def test_a_megabyte_message_is_refused_with_both_sizes_and_given_back(
    qtbot: QtBot, data_dir: Path
) -> None:
    window, controller = build_window(None, EngineSettings(max_tokens=16), data_dir)
    try:
        qtbot.waitUntil(lambda: controller.model is not None, timeout=WAIT_MS)
        big = "".join(f"line {i:06d} of a very long paste\n" for i in range(31_000))
        assert len(big.encode()) > 1_000_000
        window.composer.setPlainText(big)
        started = time.perf_counter()
        with qtbot.waitSignal(controller.engine.chat_failed, timeout=WAIT_MS) as failed:
            window.send_button.click()
            blocked = time.perf_counter() - started
        qtbot.waitUntil(lambda: not controller.busy)
        # The host tokenized it (not the GUI), and refused it with both numbers.
        message = failed.args[1]
        assert "tokens long, and the context holds 4096" in message
        assert window.banner.text() == f"The message was not sent: {message}"
        assert window.composer.toPlainText() == big  # nothing typed is lost
        wait_until_saved(qtbot, controller.history.saver)
        assert stored_rows(data_dir) == []  # nor stored as if it was sent
        assert "line 000000" not in window.chat_view.toPlainText()
        print(f"\n1 MB send: GUI thread busy {blocked * 1000:.0f} ms in the send call")
        # The window goes on: a short message is answered.
        with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS):
            controller.send("Short one.")
        wait_until_saved(qtbot, controller.history.saver)
        assert [row[0] for row in stored_rows(data_dir)] == ["user", "assistant"]
    finally:
        window.close()
        window.deleteLater()
        qtbot.wait(1)
