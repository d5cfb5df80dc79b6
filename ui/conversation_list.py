"""The side list of conversations: newest activity first, with search, new,
rename, delete (with undo) and export."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PySide6.QtCore import QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

SEARCH_DELAY_MS = 200
UNDO_SHOWN_MS = 10_000
KEY_ROLE = Qt.ItemDataRole.UserRole


@dataclass(frozen=True)
class ConversationItem:
    """One row: the conversation's key, its title, and a line of detail for
    the tooltip (model, when, how long)."""

    key: str
    title: str
    detail: str = ""


class ConversationList(QWidget):
    """The conversations; it shows what it is given and emits what the person asks.

    Signals:
        new_requested(): New was pressed.
        chosen(str): a conversation was picked (its key).
        rename_requested(str, str): key and the new title (not empty).
        delete_requested(str): key; the owner deletes it and may `offer_undo`.
        undo_requested(str): key of the conversation to bring back.
        search_changed(str): the search text, once typing pauses.
        export_requested(str, str): key and "markdown" or "json".
    """

    new_requested = Signal()
    chosen = Signal(str)
    rename_requested = Signal(str, str)
    delete_requested = Signal(str)
    undo_requested = Signal(str)
    search_changed = Signal(str)
    export_requested = Signal(str, str)
    # The key the list's edit trigger (EditKeyPressed) answers, for the
    # shortcuts list: it is the view's own, not an action the window can find.
    KEYS = (("F2", "Rename the selected conversation (in the list)"),)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("conversationList")
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search conversations")
        self.search.setClearButtonEnabled(True)
        self.new_button = QPushButton("New")
        self.new_button.setToolTip("Start a new conversation (Ctrl+N)")
        self.new_button.clicked.connect(self.new_requested)
        top = QHBoxLayout()
        top.addWidget(self.search, 1)
        top.addWidget(self.new_button)

        self.list = QListWidget()
        # Long titles end in "…" rather than widening the list.
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setObjectName("conversations")
        self.list.setEditTriggers(QAbstractItemView.EditTrigger.EditKeyPressed)
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._menu)
        self.list.itemClicked.connect(self._clicked)
        self.list.itemActivated.connect(self._clicked)
        self.list.itemChanged.connect(self._renamed)

        self.undo_label = QLabel()
        self.undo_label.setWordWrap(True)
        self.undo_button = QPushButton("Undo")
        self.undo_button.clicked.connect(self._undo)
        undo = QWidget()
        undo.setObjectName("undoBar")
        undo_layout = QHBoxLayout(undo)
        undo_layout.setContentsMargins(0, 0, 0, 0)
        undo_layout.addWidget(self.undo_label, 1)
        undo_layout.addWidget(self.undo_button)
        self.undo_bar = undo
        self.undo_bar.hide()
        self._undo_key = ""
        self._undo_timer = QTimer(self)
        self._undo_timer.setSingleShot(True)
        self._undo_timer.setInterval(UNDO_SHOWN_MS)
        self._undo_timer.timeout.connect(self.undo_bar.hide)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(top)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.undo_bar)

        self._search_timer = QTimer(self)
        self._search_timer.setSingleShot(True)
        self._search_timer.setInterval(SEARCH_DELAY_MS)
        self._search_timer.timeout.connect(lambda: self.search_changed.emit(self.search.text()))
        self.search.textChanged.connect(lambda _text: self._search_timer.start())

        self.delete_action = QAction("Delete", self.list)
        self.delete_action.setShortcut(QKeySequence(QKeySequence.StandardKey.Delete))
        self.delete_action.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        # In no menu: the window's shortcuts list says what it does from here.
        self.delete_action.setStatusTip("Delete the selected conversation (in the list)")
        self.delete_action.triggered.connect(self._delete_current)
        self.list.addAction(self.delete_action)

    # What the owner tells the list.

    def set_conversations(self, items: Sequence[ConversationItem], current: str | None) -> None:
        """Shows these rows, in this order, with `current` selected."""
        self.list.blockSignals(True)
        self.list.clear()
        for entry in items:
            row = QListWidgetItem(entry.title)
            row.setData(KEY_ROLE, entry.key)
            row.setToolTip(entry.detail)
            row.setFlags(row.flags() | Qt.ItemFlag.ItemIsEditable)
            self.list.addItem(row)
        self.list.blockSignals(False)
        self.select(current)

    def select(self, key: str | None) -> None:
        """Highlights the conversation shown in the chat (none for a new one)."""
        self.list.blockSignals(True)
        self.list.clearSelection()
        self.list.setCurrentRow(-1)
        for index in range(self.list.count()):
            row = self.list.item(index)
            if row.data(KEY_ROLE) == key:
                self.list.setCurrentItem(row)
                break
        self.list.blockSignals(False)

    def keys(self) -> list[str]:
        return [str(self.list.item(i).data(KEY_ROLE)) for i in range(self.list.count())]

    def titles(self) -> list[str]:
        return [self.list.item(i).text() for i in range(self.list.count())]

    def offer_undo(self, key: str, title: str) -> None:
        """Says what was deleted, with an Undo button, for a few seconds."""
        self._undo_key = key
        self.undo_label.setText(f"Deleted “{title}”.")
        self.undo_bar.show()
        self._undo_timer.start()

    # Internals.

    def _row(self, key: str) -> QListWidgetItem | None:
        for index in range(self.list.count()):
            row = self.list.item(index)
            if row.data(KEY_ROLE) == key:
                return row
        return None

    def start_rename(self, key: str) -> None:
        row = self._row(key)
        if row is not None:
            self.list.editItem(row)

    def _clicked(self, row: QListWidgetItem) -> None:
        self.chosen.emit(str(row.data(KEY_ROLE)))

    def _renamed(self, row: QListWidgetItem) -> None:
        title = row.text().strip()
        if title:
            self.rename_requested.emit(str(row.data(KEY_ROLE)), title)

    def _delete_current(self) -> None:
        row = self.list.currentItem()
        if row is not None:
            self.delete_requested.emit(str(row.data(KEY_ROLE)))

    def _undo(self) -> None:
        self.undo_bar.hide()
        self._undo_timer.stop()
        if self._undo_key:
            self.undo_requested.emit(self._undo_key)
            self._undo_key = ""

    def _menu(self, point: QPoint) -> None:
        row = self.list.itemAt(point)
        if row is None:
            return
        key = str(row.data(KEY_ROLE))
        menu = QMenu(self)
        menu.addAction("Rename", lambda: self.start_rename(key))
        menu.addAction("Export as Markdown…", lambda: self.export_requested.emit(key, "markdown"))
        menu.addAction("Export as JSON…", lambda: self.export_requested.emit(key, "json"))
        menu.addSeparator()
        menu.addAction("Delete", lambda: self.delete_requested.emit(key))
        menu.popup(self.list.viewport().mapToGlobal(point))
