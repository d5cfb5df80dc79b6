"""What the API server beside the window is doing, and how to call it."""

from __future__ import annotations

from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

# Request lines kept in the dialog's log.
MAX_LOG_LINES = 200


class ServeDialog(QDialog):
    """The server's address, examples to copy, and its last requests."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Serving on localhost")
        self.url_label = QLabel()
        self.url_label.setTextInteractionFlags(
            self.url_label.textInteractionFlags()
            | self.url_label.textInteractionFlags().TextSelectableByMouse
        )
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        self.examples = QPlainTextEdit()
        self.examples.setReadOnly(True)
        self.examples.setFont(mono)
        self.examples.setMinimumHeight(190)
        self.copy_button = QPushButton("Copy examples")
        self.copy_button.clicked.connect(self._copy)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setFont(mono)
        self.log.setMaximumBlockCount(MAX_LOG_LINES)
        self.log.setPlaceholderText("No requests yet.")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.url_label)
        about = QLabel(
            "Programs on this computer can use the loaded model through OpenAI's API. "
            "Their requests wait for the window's replies, and the memory panels show them."
        )
        about.setWordWrap(True)
        layout.addWidget(about)
        layout.addWidget(self.examples)
        layout.addWidget(self.copy_button)
        layout.addWidget(QLabel("Requests"))
        layout.addWidget(self.log, 1)
        layout.addWidget(buttons)
        self.resize(640, 520)

    def show_server(self, url: str, examples: str) -> None:
        self.url_label.setText(f"Serving at <b>{url}</b>")
        self.examples.setPlainText(examples)

    def add_log_line(self, line: str) -> None:
        self.log.appendPlainText(line)

    def _copy(self) -> None:
        QGuiApplication.clipboard().setText(self.examples.toPlainText())
        self.copy_button.setText("Copied")
