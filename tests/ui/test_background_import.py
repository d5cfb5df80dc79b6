"""ui.background_import: the import on a thread, the call back on the GUI thread."""

import sys
import threading

import shiboken6
from PySide6.QtCore import QObject
from pytestqt.qtbot import QtBot

from kvchat.ui.background_import import POLL_MS, import_then


def _join_import_threads() -> None:
    for thread in threading.enumerate():
        if thread.name == "kvchat-import":
            thread.join()


def test_then_runs_on_the_gui_thread_with_the_modules_imported(qtbot: QtBot) -> None:
    context = QObject()
    seen: list[tuple[bool, bool]] = []

    def then() -> None:
        seen.append(
            (threading.current_thread() is threading.main_thread(), "tabnanny" in sys.modules)
        )

    import_then(["tabnanny", "no_such_module_here"], context, then)
    qtbot.waitUntil(lambda: bool(seen))
    # The module that is missing did not stop the others, nor the call.
    assert seen == [(True, True)]


def test_nothing_is_called_once_its_context_is_gone(qtbot: QtBot) -> None:
    context = QObject()
    seen: list[bool] = []
    import_then(["tabnanny"], context, lambda: seen.append(True))
    shiboken6.delete(context)
    _join_import_threads()
    qtbot.wait(3 * POLL_MS)  # time for the look that would have called it
    assert seen == []
