"""The look: a style sheet written in palette roles, and icons tinted to the palette.

Both follow the palette, which is the system's light or dark scheme unless
the person chose one (`apply_scheme`); the window tints its icons again when
the scheme changes (app.gui connects `colorSchemeChanged`).
"""

from __future__ import annotations

from importlib import resources

from PySide6.QtCore import QByteArray, QRectF, Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPainter, QPalette, QPixmap
from PySide6.QtSvg import QSvgRenderer
from PySide6.QtWidgets import QApplication

ICON_SIZES = (16, 24, 32, 48)

# The person's choice of colours (app.settings.Appearance.theme) as Qt's request.
SCHEMES = {
    "system": Qt.ColorScheme.Unknown,
    "light": Qt.ColorScheme.Light,
    "dark": Qt.ColorScheme.Dark,
}


def _resource_text(name: str) -> str:
    return resources.files("kvchat.resources").joinpath(name).read_text(encoding="utf-8")


def icon(name: str, color: QColor | None = None) -> QIcon:
    """An icon from resources/icons, its strokes drawn in `color` (default: text)."""
    if color is None:
        color = QGuiApplication.palette().color(QPalette.ColorRole.WindowText)
    svg = _resource_text(f"icons/{name}.svg").replace("@color@", color.name())
    renderer = QSvgRenderer(QByteArray(svg.encode()))
    result = QIcon()
    for size in ICON_SIZES:
        pixmap = QPixmap(size, size)
        pixmap.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pixmap)
        renderer.render(painter, QRectF(0, 0, size, size))
        painter.end()
        result.addPixmap(pixmap)
    return result


def apply_theme(app: QApplication) -> None:
    """The Fusion style (it honours the palette everywhere) and our style sheet."""
    app.setStyle("Fusion")
    app.setStyleSheet(_resource_text("style.qss"))
    app.setWindowIcon(icon("kvchat"))


def apply_scheme(app: QApplication, theme: str) -> None:
    """Light or dark colours, or the system's ("system"), for the whole app.

    The platform is asked first (QStyleHints.setColorScheme): on Windows,
    macOS and the GNOME and KDE themes it switches its own palette and
    announces the change. Where it cannot (X11 without a desktop theme, the
    offscreen platform) it keeps its scheme, and the palette is set here.

    Raises:
        ValueError: `theme` is not one of SCHEMES.
    """
    if theme not in SCHEMES:
        raise ValueError(f"unknown colour theme {theme!r}: one of {', '.join(SCHEMES)}")
    wanted = SCHEMES[theme]
    hints = app.styleHints()
    hints.setColorScheme(wanted)
    if wanted == Qt.ColorScheme.Unknown or hints.colorScheme() == wanted:
        # An empty palette resolves to the platform's, undoing one set here before.
        app.setPalette(QPalette())
    else:
        app.setPalette(_palette(dark=wanted == Qt.ColorScheme.Dark))
    if app.styleSheet():
        # Under a style sheet, widgets polished before keep the old palette
        # (hidden ones, the menu bar) until they are polished again.
        app.setStyleSheet(app.styleSheet())


def _palette(dark: bool) -> QPalette:
    """A full palette in Fusion's colours, for a platform that keeps its own scheme."""
    if dark:
        window, button, base, text = "#323232", "#3c3c3c", "#262626", "#e8e8e8"
        highlight, link, placeholder, alternate = "#3d7dd8", "#7ab4ff", "#8c8c8c", "#2e2e2e"
    else:
        window, button, base, text = "#efefef", "#efefef", "#ffffff", "#000000"
        highlight, link, placeholder, alternate = "#308cc6", "#0b57c2", "#7f7f7f", "#f7f7f7"
    # Derives the bevels (light, mid, dark, shadow) and the disabled colours.
    palette = QPalette(QColor(button), QColor(window))
    role = QPalette.ColorRole
    for name, color in (
        (role.WindowText, text),
        (role.ButtonText, text),
        (role.Text, text),
        (role.Base, base),
        (role.AlternateBase, alternate),
        (role.ToolTipBase, base),
        (role.ToolTipText, text),
        (role.Highlight, highlight),
        (role.Accent, highlight),
        (role.HighlightedText, "#ffffff"),
        (role.Link, link),
        (role.LinkVisited, link),
        (role.PlaceholderText, placeholder),
        (role.BrightText, "#ff5c5c"),
    ):
        palette.setColor(QPalette.ColorGroup.Active, name, QColor(color))
        palette.setColor(QPalette.ColorGroup.Inactive, name, QColor(color))
    return palette
