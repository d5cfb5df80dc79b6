"""Importing a slow module on a thread of its own while the window answers the person.

The modules imported this way make no Qt objects as they load (they only
define classes), so where they are imported does not matter to Qt; what uses
them runs on the GUI thread, which only looks whether the thread is done.
Nothing crosses between the threads but the modules themselves.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable, Sequence

from PySide6.QtCore import QObject, QTimer

# How often the GUI thread looks whether the import is done.
POLL_MS = 20


def import_then(modules: Sequence[str], context: QObject, then: Callable[[], None]) -> None:
    """Imports `modules` on a thread of their own, then calls `then` on the GUI
    thread, unless `context` has been deleted by then.

    A module that fails to import is imported again by `then`, on the GUI
    thread, where its error is seen as it would have been without this.
    """
    thread = threading.Thread(
        target=_import, args=(tuple(modules),), name="kvchat-import", daemon=True
    )
    poll = QTimer(context)
    poll.setInterval(POLL_MS)

    def check() -> None:
        if not thread.is_alive():
            poll.stop()
            poll.deleteLater()
            then()

    poll.timeout.connect(check)
    thread.start()
    poll.start()


def _import(modules: tuple[str, ...]) -> None:
    for name in modules:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
