"""The main window: the conversation, the composer, loading progress and the status bar."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel
from PySide6.QtCore import QEvent, QObject, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDesktopServices,
    QGuiApplication,
    QKeySequence,
    QResizeEvent,
    QShowEvent,
    QTextCursor,
)
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QStyle,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from kvchat.ui.chat_view import ChatView
from kvchat.ui.composer import Composer
from kvchat.ui.conversation_list import ConversationList
from kvchat.ui.conversation_panel import ConversationPanel
from kvchat.ui.memory_panel import LiveText, MemoryPanel
from kvchat.ui.serve_dialog import ServeDialog
from kvchat.ui.theme import apply_scheme, icon

if TYPE_CHECKING:
    # Made when the Help menu is first used: the window's first paint does not wait for them.
    from kvchat.ui.help_dialogs import AboutDialog, ShortcutsDialog

GGUF_FILTER = "GGUF models (*.gguf);;All files (*)"
EXPORT_FILTERS = {"markdown": "Markdown (*.md)", "json": "JSON (*.json)"}
# The conversation list's width, and the least it may shrink to before it folds away.
LIST_WIDTH = 240
LIST_MIN_WIDTH = 160
# How long a note in the status bar stays ("Diagnostics copied to the clipboard").
STATUS_NOTE_MS = 6000


class Appearance(Protocol):
    """How the window looks (app.settings.Appearance; ui does not import app)."""

    @property
    def theme(self) -> str: ...
    @property
    def chat_width(self) -> int: ...
    @property
    def show_thinking(self) -> bool: ...


class MainWindow(QMainWindow):
    """The chat window. It shows what it is told and emits what the person asks.

    Signals:
        message_submitted(str): the person sent a message (it is not empty).
        message_edited(str, str): the person resent their message with this key,
            edited to this text (the replies after it are to be replaced).
        export_requested(str, str, str): key, file path, "markdown" or "json".
        stop_requested(): Stop was pressed (button or Esc).
        model_file_chosen(str): File > Open model, or the toolbar's model list, picked a file.
        settings_requested(): File > Settings (Ctrl+,).
        get_models_requested(): File > Get models: find and download models from Hugging Face.
        servers_requested(): File > Servers: the servers whose models can be chosen.
        restart_requested(): the person asked for the engine to be started again.
        closing(): the window is about to close; the owner stops the engine.
        conversation_settings_edited(str, dict): the person changed this
            conversation's system prompt or sampling values (the dict holds those
            that differ from the defaults).
        conversation_model_requested(): load the model the conversation was held with.
        first_painted(): the window has been drawn for the first time, all of it;
            what it did not need for that can start now.
        about_requested(): Help > About kvchat.
        data_folder_requested(): Help > Open data folder.
        engine_log_requested(): Help > Open engine log.
        diagnostics_requested(): Help > Copy diagnostics: a report for a bug, to the clipboard.
    """

    message_submitted = Signal(str)
    message_edited = Signal(str, str)
    export_requested = Signal(str, str, str)
    stop_requested = Signal()
    model_file_chosen = Signal(str)
    settings_requested = Signal()
    get_models_requested = Signal()
    servers_requested = Signal()
    restart_requested = Signal()
    closing = Signal()
    conversation_settings_edited = Signal(str, dict)
    conversation_model_requested = Signal()
    serve_toggled = Signal(bool)
    first_painted = Signal()
    about_requested = Signal()
    data_folder_requested = Signal()
    engine_log_requested = Signal()
    diagnostics_requested = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("kvchat")
        self._can_send = False
        self._focused_once = False
        # Where the file dialogs start: never the folder the process happened
        # to start in. The owner points model_folder at the models it knows.
        self.model_folder = str(Path.home())
        self.export_folder = str(Path.home())
        self._loading_name = ""
        self._loading_fraction = 0.0
        self._loading_started = 0.0

        self.chat_view = ChatView()
        self.chat_view.edit_requested.connect(self._edit_message)
        self.composer = Composer()
        self.composer.submitted.connect(self._on_submitted)
        self._editing_key = ""
        self.edit_label = QLabel()
        self.edit_label.setObjectName("editLabel")
        self.edit_label.hide()

        self.banner = QLabel()
        self.banner.setObjectName("banner")
        self.banner.setWordWrap(True)
        self.banner.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.banner.hide()
        self.restart_button = QPushButton("Restart engine")
        self.restart_button.setObjectName("restartButton")
        self.restart_button.clicked.connect(self.restart_requested)
        self.restart_button.hide()
        banner_row = QHBoxLayout()
        banner_row.addWidget(self.banner, 1)
        banner_row.addWidget(self.restart_button, 0, Qt.AlignmentFlag.AlignTop)
        # Saving has a banner of its own: a full disk and a crashed engine are
        # both worth saying at once, and each keeps its own action.
        self.storage_banner = QLabel()
        self.storage_banner.setObjectName("storageBanner")
        self.storage_banner.setWordWrap(True)
        self.storage_banner.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.storage_banner.hide()

        self.loading_label = QLabel()
        self.loading_label.setObjectName("loadingLabel")
        self.loading_bar = QProgressBar()
        self.loading_bar.setRange(0, 1000)
        self.loading_bar.setTextVisible(False)
        self.loading_bar.setMaximumHeight(8)
        loading = QWidget()
        loading_layout = QVBoxLayout(loading)
        loading_layout.setContentsMargins(0, 0, 0, 0)
        loading_layout.addWidget(self.loading_label)
        loading_layout.addWidget(self.loading_bar)
        self.loading_panel = loading
        self.loading_panel.hide()
        self._loading_timer = QTimer(self)
        self._loading_timer.setInterval(100)
        self._loading_timer.timeout.connect(self._show_loading)

        self.send_button = QToolButton()
        self.send_button.setObjectName("sendButton")
        self.send_button.setToolTip("Send (Enter)")
        self.send_button.setIcon(icon("send"))
        self.send_button.clicked.connect(self._send_clicked)
        self.stop_button = QToolButton()
        self.stop_button.setObjectName("stopButton")
        self.stop_button.setToolTip("Stop (Esc)")
        self.stop_button.setIcon(icon("stop"))
        self.stop_button.clicked.connect(self.stop_requested)
        self.stop_button.setEnabled(False)

        input_row = QHBoxLayout()
        input_row.addWidget(self.composer, 1)
        input_row.addWidget(self.send_button, 0, Qt.AlignmentFlag.AlignBottom)
        input_row.addWidget(self.stop_button, 0, Qt.AlignmentFlag.AlignBottom)

        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(10, 10, 10, 6)
        layout.addWidget(self.storage_banner)
        layout.addLayout(banner_row)
        layout.addWidget(self.loading_panel)
        layout.addLayout(self._system_row())
        layout.addWidget(self.chat_view, 1)
        layout.addWidget(self.edit_label)
        layout.addLayout(input_row)
        self.setCentralWidget(central)

        self.model_label = QLabel("No model")
        self.context_label = QLabel()
        self.speed_label = QLabel()
        self.view_label = QLabel()
        # While the API server runs: its address, and what it is doing; a click
        # shows how to call it.
        self.serve_button = QToolButton()
        self.serve_button.setObjectName("serveButton")
        self.serve_button.setAutoRaise(True)
        self.serve_button.setToolTip("The API server: click for its address and examples")
        self.serve_button.clicked.connect(self._show_serve_dialog)
        self.serve_button.hide()
        self.statusBar().addWidget(self.serve_button)
        self.serve_dialog: ServeDialog | None = None
        self.about_dialog: AboutDialog | None = None
        self.shortcuts_dialog: ShortcutsDialog | None = None
        self.help_message: QMessageBox | None = None
        self._serve_url = self._serve_examples = ""
        for label in (self.model_label, self.context_label, self.view_label, self.speed_label):
            self.statusBar().addPermanentWidget(label)
        self.statusBar().setSizeGripEnabled(False)

        self.memory_panel = MemoryPanel()
        self.memory_dock = QDockWidget("Memory", self)
        self.memory_dock.setObjectName("memoryDock")
        self.memory_dock.setWidget(self.memory_panel)
        self.memory_dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetClosable
            | QDockWidget.DockWidgetFeature.DockWidgetMovable
        )
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.memory_dock)

        # This conversation's own settings, a tab beside the memory panels.
        self.conversation_panel = ConversationPanel()
        self.conversation_panel.changed.connect(self._conversation_settings_changed)
        self.conversation_panel.load_model_requested.connect(self.conversation_model_requested)
        self.conversation_dock = QDockWidget("This conversation", self)
        self.conversation_dock.setObjectName("conversationDock")
        self.conversation_dock.setWidget(self.conversation_panel)
        self.conversation_dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetClosable
            | QDockWidget.DockWidgetFeature.DockWidgetMovable
        )
        # Hidden until asked for (Edit above the chat, View > This conversation):
        # its tab bar would take the height the memory column is laid out in.
        self.tabifyDockWidget(self.memory_dock, self.conversation_dock)
        self.conversation_dock.hide()
        self.memory_dock.raise_()

        self.conversation_list = ConversationList()
        self.conversation_list.export_requested.connect(self._choose_export_path)
        self.conversations_dock = QDockWidget("Conversations", self)
        self.conversations_dock.setObjectName("conversationsDock")
        self.conversations_dock.setWidget(self.conversation_list)
        self.conversations_dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetClosable
            | QDockWidget.DockWidgetFeature.DockWidgetMovable
        )
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, self.conversations_dock)
        self.resizeDocks([self.conversations_dock], [LIST_WIDTH], Qt.Orientation.Horizontal)
        # Set when a narrow window folded the list away, so a wider one brings it back.
        self._list_folded = False
        self.resize(1280, 760)

        self._build_menu()
        self._build_toolbar()
        self._sync_buttons(busy=False)
        self.installEventFilter(self)

    def show_serving(self, url: str, examples: str) -> None:
        """The API server runs at `url`; `examples` say how to call it."""
        self._serve_url, self._serve_examples = url, examples
        self.serve_action.setChecked(True)
        self.serve_button.setText(f"API: {url}")
        self.serve_button.show()
        if self.serve_dialog is not None:
            self.serve_dialog.show_server(url, examples)

    def show_not_serving(self) -> None:
        self.serve_action.setChecked(False)
        self.serve_button.hide()
        if self.serve_dialog is not None:
            self.serve_dialog.hide()

    def show_api_activity(self, text: str) -> None:
        """What the API server is doing now, after its address: "serving 127.0.0.1 …"."""
        self.serve_button.setText(f"API: {self._serve_url}" + (f" · {text}" if text else ""))

    def add_api_log(self, line: str) -> None:
        if self.serve_dialog is None:
            self.serve_dialog = ServeDialog(self)
            self.serve_dialog.show_server(self._serve_url, self._serve_examples)
        self.serve_dialog.add_log_line(line)

    def _show_serve_dialog(self) -> None:
        if self.serve_dialog is None:
            self.serve_dialog = ServeDialog(self)
        self.serve_dialog.show_server(self._serve_url, self._serve_examples)
        self.serve_dialog.show()
        self.serve_dialog.raise_()

    def _build_menu(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.new_action = QAction("&New conversation", self)
        self.new_action.setShortcut(QKeySequence.StandardKey.New)
        self.new_action.triggered.connect(self.conversation_list.new_requested)
        file_menu.addAction(self.new_action)
        export_menu = file_menu.addMenu("&Export conversation")
        export_menu.addAction("As &Markdown…", lambda: self._export_current("markdown"))
        export_menu.addAction("As &JSON…", lambda: self._export_current("json"))
        file_menu.addSeparator()
        self.open_action = QAction(icon("open"), "&Open model…", self)
        self.open_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_action.triggered.connect(self._choose_model_file)
        file_menu.addAction(self.open_action)
        self.get_models_action = QAction("&Get models…", self)
        self.get_models_action.setToolTip(
            "Search Hugging Face for GGUF models, see whether each fits, and download one"
        )
        self.get_models_action.triggered.connect(self.get_models_requested)
        file_menu.addAction(self.get_models_action)
        self.settings_action = QAction("&Settings…", self)
        self.settings_action.setShortcut(QKeySequence("Ctrl+,"))
        self.settings_action.setMenuRole(QAction.MenuRole.PreferencesRole)
        self.settings_action.triggered.connect(self.settings_requested)
        file_menu.addAction(self.settings_action)
        self.servers_action = QAction("Ser&vers…", self)
        self.servers_action.setToolTip(
            "Servers elsewhere (llama-server, vLLM, Ollama, LM Studio, kvchat) whose models "
            "you can chat with"
        )
        self.servers_action.triggered.connect(self.servers_requested)
        file_menu.addAction(self.servers_action)
        self.serve_action = QAction("Serve on &localhost", self)
        self.serve_action.setCheckable(True)
        self.serve_action.setToolTip(
            "Let programs on this computer use the model through an OpenAI-compatible API"
        )
        # triggered, not toggled: only the person's click asks for a change.
        self.serve_action.triggered.connect(self.serve_toggled)
        file_menu.addAction(self.serve_action)
        file_menu.addSeparator()
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence("Ctrl+Q"))
        quit_action.setShortcutContext(Qt.ShortcutContext.ApplicationShortcut)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(quit_action)
        view_menu = self.menuBar().addMenu("&View")
        self.panels_action = self.memory_dock.toggleViewAction()
        self.panels_action.setText("&Memory panels")
        self.panels_action.setShortcut(QKeySequence("Ctrl+M"))
        view_menu.addAction(self.panels_action)
        self.list_action = self.conversations_dock.toggleViewAction()
        self.list_action.setText("&Conversations")
        self.list_action.setShortcut(QKeySequence("Ctrl+L"))
        view_menu.addAction(self.list_action)
        self.conversation_panel_action = self.conversation_dock.toggleViewAction()
        self.conversation_panel_action.setText("&This conversation")
        self.conversation_panel_action.setShortcut(QKeySequence("Ctrl+Shift+E"))
        # Shown means in front: it shares its place with the memory panels.
        self.conversation_panel_action.triggered.connect(
            lambda shown: self.conversation_dock.raise_() if shown else None
        )
        view_menu.addAction(self.conversation_panel_action)
        self.stop_action = QAction("Stop", self)
        self.stop_action.setShortcut(QKeySequence(Qt.Key.Key_Escape))
        self.stop_action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        # In no menu: the shortcuts list says what it does from here.
        self.stop_action.setStatusTip(
            "Stop the reply (what was generated stays) or the load; while editing a message, "
            "stop editing"
        )
        self.stop_action.triggered.connect(self._stop_pressed)
        self.addAction(self.stop_action)
        self._build_chat_menu()
        self._build_help_menu()

    def _build_chat_menu(self) -> None:
        """The reply's actions, for the keyboard: regenerate, and page the versions."""
        chat_menu = self.menuBar().addMenu("&Chat")
        self.regenerate_action = QAction("&Regenerate reply", self)
        self.regenerate_action.setShortcut(QKeySequence("Ctrl+R"))
        self.regenerate_action.setStatusTip("A new version of the last reply; the old one stays")
        self.regenerate_action.triggered.connect(self.chat_view.regenerate_last)
        self.previous_version_action = QAction("&Previous version", self)
        self.previous_version_action.setShortcut(QKeySequence("Alt+Left"))
        self.previous_version_action.setStatusTip(
            "The version before, of the last message that has several"
        )
        self.previous_version_action.triggered.connect(lambda: self.chat_view.page_last(-1))
        self.next_version_action = QAction("&Next version", self)
        self.next_version_action.setShortcut(QKeySequence("Alt+Right"))
        self.next_version_action.setStatusTip(
            "The version after, of the last message that has several"
        )
        self.next_version_action.triggered.connect(lambda: self.chat_view.page_last(+1))
        for action in (
            self.regenerate_action,
            self.previous_version_action,
            self.next_version_action,
        ):
            chat_menu.addAction(action)

    def _build_help_menu(self) -> None:
        help_menu = self.menuBar().addMenu("&Help")
        self.shortcuts_action = QAction("&Keyboard shortcuts", self)
        self.shortcuts_action.setShortcut(QKeySequence.StandardKey.HelpContents)
        self.shortcuts_action.triggered.connect(self.show_shortcuts)
        help_menu.addAction(self.shortcuts_action)
        help_menu.addSeparator()
        self.data_folder_action = QAction("Open &data folder", self)
        self.data_folder_action.setToolTip(
            "The folder with kvchat's conversations, settings and logs, in the file manager"
        )
        self.data_folder_action.triggered.connect(self.data_folder_requested)
        help_menu.addAction(self.data_folder_action)
        self.engine_log_action = QAction("Open engine &log", self)
        self.engine_log_action.setToolTip("llama.cpp's log, in the system's text viewer")
        self.engine_log_action.triggered.connect(self.engine_log_requested)
        help_menu.addAction(self.engine_log_action)
        self.diagnostics_action = QAction("&Copy diagnostics", self)
        self.diagnostics_action.setToolTip(
            "Copy versions, devices, settings and the end of the engine's log for a bug "
            "report; never what a conversation says"
        )
        self.diagnostics_action.triggered.connect(self.diagnostics_requested)
        help_menu.addAction(self.diagnostics_action)
        help_menu.addSeparator()
        self.about_action = QAction("&About kvchat", self)
        self.about_action.setMenuRole(QAction.MenuRole.AboutRole)
        self.about_action.triggered.connect(self.about_requested)
        help_menu.addAction(self.about_action)
        # The tooltips above say what each does; menus show them only when asked.
        help_menu.setToolTipsVisible(True)

    # The Help menu's answers.

    def shortcut_rows(self) -> list[tuple[str, str]]:
        """Every key the window answers, with what it does: the composer's own
        keys, each action that has a shortcut (read from the actions, so the
        list is always the keys as they are), then the conversation list's own."""
        from kvchat.ui.help_dialogs import action_shortcuts

        return [*Composer.KEYS, *action_shortcuts(self), *ConversationList.KEYS]

    def show_shortcuts(self) -> None:
        """Help > Keyboard shortcuts: the list, made afresh each time it opens."""
        if self.shortcuts_dialog is not None:
            self.shortcuts_dialog.close()
            self.shortcuts_dialog.deleteLater()
        from kvchat.ui.help_dialogs import ShortcutsDialog

        self.shortcuts_dialog = ShortcutsDialog(self.shortcut_rows(), self)
        self.shortcuts_dialog.show()
        self.shortcuts_dialog.raise_()

    def show_about(self, heading: str, summary: str, rows: Sequence[tuple[str, str]]) -> None:
        """Opens the About box with these rows, or brings the open one forward with them."""
        if self.about_dialog is None:
            from kvchat.ui.help_dialogs import AboutDialog

            self.about_dialog = AboutDialog(self)
        self.about_dialog.show_rows(heading, summary, rows)
        self.about_dialog.show()
        self.about_dialog.raise_()

    def about_is_open(self) -> bool:
        return self.about_dialog is not None and self.about_dialog.isVisible()

    def refresh_about(self, heading: str, summary: str, rows: Sequence[tuple[str, str]]) -> None:
        """New rows for the About box, if it is open (the engine reported meanwhile)."""
        if self.about_is_open():
            assert self.about_dialog is not None
            self.about_dialog.show_rows(heading, summary, rows)

    def open_local(self, path: str) -> bool:
        """Opens a file or folder in the program the desktop chooses; False if none would."""
        return QDesktopServices.openUrl(QUrl.fromLocalFile(path))

    def show_help_message(self, title: str, text: str) -> None:
        """A short message box that does not stop the window (the chat goes on behind it)."""
        if self.help_message is not None:
            self.help_message.close()
        box = QMessageBox(
            QMessageBox.Icon.Information, title, text, QMessageBox.StandardButton.Ok, self
        )
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.destroyed.connect(lambda: self._forget_message(box))
        self.help_message = box
        box.open()

    def _forget_message(self, box: QMessageBox) -> None:
        if self.help_message is box:
            self.help_message = None

    def copy_text(self, text: str, note: str) -> None:
        """Puts `text` on the clipboard and says `note` in the status bar for a while."""
        QGuiApplication.clipboard().setText(text)
        self.statusBar().showMessage(note, STATUS_NOTE_MS)

    def _build_toolbar(self) -> None:
        toolbar = self.addToolBar("Model")
        toolbar.setObjectName("modelToolbar")
        toolbar.setMovable(False)
        toolbar.addWidget(QLabel(" Model "))
        self.model_switcher = QComboBox()
        self.model_switcher.setObjectName("modelSwitcher")
        self.model_switcher.setMinimumContentsLength(28)
        self.model_switcher.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.model_switcher.setToolTip("Switch to another model (the conversation carries over)")
        self.model_switcher.activated.connect(self._switcher_activated)
        toolbar.addWidget(self.model_switcher)
        toolbar.addAction(self.settings_action)

    def set_model_choices(self, choices: list[tuple[str, str]], current: str) -> None:
        """The toolbar's model list: (label, path) pairs, the loaded one selected."""
        switcher = self.model_switcher
        shown = {switcher.itemData(i): switcher.itemText(i) for i in range(switcher.count())}
        switcher.blockSignals(True)
        switcher.clear()
        for label, path in choices:
            if self._model_choice_index(path) < 0:
                switcher.addItem(label, path)
        # The model in use keeps its entry and label (a server's model not in the list).
        listed = {path for _label, path in choices}
        self.select_model_choice(current, "" if current in listed else shown.get(current, ""))
        switcher.blockSignals(False)

    def select_model_choice(self, path: str, label: str = "") -> None:
        """Selects the model in the list, adding it (as `label`) if it is not there."""
        index = self._model_choice_index(path)
        if index < 0 and path:
            self.model_switcher.addItem(label or path.rsplit("/", 1)[-1], path)
            index = self.model_switcher.count() - 1
        elif index >= 0 and label:
            self.model_switcher.setItemText(index, label)
        self.model_switcher.setCurrentIndex(index)

    def _model_choice_index(self, path: str) -> int:
        """The list's entry for this file, however its path is spelled (a
        link, `..`, a second slash): one file, one entry."""
        if not path:
            return -1
        wanted = os.path.realpath(path)
        for index in range(self.model_switcher.count()):
            data = self.model_switcher.itemData(index)
            if isinstance(data, str) and os.path.realpath(data) == wanted:
                return index
        return -1

    def _switcher_activated(self, index: int) -> None:
        path = self.model_switcher.itemData(index)
        if isinstance(path, str) and path:
            self.model_file_chosen.emit(path)

    def refresh_theme(self) -> None:
        """Redraws the icons after the system switched between light and dark."""
        self.send_button.setIcon(icon("send"))
        self.stop_button.setIcon(icon("stop"))
        self.open_action.setIcon(icon("open"))

    # What the owner tells the window.

    def show_loading(self, model_name: str) -> None:
        self._loading_name = model_name
        self._loading_fraction = 0.0
        self._loading_started = time.monotonic()
        self.loading_bar.setValue(0)
        self.loading_panel.show()
        self._loading_timer.start()
        self._show_loading()
        self.model_label.setText(f"Loading {model_name}")
        self._set_can_send(False)
        # Stop works during a load too: it ends the load.
        self.stop_button.setToolTip("Stop loading (Esc)")
        self._sync_buttons(busy=True)

    def set_loading_progress(self, fraction: float) -> None:
        """Kept for the next tick of the loading timer: a load reports a few hundred
        steps, and QProgressBar.setValue repaints the window at once, each time."""
        self._loading_fraction = fraction

    def _show_loading(self) -> None:
        elapsed = time.monotonic() - self._loading_started
        self.loading_bar.setValue(round(self._loading_fraction * 1000))
        self.loading_label.setText(
            f"Loading {self._loading_name}: {self._loading_fraction:.0%} · {elapsed:.1f} s"
        )

    def hide_loading(self) -> None:
        self._loading_timer.stop()
        if self.loading_panel.isVisibleTo(self):
            self.stop_button.setToolTip("Stop (Esc)")
            self._sync_buttons(busy=False)
        self.loading_panel.hide()

    def show_model(self, name: str, detail: str, context: str) -> None:
        """The model is ready: say which, with what context, and accept messages."""
        self.hide_loading()
        self.model_label.setText(name)
        self.model_label.setToolTip(detail)
        self.context_label.setText(context)
        self.setWindowTitle(f"{name} · kvchat")
        self._set_can_send(True)

    def show_no_model(self) -> None:
        self.hide_loading()
        self.model_label.setText("No model: File > Open model…")
        self.context_label.clear()
        self.setWindowTitle("kvchat")
        self._set_can_send(False)

    def show_error(self, text: str) -> None:
        self.banner.setText(text)
        self.banner.show()
        self.restart_button.hide()

    def offer_restart(self, text: str) -> None:
        """The engine stopped and will not start again on its own: say why, and
        leave starting it to the person."""
        self.show_error(text)
        self.restart_button.show()

    def clear_error(self) -> None:
        self.banner.hide()
        self.banner.clear()
        self.restart_button.hide()

    def show_storage_problem(self, text: str) -> None:
        """Saving fails: why, and what kvchat does about it, until `clear_storage_problem`."""
        self.storage_banner.setText(text)
        self.storage_banner.show()

    def clear_storage_problem(self) -> None:
        self.storage_banner.hide()
        self.storage_banner.clear()

    def show_speed(self, text: str) -> None:
        self.speed_label.setText(text)

    def show_model_view(self, text: str) -> None:
        """What part of the conversation the model sees, when not all of it."""
        self.view_label.setText(text)
        self.view_label.setVisible(bool(text))

    @property
    def editing_key(self) -> str:
        """The key of the message being edited in the composer, "" if none."""
        return self._editing_key

    def cancel_edit(self) -> None:
        if self._editing_key:
            self._editing_key = ""
            self.edit_label.hide()
            self.composer.clear()

    def set_busy(self, busy: bool) -> None:
        """While a reply streams, Send waits and Stop works."""
        self._sync_buttons(busy)

    def accept_message(self) -> None:
        """The owner took the submitted message: clear the composer."""
        self._editing_key = ""
        self.edit_label.hide()
        self.composer.clear()

    def return_message(self, text: str) -> None:
        """A message that could not be sent goes back to the composer, unless
        the person has started another one there."""
        if not self.composer.toPlainText().strip():
            self.composer.setPlainText(text)
            self.composer.moveCursor(QTextCursor.MoveOperation.End)

    # Internals.

    def _system_row(self) -> QHBoxLayout:
        """The conversation's system prompt, at its top, with a way to change
        it and the rest of the conversation's own settings."""
        # Elided to the room it has: a long prompt never sets the window's least width.
        self.system_label = LiveText()
        self.system_label.setObjectName("systemPromptLabel")
        self.system_edit_button = QPushButton("Edit")
        self.system_edit_button.setToolTip(
            "This conversation's system prompt, sampling and model (a tab beside Memory)"
        )
        self.system_edit_button.clicked.connect(self.show_conversation_panel)
        row = QHBoxLayout()
        row.addWidget(self.system_label, 1)
        row.addWidget(self.system_edit_button, 0)
        self._show_system_summary("", 0)
        return row

    def _show_system_summary(self, text: str, changed: int) -> None:
        """The line at the top: the system prompt's first line, and how many
        sampling values this conversation changed."""
        first_line = text.strip().splitlines()[0] if text.strip() else ""
        shown = first_line if len(first_line) <= 120 else first_line[:119] + "…"
        if text.strip() and (shown != text.strip()):
            shown += " …"
        summary = f"System prompt: {shown}" if text.strip() else "No system prompt"
        if changed:
            summary += f" · {changed} sampling value{'s' if changed > 1 else ''} of its own"
        self.system_label.setText(summary)
        self.system_label.setToolTip(text)

    def show_conversation_settings(
        self,
        system_prompt: str,
        overrides: dict[str, object],
        defaults: BaseModel,
        model_name: str | None,
        loaded_model_name: str,
    ) -> None:
        """This conversation's own settings; `model_name` None before a
        conversation exists (what is set then goes to the next one)."""
        if model_name is not None:
            self.conversation_panel.show_conversation(
                system_prompt, overrides, defaults, model_name, loaded_model_name
            )
        else:
            self.conversation_panel.set_new_conversation(defaults, system_prompt, overrides)
        self._show_system_summary(system_prompt, len(overrides))

    def _conversation_settings_changed(
        self, system_prompt: str, overrides: dict[str, object]
    ) -> None:
        self._show_system_summary(system_prompt, len(overrides))
        self.conversation_settings_edited.emit(system_prompt, overrides)

    def show_conversation_panel(self) -> None:
        """Brings this conversation's settings forward, the system prompt first."""
        self.conversation_dock.show()
        self.conversation_dock.raise_()
        self.conversation_panel.focus_system_prompt()

    def apply_appearance(self, appearance: Appearance) -> None:
        """The colour scheme, the chat column's width, and whether thinking shows."""
        application = QApplication.instance()
        if isinstance(application, QApplication):
            apply_scheme(application, appearance.theme)
        self.chat_view.set_max_width(appearance.chat_width)
        self.chat_view.set_show_thinking(appearance.show_thinking)
        self.refresh_theme()

    def focus_composer(self) -> None:
        """Typing goes to the composer: after a reply, a switch, a new conversation."""
        if self.isActiveWindow() or not self._focused_once:
            self.composer.setFocus(Qt.FocusReason.OtherFocusReason)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._fit_panels()

    def _fit_panels(self) -> None:
        """The chat keeps at least half the width: the side panels shrink to
        their minimum first, then the conversation list folds away (Ctrl+L
        brings it back), and comes back by itself when there is room again."""
        width = self.width()
        wanted_chat = width // 2
        memory = self.memory_dock if self.memory_dock.isVisibleTo(self) else None
        listing = self.conversations_dock
        memory_min = memory.minimumSizeHint().width() if memory is not None else 0
        list_min = LIST_MIN_WIDTH
        if self._list_folded and width - memory_min - LIST_WIDTH >= wanted_chat:
            self._list_folded = False
            listing.show()
        docks: list[QDockWidget] = []
        sizes: list[int] = []
        separator = self.style().pixelMetric(QStyle.PixelMetric.PM_DockWidgetSeparatorExtent)
        shown = sum(d.isVisibleTo(self) for d in (listing, self.memory_dock))
        room = width - wanted_chat - separator * shown
        if listing.isVisibleTo(self):
            if room - memory_min - separator < list_min:
                self._list_folded = True
                listing.hide()
                room += separator
            else:
                list_width = min(LIST_WIDTH, max(list_min, listing.width()), room - memory_min)
                docks.append(listing)
                sizes.append(list_width)
                room -= list_width
        if memory is not None:
            docks.append(memory)
            sizes.append(max(memory_min, min(memory.width(), room)))
        if docks and sum(d.width() for d in docks) > sum(sizes):
            self.resizeDocks(docks, sizes, Qt.Orientation.Horizontal)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self and event.type() == QEvent.Type.Paint:
            self.removeEventFilter(self)
            # The window is painted before what it holds, all in this one event:
            # a timer of 0 ms runs once the whole of it has been drawn.
            QTimer.singleShot(0, self, self._after_first_paint)
        return super().eventFilter(watched, event)

    def _after_first_paint(self) -> None:
        self.first_painted.emit()
        # pyqtgraph takes a quarter of a second to import, which the first
        # paint did not wait for.
        self.memory_panel.plot.build_soon()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if not self._focused_once:
            # A person who types as soon as the window appears types into the composer.
            self._focused_once = True
            self.composer.setFocus(Qt.FocusReason.ActiveWindowFocusReason)

    def _set_can_send(self, can_send: bool) -> None:
        self._can_send = can_send
        self._sync_buttons(busy=self.stop_button.isEnabled())

    def _sync_buttons(self, busy: bool) -> None:
        was_busy = self.stop_button.isEnabled()
        self.stop_button.setEnabled(busy)
        self.send_button.setEnabled(self._can_send and not busy)
        if was_busy and not busy:
            self.focus_composer()

    def _on_submitted(self, text: str) -> None:
        if not self.send_button.isEnabled():
            return
        if self._editing_key:
            self.message_edited.emit(self._editing_key, text)
        else:
            self.message_submitted.emit(text)

    def _edit_message(self, key: str) -> None:
        """Puts a message of the person's into the composer, to be edited and resent."""
        self._editing_key = key
        self.composer.setPlainText(self.chat_view.message_text(key))
        self.composer.moveCursor(QTextCursor.MoveOperation.End)
        self.composer.setFocus()
        self.edit_label.setText(
            "Editing your message: sending it replaces the replies after it. Esc cancels."
        )
        self.edit_label.show()

    def _export_current(self, kind: str) -> None:
        keys = self.conversation_list.list.selectedItems()
        if keys:
            self._choose_export_path(str(keys[0].data(Qt.ItemDataRole.UserRole)), kind)
        else:
            self.show_error("Pick a conversation in the list to export it.")

    def _choose_export_path(self, key: str, kind: str) -> None:
        row = next(
            (
                self.conversation_list.titles()[i]
                for i, k in enumerate(self.conversation_list.keys())
                if k == key
            ),
            "conversation",
        )
        suffix = ".md" if kind == "markdown" else ".json"
        name = "".join(c if c.isalnum() or c in " -_" else "_" for c in row).strip() or "chat"
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Export conversation",
            str(Path(self.export_folder) / (name + suffix)),
            EXPORT_FILTERS[kind],
        )
        if path:
            self.export_folder = str(Path(path).parent)
            self.export_requested.emit(key, path, kind)

    def _send_clicked(self) -> None:
        text = self.composer.toPlainText()
        if text.strip():
            self._on_submitted(text)

    def _stop_pressed(self) -> None:
        if self.stop_button.isEnabled():
            self.stop_requested.emit()
        else:
            self.cancel_edit()

    def _choose_model_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a GGUF model", self.model_folder, GGUF_FILTER
        )
        if path:
            self.model_folder = str(Path(path).parent)
            self.model_file_chosen.emit(path)

    def closeEvent(self, event: QCloseEvent) -> None:
        self._loading_timer.stop()
        self.closing.emit()
        super().closeEvent(event)
