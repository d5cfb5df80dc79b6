"""The Help menu's dialogs in a real window: the shortcuts list read from the
window's actions, and the About box's rows."""

from __future__ import annotations

import shiboken6
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QMenu
from pytestqt.qtbot import QtBot

from kvchat.ui.composer import Composer
from kvchat.ui.conversation_list import ConversationList
from kvchat.ui.help_dialogs import AboutDialog, plain_text
from kvchat.ui.main_window import MainWindow

# The keys README.md's table promises, as Qt writes them on Linux.
README_KEYS = {
    "Enter",
    "Shift+Enter",
    "Esc",
    "Ctrl+O",
    "Ctrl+,",
    "Ctrl+M",
    "Ctrl+N",
    "Ctrl+L",
    "Ctrl+Shift+E",
    "Ctrl+R",
    "Alt+Left",
    "Alt+Right",
    "Ctrl+Q",
    "F1",
    "Del",
    "F2",
}


def _keyed_actions(window: MainWindow) -> list[QAction]:
    """Every action in the window that has a key, wherever it hangs."""
    return [
        a
        for a in window.findChildren(QAction)
        if shiboken6.isValid(a) and any(not k.isEmpty() for k in a.shortcuts())
    ]


def test_the_shortcuts_list_has_every_action_that_has_a_key(qtbot: QtBot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    assert [plain_text(a.text()) for a in window.menuBar().actions()] == [
        "File",
        "View",
        "Chat",
        "Help",
    ]
    window.shortcuts_action.trigger()
    dialog = window.shortcuts_dialog
    assert dialog is not None and dialog.isVisible()
    rows = dialog.rows()
    assert rows[: len(Composer.KEYS)] == list(Composer.KEYS)
    keyed = _keyed_actions(window)
    assert len(keyed) >= 9
    listed = {keys for keys, _does in rows}
    for action in keyed:
        keys = ", ".join(
            k.toString(QKeySequence.SequenceFormat.NativeText) for k in action.shortcuts()
        )
        assert keys in listed, plain_text(action.text())
    assert len(rows) == len(Composer.KEYS) + len(keyed) + len(ConversationList.KEYS)
    assert rows[-len(ConversationList.KEYS) :] == list(ConversationList.KEYS)
    assert listed >= README_KEYS
    does = dict(rows)
    assert does["Ctrl+O"] == "File > Open model…"
    assert does["Ctrl+M"] == "View > Memory panels"
    assert does["F1"] == "Help > Keyboard shortcuts"
    assert does["Ctrl+Q"] == "File > Quit"
    # Actions in no menu say what they do in their status tip.
    assert does["Esc"].startswith("Stop the reply")
    assert does["Del"] == "Delete the selected conversation (in the list)"


def test_a_key_added_to_the_window_is_listed_the_next_time(qtbot: QtBot) -> None:
    """The list is read from the actions, so it cannot fall behind them."""
    window = MainWindow()
    qtbot.addWidget(window)
    view = next(a.menu() for a in window.menuBar().actions() if a.text() == "&View")
    assert isinstance(view, QMenu)
    added = QAction("&Zoom in", window)
    added.setShortcut(QKeySequence("Ctrl+="))
    view.addAction(added)
    window.show_shortcuts()
    assert window.shortcuts_dialog is not None
    assert ("Ctrl+=", "View > Zoom in") in window.shortcuts_dialog.rows()


def test_menu_text_is_read_without_its_mnemonics() -> None:
    assert plain_text("&Open model…") == "Open model…"
    assert plain_text("Save && &quit") == "Save & quit"


def test_the_about_box_shows_its_rows_and_takes_new_ones(qtbot: QtBot) -> None:
    dialog = AboutDialog()
    qtbot.addWidget(dialog)
    dialog.show_rows("kvchat 1.0", "A chat window.", [("kvchat", "1.0"), ("llama.cpp", "(no)")])
    assert dialog.heading.text() == "kvchat 1.0"
    assert dialog.rows() == [("kvchat", "1.0"), ("llama.cpp", "(no)")]
    dialog.show_rows("kvchat 1.0", "A chat window.", [("llama.cpp", "0.5.0")])
    assert dialog.rows() == [("llama.cpp", "0.5.0")]
