"""The look: a style sheet written in palette roles, and icons tinted to the palette.

Both follow the system's light or dark scheme; `apply_theme` runs again when
the scheme changes.
"""

from __future__ import annotations

from importlib import resources

from PySide6.QtCore import QByteArray, QRectF, Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPainter, QPalette, QPixmap
from PySide6.QtSvg import QSvgRenderer
from PySide6.QtWidgets import QApplication

ICON_SIZES = (16, 24, 32, 48)


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
