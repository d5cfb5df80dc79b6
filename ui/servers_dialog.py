"""The servers a person chats through: add, edit, remove, and test one.

The dialog shows plain rows it is given and emits what the person asked
for; it reads no file and asks no server. It never holds a kept API key:
a row only says whether one is kept, and a key typed here goes out in
`saved` (or in `test_requested`) and nowhere else. The rules for a name
and an address come from the owner (the bound, and a function that checks
an address), so they are written once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

# Checks an address as typed: the address as kept, or ValueError with words for a person.
AddressCheck = Callable[[str], str]
# The warning for a key sent to an address ("" for none); the key may be any
# non-empty text when one is kept but not shown.
KeyWarning = Callable[[str, str], str]

KEY_KEPT = "kept"
KEPT_PLACEHOLDER = "(kept)"
ERROR_STYLE = "color: #fff; background: #b3261e; padding: 4px;"
WARNING_STYLE = "color: #000; background: #f5c542; padding: 4px;"


@dataclass(frozen=True)
class ServerRow:
    """A server as the dialog is given it."""

    name: str
    base_url: str
    key_kept: bool = False


class SavedServer(NamedTuple):
    """A server as the person left it.

    `api_key` None leaves the key as it was (the one kept for `previous_url`,
    moved with the server when its address changed); "" forgets it.
    `previous_url` is the address the server had when the dialog opened,
    "" for a server added here.
    """

    name: str
    base_url: str
    api_key: str | None
    previous_url: str = ""


@dataclass(frozen=True)
class _Row:
    name: str
    base_url: str
    api_key: str | None  # typed here; None: as it was
    previous_url: str
    was_kept: bool

    @property
    def key_kept(self) -> bool:
        return bool(self.api_key) if self.api_key is not None else self.was_kept

    @property
    def kept_key_of(self) -> str:
        """The address whose kept key stands for this row when no key is typed."""
        return self.previous_url if self.api_key is None and self.was_kept else ""


def _show(label: QLabel, text: str, style: str = "") -> None:
    label.setText(text)
    label.setStyleSheet(style if text else "")
    label.setVisible(bool(text))


def _message_label() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setVisible(False)
    return label


class ServerEditor(QDialog):
    """Name, address and API key of one server, checked before it is taken.

    Signals:
        test_requested(str, str, str): the address and key typed, and the
            address whose kept key to use when none is typed ("" for none).
    """

    test_requested = Signal(str, str, str)

    def __init__(self, owner: ServersDialog, row: _Row | None) -> None:
        super().__init__(owner)
        self._owner = owner
        self._row = row
        self.setWindowTitle("Edit server" if row is not None else "Add a server")
        self.name = QLineEdit(row.name if row else "")
        self.name.setMaxLength(owner.max_name_length * 2)  # too long is said, not cut
        self.name.setPlaceholderText("GPU box")
        self.address = QLineEdit(row.base_url if row else "")
        self.address.setPlaceholderText("http://gpu-box:8080 or https://api.example.com")
        self.key = QLineEdit((row.api_key or "") if row else "")
        self.key.setEchoMode(QLineEdit.EchoMode.Password)
        # A key kept from before: not shown, and left as it is unless one is typed.
        self._kept = row is not None and row.api_key is None and row.was_kept
        self.key.setPlaceholderText(KEPT_PLACEHOLDER if self._kept else "none")
        self.forget_key = QCheckBox("Forget the kept key")
        self.forget_key.setVisible(self._kept)
        self.warning = _message_label()
        self.error = _message_label()
        self.answer = _message_label()
        self.test_button = QPushButton("Test connection")
        self.test_button.clicked.connect(self._test)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self._take)
        self.buttons.rejected.connect(self.reject)

        form = QFormLayout()
        form.addRow("Name", self.name)
        form.addRow("Address", self.address)
        form.addRow("API key", self.key)
        form.addRow("", self.forget_key)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        about = QLabel(
            "The address of an OpenAI-compatible server: llama-server, vLLM, Ollama, "
            "LM Studio or another kvchat. The key is sent only to this address."
        )
        about.setWordWrap(True)
        layout.addWidget(about)
        layout.addWidget(self.warning)
        layout.addWidget(self.error)
        layout.addWidget(self.answer)
        layout.addStretch(1)
        row_of_buttons = QHBoxLayout()
        row_of_buttons.addWidget(self.test_button)
        row_of_buttons.addStretch(1)
        row_of_buttons.addWidget(self.buttons)
        layout.addLayout(row_of_buttons)
        for edit in (self.address, self.key):
            edit.textChanged.connect(self._warn)
        self.forget_key.toggled.connect(self._warn)
        self.resize(560, 300)
        self._warn()

    def _typed_key(self) -> str | None:
        """The key typed; "" when the kept one is to be forgotten; None: as it was."""
        if self.key.text():
            return self.key.text()
        if self._kept and not self.forget_key.isChecked():
            return None
        # A new server, a key forgotten, or a key typed before and now erased.
        return ""

    def _kept_key_of(self) -> str:
        if self._row is None or self._typed_key() is not None:
            return ""
        return self._row.previous_url

    def normalised_address(self) -> str | None:
        try:
            return self._owner.check_address(self.address.text())
        except ValueError:
            return None

    def _warn(self) -> None:
        key = self._typed_key() or ("kept" if self._kept_key_of() else "")
        warning = self._owner.key_warning(self.address.text(), key) if key else ""
        _show(self.warning, warning, WARNING_STYLE)

    def show_warning(self, text: str) -> None:
        _show(self.warning, text, WARNING_STYLE)

    def show_error(self, text: str) -> None:
        _show(self.error, text, ERROR_STYLE)

    def show_result(self, text: str, ok: bool = True) -> None:
        _show(self.answer, text, "" if ok else ERROR_STYLE)

    def _test(self) -> None:
        try:
            url = self._owner.check_address(self.address.text())
        except ValueError as exc:
            self.show_error(str(exc))
            return
        self.show_error("")
        self.show_result(f"Asking {url}…")
        self.test_requested.emit(url, self._typed_key() or "", self._kept_key_of())

    def _take(self) -> None:
        """Checks what was typed; on a problem says it and keeps everything as typed."""
        problem = self._owner._problem(self.name.text(), self.address.text(), self._row)
        if problem:
            self.show_error(problem)
            return
        url = self._owner.check_address(self.address.text())
        previous = self._row.previous_url if self._row else ""
        was_kept = self._row.was_kept if self._row else False
        self._owner._put(
            self._row,
            _Row(self.name.text().strip(), url, self._typed_key(), previous, was_kept),
        )
        self.accept()


class ServersDialog(QDialog):
    """The list of servers, with Add, Edit, Remove and Test connection.

    Save emits `saved`; the owner writes the list and closes the dialog
    (`accept`), or says why it could not (`show_error`).

    Signals:
        test_requested(str, str, str): an address, the key typed for it ("" for
            none), and the address whose kept key to use when none is typed
            ("" for none). From the list, the selected server with its kept key.
        saved(list): list[SavedServer], the whole list as the person left it.
    """

    test_requested = Signal(str, str, str)
    saved = Signal(list)

    def __init__(
        self,
        rows: Sequence[ServerRow],
        check_address: AddressCheck,
        *,
        max_name_length: int = 80,
        key_warning: KeyWarning | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Servers")
        self.check_address = check_address
        self.max_name_length = max_name_length
        self.key_warning: KeyWarning = key_warning or (lambda _url, _key: "")
        self.editor: ServerEditor | None = None
        self._rows = [_Row(r.name, r.base_url, None, r.base_url, r.key_kept) for r in rows]

        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Name", "Address", "API key"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.table.cellDoubleClicked.connect(lambda _row, _column: self._edit())

        self.add_button = QPushButton("Add…")
        self.add_button.clicked.connect(self._add)
        self.edit_button = QPushButton("Edit…")
        self.edit_button.clicked.connect(self._edit)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self._remove)
        self.test_button = QPushButton("Test connection")
        self.test_button.clicked.connect(self._test_selected)
        self.notice = _message_label()
        self.warning = _message_label()
        self.answer = _message_label()
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self._save)
        self.buttons.rejected.connect(self.reject)

        actions = QHBoxLayout()
        for button in (self.add_button, self.edit_button, self.remove_button):
            actions.addWidget(button)
        actions.addStretch(1)
        actions.addWidget(self.test_button)
        layout = QVBoxLayout(self)
        about = QLabel(
            "Servers elsewhere that kvchat can chat through. API keys are not kept in "
            "the list: they go to the system keyring, or to a file only you can read."
        )
        about.setWordWrap(True)
        layout.addWidget(about)
        layout.addWidget(self.table, 1)
        layout.addLayout(actions)
        layout.addWidget(self.notice)
        layout.addWidget(self.warning)
        layout.addWidget(self.answer)
        layout.addWidget(self.buttons)
        self.resize(760, 480)
        self._fill()

    # What the owner shows.

    def show_test_result(self, base_url: str, text: str, ok: bool) -> None:
        """What answered at `base_url` (`ok`), or why nothing did."""
        mark = "✓ " if ok else "✗ "
        _show(self.answer, f"{mark}{base_url}: {text}", "" if ok else ERROR_STYLE)
        if self.editor is not None and self.editor.normalised_address() == base_url:
            self.editor.show_result(mark + text, ok)

    def show_warning(self, text: str) -> None:
        """A warning for a person (the plain-http one); "" hides it."""
        if self.editor is not None:
            self.editor.show_warning(text)
        else:
            _show(self.warning, text, WARNING_STYLE)

    def show_error(self, text: str) -> None:
        """Why the list could not be saved (or was damaged); "" hides it."""
        _show(self.notice, text, ERROR_STYLE)

    def show_notice(self, text: str) -> None:
        """Something to know, such as where the keys are kept; "" hides it."""
        _show(self.notice, text)

    def set_keys_kept(self, base_urls: Collection[str]) -> None:
        """Which servers have a key kept, when it is known only after the dialog opened."""
        self._rows = [
            replace(row, was_kept=row.previous_url in base_urls) if row.previous_url else row
            for row in self._rows
        ]
        self._fill()

    def rows(self) -> list[SavedServer]:
        """The list as it stands now."""
        return [SavedServer(r.name, r.base_url, r.api_key, r.previous_url) for r in self._rows]

    # The editor's checks.

    def _problem(self, name: str, address: str, editing: _Row | None) -> str:
        """What is wrong with a server as typed, in words; "" when nothing is."""
        name = name.strip()
        if not name:
            return "Give the server a name."
        if len(name) > self.max_name_length:
            return (
                f"A server's name is at most {self.max_name_length} characters; "
                f"this one has {len(name)}."
            )
        try:
            url = self.check_address(address)
        except ValueError as exc:
            return str(exc)
        for row in self._rows:
            if row is editing:
                continue
            if row.name.casefold() == name.casefold():
                return f"There is already a server called “{row.name}”."
            if row.base_url == url:
                return f"“{row.name}” already has the address {url}."
        return ""

    def _put(self, old: _Row | None, new: _Row) -> None:
        if old is None:
            self._rows.append(new)
        else:
            self._rows[self._rows.index(old)] = new
        self._fill()
        self.table.selectRow(self._rows.index(new))

    # Actions.

    def _fill(self) -> None:
        selected = self._selected()
        self.table.setRowCount(len(self._rows))
        for index, row in enumerate(self._rows):
            cells = (row.name, row.base_url, KEY_KEPT if row.key_kept else "")
            for column, text in enumerate(cells):
                self.table.setItem(index, column, QTableWidgetItem(text))
        self.table.clearSelection()
        if selected is not None and selected in self._rows:
            self.table.selectRow(self._rows.index(selected))
        self._selection_changed()

    def _selected(self) -> _Row | None:
        indexes = self.table.selectionModel().selectedRows()
        if not indexes or indexes[0].row() >= len(self._rows):
            return None
        return self._rows[indexes[0].row()]

    def _selection_changed(self) -> None:
        chosen = self._selected() is not None
        for button in (self.edit_button, self.remove_button, self.test_button):
            button.setEnabled(chosen)

    def _open_editor(self, row: _Row | None) -> None:
        if self.editor is not None:
            self.editor.raise_()
            return
        self.editor = ServerEditor(self, row)
        self.editor.test_requested.connect(self.test_requested)
        self.editor.finished.connect(self._editor_closed)
        self.editor.open()

    def _editor_closed(self) -> None:
        if self.editor is not None:
            self.editor.deleteLater()
            self.editor = None

    def _add(self) -> None:
        self._open_editor(None)

    def _edit(self) -> None:
        row = self._selected()
        if row is not None:
            self._open_editor(row)

    def _remove(self) -> None:
        row = self._selected()
        if row is not None:
            self._rows.remove(row)
            self._fill()

    def _test_selected(self) -> None:
        row = self._selected()
        if row is None:
            return
        _show(self.answer, f"Asking {row.base_url}…")
        self.test_requested.emit(row.base_url, row.api_key or "", row.kept_key_of)

    def _save(self) -> None:
        self.show_error("")
        self.saved.emit(self.rows())
