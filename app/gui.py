"""Starting the window: the Qt application, the theme, the controller."""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtWidgets import QApplication

from app.controller import Controller
from app.engine_client import EngineClient
from app.paths import engine_log_path
from app.settings import EngineSettings
from ui.main_window import MainWindow
from ui.theme import apply_theme


def build_window(
    model_path: str | None, settings: EngineSettings, data_dir: Path
) -> tuple[MainWindow, Controller]:
    """The window and its controller, with the model starting to load.

    The window is shown before the model has loaded, so loading progress is visible.
    """
    window = MainWindow()
    engine = EngineClient(engine_log_path(data_dir))
    controller = Controller(window, engine, settings)
    window.show()
    controller.start(model_path)
    return window, controller


def run_gui(model_path: str | None, settings: EngineSettings, data_dir: Path) -> int:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setApplicationName("kvchat")
    app.setDesktopFileName("kvchat")
    apply_theme(app)
    window, _controller = build_window(model_path, settings, data_dir)
    app.styleHints().colorSchemeChanged.connect(lambda _scheme: window.refresh_theme())
    return app.exec()
