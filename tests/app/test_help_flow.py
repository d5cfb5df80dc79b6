"""The Help menu in the real window with a scripted engine: About before the
engine has reported, the data folder, and an engine log not written yet.
With the real engine: tests/test_help_end_to_end.py."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from PySide6.QtCore import QUrl
from PySide6.QtWidgets import QMessageBox
from pytestqt.qtbot import QtBot

from kvchat.app.core.paths import engine_log_path
from kvchat.app.presenters.about import NOT_REPORTED
from kvchat.app.presenters.controller import Controller
from kvchat.ui.main_window import MainWindow
from tests.desktop_urls import Opened, urls_kept
from tests.scripted_engine import ScriptedEngine, open_window


@pytest.fixture
def opened() -> Iterator[Opened]:
    """The URLs the window hands the desktop, which opens none of them."""
    with urls_kept() as kept:
        yield kept


@pytest.fixture
def scripted(qtbot: QtBot, data_dir: Path) -> Iterator[tuple[MainWindow, Controller]]:
    engine = ScriptedEngine(lambda _messages: ["Hello ", "there."])
    window, controller = open_window(data_dir, engine)
    qtbot.waitUntil(lambda: controller.model is not None)
    yield window, controller
    window.close()
    window.deleteLater()
    qtbot.wait(1)


def _message_box(window: MainWindow) -> QMessageBox:
    box = window.help_message
    assert box is not None and box.isVisible()
    return box


def test_about_before_the_engine_reports_says_so(
    qtbot: QtBot, scripted: tuple[MainWindow, Controller], data_dir: Path
) -> None:
    window, _controller = scripted
    window.about_action.trigger()
    assert window.about_dialog is not None and window.about_dialog.isVisible()
    rows = dict(window.about_dialog.rows())
    assert rows["llama.cpp"] == NOT_REPORTED == "(the engine has not reported yet)"
    assert rows["kvchat"] == metadata.version("kvchat")
    assert rows["llama-cpp-python"] == metadata.version("llama-cpp-python")
    assert rows["Data folder"] == str(data_dir)
    assert rows["Engine log"] == str(engine_log_path(data_dir))
    assert window.about_dialog.heading.text() == f"kvchat {metadata.version('kvchat')}"


def test_open_engine_log_without_a_log_says_so(
    qtbot: QtBot, scripted: tuple[MainWindow, Controller], data_dir: Path, opened: Opened
) -> None:
    window, _controller = scripted
    assert not engine_log_path(data_dir).exists()
    window.engine_log_action.trigger()
    box = _message_box(window)
    assert box.text() == (
        f"There is no engine log yet: the engine writes one to {engine_log_path(data_dir)} "
        "once it has started."
    )
    assert opened.urls == []
    box.accept()


def test_open_data_folder_opens_it(
    qtbot: QtBot, scripted: tuple[MainWindow, Controller], data_dir: Path, opened: Opened
) -> None:
    window, _controller = scripted
    window.data_folder_action.trigger()
    assert opened.urls == [QUrl.fromLocalFile(str(data_dir))]
    assert window.help_message is None
