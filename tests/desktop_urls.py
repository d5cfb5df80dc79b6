"""A stand-in for the desktop's file opener: the URLs the window hands
QDesktopServices are kept, so no file manager or text viewer starts in a test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from PySide6.QtCore import QObject, QUrl, Slot
from PySide6.QtGui import QDesktopServices


class Opened(QObject):
    """Takes the file URLs that QDesktopServices would hand the desktop."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[QUrl] = []

    @Slot(QUrl)
    def open_url(self, url: QUrl) -> None:
        self.urls.append(url)


@contextmanager
def urls_kept() -> Iterator[Opened]:
    """Every file:// URL the window opens while it lasts, in the order it opened them."""
    handler = Opened()
    QDesktopServices.setUrlHandler("file", handler, "open_url")
    try:
        yield handler
    finally:
        QDesktopServices.unsetUrlHandler("file")
