"""The "Get models" dialog: search Hugging Face's GGUF models, pick a file, download it.

A view only. It shows plain values it is given (search results, a
repository's files with their fits answers, each download's state) and
emits what the person asked for; the owner (app.models_flow) talks to the
hub, runs the fits estimates and the downloads, and decides what each
state means. Nothing here blocks: every answer arrives later, through a
setter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from kvchat.ui.memory_panel import format_bytes
from kvchat.ui.numbers import format_count, format_parameters
from kvchat.ui.settings_dialog import DeviceProjection

# The hub's sort orders by the names app.hub.catalog.SORTS gives them, as the
# person reads them.
SORTS = (
    ("downloads", "Most downloaded"),
    ("likes", "Most liked"),
    ("recent", "Recently updated"),
)
# The progress bar counts in thousandths: a QProgressBar holds an int, and
# a model's bytes pass 2**31.
BAR_STEPS = 1000
BAR_WIDTH = 220
# The splitter's first shares: results, files, downloads (it scales them to fit).
SPLIT_SIZES = (140, 270, 116)
PROBLEM_STYLE = "color: #fff; background: #b3261e; padding: 4px;"
WAITING = "…"
GATED_TIP = (
    "Gated: accept its license on its Hugging Face page while signed in, "
    "then set HF_TOKEN to a token of that account"
)


@dataclass(frozen=True)
class RepoRow:
    """One search result as the results table shows it; None where the hub does not say."""

    repo: str
    downloads: int | None = None
    likes: int | None = None
    updated: datetime | None = None
    license: str = ""
    parameters: int | None = None
    gated: bool = False


@dataclass(frozen=True)
class FileRow:
    """One model of the chosen repository: a file, or all parts of a split one.

    `path` names it to the owner (its first part's path in the repository).
    `unavailable` says why it is not offered for download ("" when it is);
    it stands in the Fits column, greyed.
    """

    path: str
    label: str
    quantization: str
    size_bytes: int
    unavailable: str = ""


class DownloadState(Enum):
    """Where one download is, as the owner decides it."""

    QUEUED = "queued"
    DOWNLOADING = "downloading"
    CHECKING = "checking"
    CANCELLING = "cancelling"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def ended(self) -> bool:
        return self in (DownloadState.DONE, DownloadState.CANCELLED, DownloadState.FAILED)


@dataclass(frozen=True)
class DownloadView:
    """One download as the downloads area shows it.

    `message` is a failure in words; `local_path` is where a finished
    download is (what Load loads).
    """

    download_id: int
    label: str
    state: DownloadState
    done_bytes: int = 0
    total_bytes: int = 0
    bytes_per_s: float = 0.0
    seconds_left: float | None = None
    part: int = 1
    parts: int = 1
    message: str = ""
    local_path: str = ""


def format_duration(seconds: float) -> str:
    """161 -> "2 min 41 s", 3900 -> "1 h 5 min", 7 -> "7 s"."""
    whole = max(0, math.ceil(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def split_line(device: DeviceProjection) -> str:
    """One device's share of a load, in the settings dialog's words."""
    total = device.weights_bytes + device.kv_bytes + device.compute_bytes
    return (
        f"<b>{device.name}</b>: {format_bytes(total)} (weights "
        f"{format_bytes(device.weights_bytes)}, KV {format_bytes(device.kv_bytes)}, compute "
        f"{format_bytes(device.compute_bytes)}) of {format_bytes(device.free_bytes)} free"
    )


def progress_line(view: DownloadView) -> str:
    """What a download's line says: bytes, speed and time left, or its state in words."""
    if view.state is DownloadState.DOWNLOADING and view.done_bytes == 0:
        # huggingface_hub asks for the file's metadata first, and a mirror
        # may read a whole file before it sends a byte.
        return f"waiting for the first bytes · {format_bytes(view.total_bytes)} to fetch"
    if view.state is DownloadState.DOWNLOADING:
        pieces = [f"{format_bytes(view.done_bytes)} of {format_bytes(view.total_bytes)}"]
        if view.bytes_per_s > 0:
            pieces.append(f"{format_bytes(view.bytes_per_s)}/s")
        if view.seconds_left is not None:
            pieces.append(f"{format_duration(view.seconds_left)} left")
        if view.parts > 1:
            pieces.insert(0, f"part {view.part} of {view.parts}")
        return " · ".join(pieces)
    if view.state is DownloadState.CHECKING:
        return "checking the sha256…"
    if view.state is DownloadState.CANCELLING:
        return "cancelling…"
    if view.state is DownloadState.FAILED:
        return view.message or "failed"
    if view.state is DownloadState.DONE:
        return f"done: {format_bytes(view.total_bytes)} in the cache, sha256 checked"
    return str(view.state.value)


class _DownloadEntry(QFrame):
    """One download's row: its name, a progress bar, its line, Cancel or Load."""

    def __init__(self, view: DownloadView, dialog: GetModelsDialog) -> None:
        super().__init__()
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.title = QLabel(view.label)
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.bar = QProgressBar()
        self.bar.setRange(0, BAR_STEPS)
        self.bar.setTextVisible(False)
        self.bar.setFixedSize(BAR_WIDTH, 12)
        self.line = QLabel()
        self.line.setWordWrap(True)
        self.cancel = QPushButton("Cancel")
        self.cancel.setAutoDefault(False)
        self.load = QPushButton("Load")
        self.load.setAutoDefault(False)
        self.load.setToolTip("Load this model now, with your current settings")
        self.local_path = ""
        download_id = view.download_id
        self.cancel.clicked.connect(lambda: dialog.cancel_requested.emit(download_id))
        self.load.clicked.connect(lambda: dialog.load_requested.emit(self.local_path))
        # Two lines an entry: its name, then the bar and where it is (the bar
        # gives way to a failure's words).
        where = QHBoxLayout()
        where.setSpacing(8)
        where.addWidget(self.bar, 0, Qt.AlignmentFlag.AlignVCenter)
        where.addWidget(self.line, 1)
        layout = QGridLayout(self)
        layout.setContentsMargins(6, 3, 6, 3)
        layout.setVerticalSpacing(2)
        layout.addWidget(self.title, 0, 0)
        layout.addLayout(where, 1, 0)
        layout.addWidget(self.cancel, 0, 1, 2, 1, Qt.AlignmentFlag.AlignVCenter)
        layout.addWidget(self.load, 0, 2, 2, 1, Qt.AlignmentFlag.AlignVCenter)
        layout.setColumnStretch(0, 1)
        self.show_view(view)

    def show_view(self, view: DownloadView) -> None:
        """Where the download is now; Cancel only while it can still stop it (not
        while the sha256 is checked), Load once it is done."""
        self.local_path = view.local_path
        state = view.state
        if state in (DownloadState.CHECKING, DownloadState.DONE):
            self.bar.setValue(BAR_STEPS)
        elif view.total_bytes > 0 and not state.ended:
            self.bar.setValue(round(BAR_STEPS * min(view.done_bytes / view.total_bytes, 1.0)))
        self.bar.setVisible(state not in (DownloadState.CANCELLED, DownloadState.FAILED))
        self.line.setText(progress_line(view))
        self.line.setStyleSheet("color: #b3261e;" if state is DownloadState.FAILED else "")
        self.cancel.setVisible(state in (DownloadState.QUEUED, DownloadState.DOWNLOADING))
        self.load.setVisible(state is DownloadState.DONE)
        if state is DownloadState.DONE:
            self.setToolTip(view.local_path)


class GetModelsDialog(QDialog):
    """Search, a repository's files with their fits answers, and the downloads.

    Signals:
        search_requested(str, str): the words to search for, and a sort key of SORTS.
        repo_chosen(str): the person picked a repository in the results ("owner/name").
        context_changed(int): the context, in tokens, that the fits answers are for.
        download_requested(str): the FileRow.path of the file to download.
        cancel_requested(int): the id of a queued or running download to cancel.
        load_requested(str): the local path of a finished download, to load now.
    """

    search_requested = Signal(str, str)
    repo_chosen = Signal(str)
    context_changed = Signal(int)
    download_requested = Signal(str)
    cancel_requested = Signal(int)
    load_requested = Signal(str)

    def __init__(
        self, n_ctx: int, context_range: tuple[int, int], parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Get models")
        self.resize(860, 620)
        self._updating = False
        self._repos: list[str] = []
        self._files: list[FileRow] = []
        self._entries: dict[int, _DownloadEntry] = {}

        self.query = QLineEdit()
        self.query.setPlaceholderText("Search GGUF models on Hugging Face (e.g. qwen, llama 8b)")
        self.query.setClearButtonEnabled(True)
        self.query.returnPressed.connect(self._search)
        self.sort = QComboBox()
        for key, label in SORTS:
            self.sort.addItem(label, key)
        self.sort.currentIndexChanged.connect(self._search)
        self.search_button = QPushButton("Search")
        self.search_button.setAutoDefault(False)
        self.search_button.clicked.connect(self._search)

        self.results = _table(["Repository", "Downloads", "Likes", "Updated", "License", "Params"])
        self.results.itemSelectionChanged.connect(self._repo_selected)

        self.files_caption = QLabel("Pick a repository above to see its GGUF files.")
        self.files_caption.setWordWrap(True)
        self.files = _table(["File", "Quantization", "Size", "Fits"])
        self.files.horizontalHeader().setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.files.itemSelectionChanged.connect(self._sync_download_button)
        self.files.itemSelectionChanged.connect(self._show_split)
        # The selected file's load per device, as the settings dialog shows a model's.
        self.split = QLabel()
        self.split.setWordWrap(True)
        self.split.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._splits: dict[str, tuple[DeviceProjection, ...]] = {}
        self.context = QSpinBox()
        self.context.setRange(*context_range)
        self.context.setSingleStep(1024)
        self.context.setGroupSeparatorShown(True)
        self.context.setSuffix(" tokens")
        self.context.setKeyboardTracking(False)  # one answer per value typed, not per digit
        self.context.setValue(n_ctx)
        self.context.valueChanged.connect(self.context_changed)
        self.download_button = QPushButton("Download")
        self.download_button.setAutoDefault(False)
        self.download_button.setEnabled(False)
        self.download_button.clicked.connect(self._download)

        self.downloads_caption = QLabel("Downloads go to the Hugging Face cache.")
        self.downloads_list = QVBoxLayout()
        self.downloads_list.setContentsMargins(0, 0, 0, 0)
        self.downloads_list.setSpacing(4)
        holder = QWidget()
        holder_layout = QVBoxLayout(holder)
        holder_layout.setContentsMargins(0, 0, 0, 0)
        holder_layout.addLayout(self.downloads_list)
        holder_layout.addStretch(1)
        self.downloads_area = QScrollArea()
        self.downloads_area.setWidgetResizable(True)
        self.downloads_area.setWidget(holder)
        self.downloads_area.setFrameShape(QFrame.Shape.NoFrame)

        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setVisible(False)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        # No button is the default: Enter in the search line searches, and
        # must not also close the dialog (Esc does).
        close = buttons.button(QDialogButtonBox.StandardButton.Close)
        close.setAutoDefault(False)
        close.setDefault(False)

        search_row = QHBoxLayout()
        search_row.addWidget(self.query, 1)
        search_row.addWidget(self.sort)
        search_row.addWidget(self.search_button)

        files_box = QWidget()
        files_layout = QVBoxLayout(files_box)
        files_layout.setContentsMargins(0, 0, 0, 0)
        files_layout.addWidget(self.files_caption)
        files_layout.addWidget(self.files, 1)
        files_layout.addWidget(self.split)
        files_row = QHBoxLayout()
        context_label = QLabel("Context for the fits answers")
        context_label.setBuddy(self.context)
        files_row.addWidget(context_label)
        files_row.addWidget(self.context)
        files_row.addStretch(1)
        files_row.addWidget(self.download_button)
        files_layout.addLayout(files_row)

        downloads_box = QWidget()
        downloads_layout = QVBoxLayout(downloads_box)
        downloads_layout.setContentsMargins(0, 0, 0, 0)
        downloads_layout.addWidget(self.downloads_caption)
        downloads_layout.addWidget(self.downloads_area, 1)

        # The person decides what gets the room; each part keeps a usable height.
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.setChildrenCollapsible(False)
        for part, stretch in ((self.results, 3), (files_box, 4), (downloads_box, 2)):
            self.splitter.addWidget(part)
            self.splitter.setStretchFactor(self.splitter.indexOf(part), stretch)
        self.splitter.setSizes(list(SPLIT_SIZES))
        self.results.setMinimumHeight(90)
        self.files.setMinimumHeight(90)
        self.downloads_area.setMinimumHeight(60)

        layout = QVBoxLayout(self)
        layout.addLayout(search_row)
        layout.addWidget(self.splitter, 1)
        layout.addWidget(self.status)
        layout.addWidget(buttons)

    # What the owner tells the dialog.

    def show_results(self, rows: Sequence[RepoRow], note: str = "") -> None:
        """The search's results, in the hub's order; `note` stands in the status line."""
        self._updating = True
        self.results.setRowCount(0)
        self._repos = []
        for row in rows:
            index = self.results.rowCount()
            self.results.insertRow(index)
            name = f"{row.repo}  (gated)" if row.gated else row.repo
            updated = row.updated.date().isoformat() if row.updated is not None else ""
            cells = [
                name,
                format_count(row.downloads),
                format_count(row.likes),
                updated,
                row.license,
                format_parameters(row.parameters),
            ]
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(GATED_TIP if row.gated else row.repo)
                if column in _NUMBER_COLUMNS:
                    item.setTextAlignment(_RIGHT)
                self.results.setItem(index, column, item)
            self._repos.append(row.repo)
        self._updating = False
        self.show_status(note)

    def show_listing(self, repo: str) -> None:
        """The files of `repo` are on their way: the table empties until they come."""
        self._set_files([])
        self.files_caption.setText(f"Listing the files of {repo}…")

    def show_listing_failed(self, repo: str) -> None:
        """The files of `repo` could not be listed (the status line says why)."""
        self._set_files([])
        self.files_caption.setText(f"The files of {repo} could not be listed.")

    def show_files(self, repo: str, rows: Sequence[FileRow]) -> None:
        """The GGUF models of `repo`, by quantization, each with "…" until its fits answer."""
        self._set_files(rows)
        if rows:
            self.files_caption.setText(
                f"<b>{repo}</b>: {len(rows)} GGUF {'file' if len(rows) == 1 else 'files'}, "
                "by quantization (a split model is one entry)"
            )
        else:
            self.files_caption.setText(f"{repo} has no GGUF files.")

    def set_fits(self, path: str, text: str, devices: Sequence[DeviceProjection] = ()) -> None:
        """One file's fits answer at the chosen context, in words, and its load per device."""
        self._splits[path] = tuple(devices)
        for index, row in enumerate(self._files):
            item = self.files.item(index, 3)
            if row.path == path and item is not None and not row.unavailable:
                item.setText(text)
                item.setToolTip(text)
        self._show_split()

    def show_download(self, view: DownloadView) -> None:
        """Adds a download to the list, or shows where it is now."""
        entry = self._entries.get(view.download_id)
        if entry is None:
            entry = _DownloadEntry(view, self)
            self._entries[view.download_id] = entry
            self.downloads_list.addWidget(entry)
        else:
            entry.show_view(view)

    def show_status(self, text: str, problem: bool = False) -> None:
        """A line under the lists: what is going on, or (`problem`) what went wrong."""
        self.status.setText(text)
        self.status.setStyleSheet(PROBLEM_STYLE if problem and text else "")
        self.status.setVisible(bool(text))

    # What the owner asks the dialog.

    def sort_key(self) -> str:
        return str(self.sort.currentData())

    def selected_file(self) -> str:
        """The FileRow.path of the selected file that can be downloaded, or ""."""
        rows = self.files.selectionModel().selectedRows()
        if rows and rows[0].row() < len(self._files):
            row = self._files[rows[0].row()]
            return "" if row.unavailable else row.path
        return ""

    def select_file(self, path: str) -> None:
        for index, row in enumerate(self._files):
            if row.path == path:
                self.files.selectRow(index)

    def select_repo(self, repo: str) -> None:
        """Selects `repo` in the results, which asks for its files as a click would."""
        if repo in self._repos:
            self.results.selectRow(self._repos.index(repo))

    # Internals.

    def _set_files(self, rows: Sequence[FileRow]) -> None:
        self._splits.clear()
        self.split.setVisible(False)
        self.files.setRowCount(0)
        self._files = list(rows)
        muted = self.palette().color(QPalette.ColorRole.PlaceholderText)
        for index, row in enumerate(rows):
            self.files.insertRow(index)
            cells = [row.label, row.quantization, format_bytes(row.size_bytes)]
            cells.append(row.unavailable or WAITING)
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(row.unavailable or row.label)
                if column == 2:
                    item.setTextAlignment(_RIGHT)
                if row.unavailable:
                    item.setForeground(muted)
                    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsSelectable)
                self.files.setItem(index, column, item)
        self._sync_download_button()

    def _search(self) -> None:
        self.search_requested.emit(self.query.text().strip(), self.sort_key())

    def _repo_selected(self) -> None:
        if self._updating:
            return
        rows = self.results.selectionModel().selectedRows()
        if rows and rows[0].row() < len(self._repos):
            self.repo_chosen.emit(self._repos[rows[0].row()])

    def _show_split(self) -> None:
        devices = self._splits.get(self.selected_file(), ())
        self.split.setText("<br>".join(split_line(d) for d in devices))
        self.split.setVisible(bool(devices))

    def _sync_download_button(self) -> None:
        self.download_button.setEnabled(bool(self.selected_file()))

    def _download(self) -> None:
        path = self.selected_file()
        if path:
            self.download_requested.emit(path)


_RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
# Downloads, likes and parameters: figures read best aligned on their last digit.
_NUMBER_COLUMNS = frozenset({1, 2, 5})


def _table(headers: list[str]) -> QTableWidget:
    """A read-only table of rows picked one at a time, its first column taking the room."""
    table = QTableWidget(0, len(headers))
    table.setHorizontalHeaderLabels(headers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().hide()
    table.setWordWrap(False)
    # Rows as tall as the text needs: more of them fit a small window.
    table.verticalHeader().setDefaultSectionSize(table.fontMetrics().height() + 10)
    header = table.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
    return table
