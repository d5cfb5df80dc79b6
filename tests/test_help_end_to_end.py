"""The Help menu with the real engine: llama.cpp's version as the engine host
reports it, and diagnostics that hold versions, settings and the log's end
but never a conversation's text or the system prompt."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from PySide6.QtCore import QUrl
from PySide6.QtGui import QGuiApplication
from pytestqt.qtbot import QtBot

from kvchat.app.core.paths import engine_log_path
from kvchat.app.core.settings import EngineSettings
from kvchat.app.presenters.about import NOT_REPORTED, llama_cpp_text
from kvchat.app.presenters.gui import build_window
from kvchat.app.presenters.help_flow import DIAGNOSTICS_COPIED
from kvchat.engine.build_info import probe_engine_build
from kvchat.engine.protocol import HostStarted, TurnStats
from tests.desktop_urls import Opened, urls_kept

WAIT_MS = 60_000
# Text that must never reach the diagnostics: a message, and the system prompt.
MESSAGE = "Describe the violet heron Quillfeather7319 in one line."
SYSTEM_PROMPT = "You are Marrowbrook4412, a terse assistant."


@pytest.fixture
def opened() -> Iterator[Opened]:
    """The URLs the window hands the desktop, which opens none of them."""
    with urls_kept() as kept:
        yield kept


def test_the_real_engine_reports_llama_cpp_and_the_diagnostics_keep_conversations_out(
    qtbot: QtBot, data_dir: Path, opened: Opened
) -> None:
    window, controller = build_window(
        None, EngineSettings(system_prompt=SYSTEM_PROMPT, seed=3, max_tokens=24), data_dir
    )
    try:
        started: list[HostStarted] = []
        controller.engine.host_started.connect(started.append)
        window.about_action.trigger()  # open before the engine reports: it fills in after
        with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS):
            pass
        with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS) as finished:
            window.composer.setPlainText(MESSAGE)
            window.send_button.click()
        stats: TurnStats = finished.args[0]
        reply = controller.conversation[-1].content
        assert stats.generated_tokens > 0 and reply.strip()

        # About: llama.cpp as the engine host reported it, the same as a probe of its own says.
        assert len(started) == 1 and started[0].build is not None
        probed = probe_engine_build()
        assert started[0].build == probed
        assert window.about_dialog is not None and window.about_dialog.isVisible()
        rows = dict(window.about_dialog.rows())
        assert rows["llama.cpp"] == llama_cpp_text(probed) != NOT_REPORTED
        assert probed.llama_cpp in rows["llama.cpp"]
        assert rows["kvchat"] == metadata.version("kvchat")
        assert rows["llama-cpp-python"] == metadata.version("llama-cpp-python")
        assert rows["PySide6"].startswith(metadata.version("PySide6-Essentials") + " (Qt ")
        assert rows["Python"].startswith(platform.python_version())
        assert rows["Backends"].startswith(", ".join(probed.backends))
        assert "CPU" in probed.backends

        # Copy diagnostics: versions, settings and the log's end, never the conversation.
        window.diagnostics_action.trigger()
        text = QGuiApplication.clipboard().text()
        assert window.statusBar().currentMessage() == DIAGNOSTICS_COPIED
        for name, value in dict(window.about_dialog.rows()).items():
            if name in ("kvchat", "llama.cpp", "llama-cpp-python", "Backends", "PySide6"):
                assert f"{name}: {value}" in text
        assert '"n_batch": 512' in text and '"seed": 3' in text
        assert f'"system_prompt": "(left out: {len(SYSTEM_PROMPT)} characters)"' in text
        assert probed.system_info in text
        assert "SmolLM2-135M-Instruct" in text  # the model loaded
        log_lines = engine_log_path(data_dir).read_text(encoding="utf-8").splitlines()
        assert any("llama.cpp" in line for line in log_lines)
        last = [line for line in log_lines if line.strip()][-1]
        assert last in text
        assert MESSAGE not in text and "Quillfeather7319" not in text
        assert SYSTEM_PROMPT not in text and "Marrowbrook4412" not in text
        assert reply.strip() not in text

        # The log exists now: Open engine log hands it to the desktop.
        window.engine_log_action.trigger()
        assert opened.urls == [QUrl.fromLocalFile(str(engine_log_path(data_dir)))]
    finally:
        window.close()
        window.deleteLater()
        qtbot.wait(1)
