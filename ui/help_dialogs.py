"""The Help menu's dialogs: About kvchat and the keyboard shortcuts.

Both render plain rows. The shortcuts are read from the window's own actions
(`action_shortcuts`), so the list says what the keys do today and cannot
drift from them; the About box's rows come from the app (app.about), which
knows the versions and where things are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QFont, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QGridLayout,
    QHeaderView,
    QLabel,
    QMainWindow,
    QMenu,
    QMenuBar,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

# The About box's width: wide enough that a version and its commit take one
# line, narrow enough to sit beside a 900-pixel window; longer values (a
# path, the CPU's features) wrap.
ABOUT_WIDTH = 600


def plain_text(label: str) -> str:
    """A menu text as read aloud: "&Open model…" -> "Open model…" ("&&" is a real "&")."""
    return label.replace("&&", "\0").replace("&", "").replace("\0", "&")


def _menu_entries(actions: Iterable[QAction], above: tuple[str, ...]) -> list[tuple[QAction, str]]:
    """The entries of these menus and their submenus in the order they are
    shown, each with where it is: "File > Open model…"."""
    found: list[tuple[QAction, str]] = []
    for entry in actions:
        submenu = entry.menu()
        if isinstance(submenu, QMenu):
            found += _menu_entries(submenu.actions(), (*above, plain_text(submenu.title())))
        elif not entry.isSeparator():
            found.append((entry, " > ".join((*above, plain_text(entry.text())))))
    return found


def action_shortcuts(window: QMainWindow) -> list[tuple[str, str]]:
    """(keys, what they do) for every action in the window that has a key:
    the menus' in their order first, then those the window and its widgets
    hold (Stop, the list's Delete).

    An action says what it does in its status tip when it has one (one in no
    menu must), else by where it is in the menus, else by its name. A key
    works only for an action some widget holds, so that is where they are
    looked for. Menus are read from the menu bar down: its overflow menu
    holds copies of its entries that it deletes as it lays itself out again.
    """
    entries = _menu_entries(window.menuBar().actions(), ())
    paths = dict(entries)
    ordered = [action for action, _path in entries]
    for widget in [window, *window.findChildren(QWidget)]:
        if not isinstance(widget, QMenu | QMenuBar):
            ordered += [a for a in widget.actions() if a not in ordered]
    rows = []
    for action in ordered:
        keys = [k.toString(QKeySequence.SequenceFormat.NativeText) for k in action.shortcuts()]
        keys = [k for k in keys if k]
        if keys:
            does = action.statusTip() or paths.get(action) or plain_text(action.text())
            rows.append((", ".join(keys), does))
    return rows


def _selectable(text: str) -> QLabel:
    label = QLabel(text)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


class AboutDialog(QDialog):
    """kvchat's version and what it runs on, and where it keeps its files.

    The rows can change while it is open: the engine reports llama.cpp's
    version as it starts, which may be after the box was opened.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("aboutDialog")
        self.setWindowTitle("About kvchat")
        self.heading = QLabel()
        self.heading.setObjectName("aboutHeading")
        font = QFont(self.heading.font())
        font.setPointSizeF(font.pointSizeF() * 1.4)
        font.setBold(True)
        self.heading.setFont(font)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self._rows: QWidget = QWidget()
        self._shown: list[tuple[QLabel, QLabel]] = []
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        self._layout = QVBoxLayout(self)
        self._layout.addWidget(self.heading)
        self._layout.addWidget(self.summary)
        self._layout.addSpacing(6)
        self._layout.addWidget(self._rows)
        self._layout.addStretch(1)
        self._layout.addWidget(buttons)
        self.setMinimumWidth(ABOUT_WIDTH)

    def show_rows(self, heading: str, summary: str, rows: Sequence[tuple[str, str]]) -> None:
        """Shows these (name, value) rows under the heading, in place of any before,
        and fits the box's height to them at its width."""
        self.heading.setText(heading)
        self.summary.setText(summary)
        grid_holder = QWidget()
        grid = QGridLayout(grid_holder)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(16)
        grid.setColumnStretch(1, 1)
        self._shown = []
        # A name stays level with the first line of a value that wraps, not its middle.
        top_left = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop
        for row, (name, value) in enumerate(rows):
            name_label, value_label = QLabel(f"{name}:"), _selectable(value)
            grid.addWidget(name_label, row, 0, top_left)
            grid.addWidget(value_label, row, 1, Qt.AlignmentFlag.AlignTop)
            self._shown.append((name_label, value_label))
        self._layout.replaceWidget(self._rows, grid_holder)
        self._rows.deleteLater()
        self._rows = grid_holder
        width = max(self.width(), ABOUT_WIDTH) if self.isVisible() else ABOUT_WIDTH
        self._layout.activate()
        self.resize(width, self._layout.totalHeightForWidth(width))

    def rows(self) -> list[tuple[str, str]]:
        """What the box shows, as (name, value): what a test or a screen reader reads."""
        return [(name.text().removesuffix(":"), value.text()) for name, value in self._shown]


class ShortcutsDialog(QDialog):
    """The keys and what each does, one row each."""

    def __init__(self, rows: Sequence[tuple[str, str]], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("shortcutsDialog")
        self.setWindowTitle("Keyboard shortcuts")
        self.table = QTableWidget(len(rows), 2)
        self.table.setHorizontalHeaderLabels(["Keys", "What they do"])
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.table.setShowGrid(False)
        self.table.setAlternatingRowColors(True)
        for row, (keys, does) in enumerate(rows):
            self.table.setItem(row, 0, QTableWidgetItem(keys))
            self.table.setItem(row, 1, QTableWidgetItem(does))
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.resizeRowsToContents()
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table, 1)
        layout.addWidget(buttons)
        # Tall enough for every row without scrolling, as far as a screen allows.
        margins = layout.contentsMargins()
        height = (
            sum(self.table.rowHeight(r) for r in range(len(rows)))
            + header.sizeHint().height()
            + 2 * self.table.frameWidth()
            + layout.spacing()
            + buttons.sizeHint().height()
            + margins.top()
            + margins.bottom()
        )
        self.resize(560, min(height, 620))

    def rows(self) -> list[tuple[str, str]]:
        """What the table shows, as (keys, what they do)."""
        shown = []
        for row in range(self.table.rowCount()):
            keys, does = self.table.item(row, 0), self.table.item(row, 1)
            shown.append((keys.text() if keys else "", does.text() if does else ""))
        return shown
