"""The colour scheme the person chose: dark or light whatever the platform
says, and the platform's own again for "system"."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication, QLabel, QMainWindow, QWidget
from pytestqt.qtbot import QtBot

from kvchat.ui.theme import apply_scheme, icon

ROLE = QPalette.ColorRole


@pytest.fixture
def app(qapp: QApplication) -> Iterator[QApplication]:
    yield qapp
    apply_scheme(qapp, "system")  # the palette is the whole test session's


def test_dark_and_light_whatever_the_platform_says(app: QApplication, qtbot: QtBot) -> None:
    label = QLabel("text")
    qtbot.addWidget(label)
    label.show()
    apply_scheme(app, "dark")
    palette = app.palette()
    assert palette.color(ROLE.Window).lightness() < 80
    assert palette.color(ROLE.Base).lightness() < 80
    assert palette.color(ROLE.WindowText).lightness() > 180
    assert palette.color(ROLE.Text).lightness() > 180
    # Widgets follow (Qt tells them through the event loop).
    qtbot.waitUntil(lambda: label.palette().color(ROLE.Window) == palette.color(ROLE.Window))
    apply_scheme(app, "light")
    palette = app.palette()
    assert palette.color(ROLE.Window).lightness() > 200
    assert palette.color(ROLE.Base).lightness() > 200
    assert palette.color(ROLE.WindowText).lightness() < 60


def test_system_brings_the_platforms_palette_back(app: QApplication) -> None:
    platform = QPalette(app.palette())
    apply_scheme(app, "dark")
    assert app.palette().color(ROLE.Window) != platform.color(ROLE.Window)
    apply_scheme(app, "system")
    assert app.palette().color(ROLE.Window) == platform.color(ROLE.Window)
    assert app.palette().color(ROLE.Text) == platform.color(ROLE.Text)


def test_icons_drawn_after_a_switch_take_its_text_colour(app: QApplication) -> None:
    apply_scheme(app, "dark")
    image = icon("send").pixmap(32, 32).toImage()
    drawn = [
        image.pixelColor(x, y)
        for x in range(32)
        for y in range(32)
        if image.pixelColor(x, y).alpha()
    ]
    assert drawn and max(color.lightness() for color in drawn) > 180


def test_widgets_under_the_style_sheet_follow_the_switch(app: QApplication, qtbot: QtBot) -> None:
    """Shown or hidden (as the conversation panel is, in its tab behind Memory)."""
    before = app.styleSheet()
    app.setStyleSheet("QLabel#unused { padding: 1px; }")
    window = QMainWindow()
    qtbot.addWidget(window)
    window.menuBar().addMenu("File")
    hidden = QWidget(window)
    window.show()
    hidden.hide()
    qtbot.waitExposed(window)
    try:
        apply_scheme(app, "dark")
        dark = app.palette().color(ROLE.Window)
        for widget in (window.menuBar(), hidden):
            qtbot.waitUntil(lambda widget=widget: widget.palette().color(ROLE.Window) == dark)
    finally:
        window.close()
        app.setStyleSheet(before)


def test_an_unknown_theme_is_refused(app: QApplication) -> None:
    with pytest.raises(ValueError, match="unknown colour theme 'blue'"):
        apply_scheme(app, "blue")
