"""The window's "Serve on localhost": API requests on the window's own engine."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import openai
import pytest
from pytestqt.qtbot import QtBot

from kvchat.app.core.settings import EngineSettings, Settings
from kvchat.app.core.settings_file import read_settings, settings_path
from kvchat.app.presenters.api_service import attach_serving
from kvchat.app.presenters.gui import build_window
from kvchat.app.presenters.settings_flow import SettingsFlow
from kvchat.engine.protocol import TurnStats

WAIT_MS = 60_000


def test_serving_from_the_window_shares_its_engine_and_keeps_its_cache(
    qtbot: QtBot, data_dir: Path
) -> None:
    window, controller = build_window(None, EngineSettings(seed=1, max_tokens=40), data_dir)
    try:
        service = attach_serving(
            window, controller.engine, Settings(serve_port=0), controller.settings_file
        )
        with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS):
            pass
        with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS) as first:
            controller.send("Tell me about the moon in two sentences.")
        first_stats: TurnStats = first.args[0]

        window.serve_action.trigger()
        assert service.running and window.serve_button.isVisible()
        assert service.url in window.serve_button.text()
        assert controller.settings_file.join(WAIT_MS / 1000)
        assert read_settings(settings_path(data_dir)).settings.serve_on_localhost

        fills: list[int] = []
        controller.engine.cache_filled.connect(fills.append)
        replies: list[str] = []

        def ask() -> None:
            client = openai.OpenAI(base_url=service.url, api_key="none", max_retries=0)
            model = client.models.list().data[0].id
            reply = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "Write a limerick about a cat. " * 5}],
                max_tokens=24,
            )
            replies.append(reply.choices[0].message.content or "")

        asker = threading.Thread(target=ask)
        asker.start()
        qtbot.waitUntil(lambda: not asker.is_alive(), timeout=WAIT_MS)
        assert replies and replies[0]
        # The panels followed the API's reply as it was written, and the
        # status bar says who asked.
        assert len(fills) > 3
        qtbot.waitUntil(lambda: "127.0.0.1: prompt" in window.serve_button.text())

        # The window's conversation was kept aside, not thrown away.
        with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS) as second:
            controller.send("And about the sun?")
        stats: TurnStats = second.args[0]
        assert stats.restored_tokens >= first_stats.prompt_tokens
        assert stats.evaluated_tokens < stats.prompt_tokens - first_stats.prompt_tokens + 10

        # Settings shows the same switch, and turning it off there stops the server.
        flow = controller.settings_flow
        assert isinstance(flow, SettingsFlow)
        dialog = flow.open()
        assert dialog.serve_check.isChecked()
        url = service.url
        dialog.serve_check.click()
        assert not window.serve_action.isChecked()
        dialog.close()
        assert not service.running and not window.serve_button.isVisible()
        assert controller.settings_file.join(WAIT_MS / 1000)
        assert not read_settings(settings_path(data_dir)).settings.serve_on_localhost
        qtbot.wait(1500)  # the server's thread ends by itself
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/models")
    finally:
        window.close()
        window.deleteLater()
        qtbot.wait(1)
