"""What the window was like at quit: its size and place, and the unsent drafts.

Kept in `window.json` in the data folder, apart from settings.json: it
changes at every quit and is worth nothing if lost. Read forgivingly and
written atomically; a folder that refuses the write loses only this.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QByteArray, QObject

from kvchat.app.core.settings_file import write_atomically
from kvchat.app.presenters.controller import Controller
from kvchat.ui.main_window import MainWindow

STATE_FILE = "window.json"
# A draft is text the person typed; this only keeps a runaway file in check.
MAX_DRAFT_CHARS = 1 << 20


@dataclass
class WindowState:
    """The window's geometry (Qt's saveGeometry, base64) and drafts by conversation
    key ("" is the new conversation not yet started)."""

    geometry: str = ""
    drafts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> WindowState:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        geometry = data.get("geometry")
        drafts = data.get("drafts")
        return cls(
            geometry if isinstance(geometry, str) else "",
            {
                k: v[:MAX_DRAFT_CHARS]
                for k, v in (drafts.items() if isinstance(drafts, dict) else ())
                if isinstance(k, str) and isinstance(v, str) and v
            },
        )

    def write(self, path: Path) -> None:
        """Writes the state atomically; a refusal of the disk is ignored."""
        text = json.dumps({"geometry": self.geometry, "drafts": self.drafts}, indent=1)
        with contextlib.suppress(OSError):
            write_atomically(path, text)


class WindowKeeper(QObject):
    """Brings the window's geometry and each conversation's draft back, and
    keeps them at quit. Lives on the GUI thread, beside the controller."""

    def __init__(self, window: MainWindow, controller: Controller, data_dir: Path) -> None:
        super().__init__(window)
        self._window = window
        self._path = data_dir / STATE_FILE
        self._state = WindowState.read(self._path)
        self._shown: str | None = None  # no conversation on screen yet
        if self._state.geometry:
            window.restoreGeometry(QByteArray.fromBase64(self._state.geometry.encode("ascii")))
        self._controller = controller
        controller.conversation_shown.connect(self._on_conversation_shown)
        # A new conversation gets its key with its first message.
        controller.reply_finished.connect(lambda _stats: self._follow_key())
        window.closing.connect(self.save)

    def _follow_key(self) -> None:
        conversation = self._controller.history.conversation
        if conversation is not None:
            self._shown = conversation.key

    def _on_conversation_shown(self, key: str) -> None:
        """Keeps the draft of the conversation left, and brings back the one of `key`."""
        if key == self._shown:
            return
        self._keep_draft()
        self._shown = key
        self._window.composer.setPlainText(self._state.drafts.pop(key, ""))

    def restore_first_draft(self, key: str) -> None:
        """The draft of the conversation on screen at start."""
        if self._shown is not None:
            return  # open_latest showed it already
        self._shown = key
        self._window.composer.setPlainText(self._state.drafts.pop(key, ""))

    def _keep_draft(self) -> None:
        if self._shown is None:
            return
        text = self._window.composer.toPlainText()
        if text.strip():
            self._state.drafts[self._shown] = text[:MAX_DRAFT_CHARS]
        else:
            self._state.drafts.pop(self._shown, None)

    def save(self) -> None:
        self._keep_draft()
        self._state.geometry = bytes(self._window.saveGeometry().toBase64().data()).decode("ascii")
        self._state.write(self._path)
