"""The list of conversations: new, open, search, rename, delete (with undo) and export.

The list is read from the store, which has a change once the save worker
committed it: it is drawn again when `SaveQueue.committed` says so, and at
once after a change made here (History lists what it holds that is not on
disk yet).
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from kvchat.app.core.export import ExportError, to_json, to_markdown, write_text
from kvchat.app.core.formatting import describe_model
from kvchat.app.core.store import Opened, PutMessage, Write
from kvchat.app.presenters.chat_session import ChatSession
from kvchat.app.presenters.conversation_settings import ConversationSettings
from kvchat.app.presenters.history import History
from kvchat.app.presenters.transcript import footer_of
from kvchat.engine.protocol import ModelInfo
from kvchat.ui.conversation_list import ConversationItem
from kvchat.ui.main_window import MainWindow


class ConversationsPresenter(QObject):
    """Which conversation is on screen, and the list beside it.

    Signals:
        conversation_shown(str): another conversation is on screen (its key; "" for
            a new one not started yet).
    """

    conversation_shown = Signal(str)

    def __init__(
        self,
        window: MainWindow,
        history: History,
        session: ChatSession,
        conversation_settings: ConversationSettings,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.window = window
        self.history = history
        self.session = session
        self.conversation_settings = conversation_settings
        self._search = ""
        self._load_notice_shown = ""  # the model the conversation on screen was told of
        self._shown_before_delete: str | None = None  # deleted while on screen: Undo shows it
        session.conversation_changed.connect(self.refresh_list)
        session.supervisor.model_ready.connect(self._on_model_ready)
        listing = window.conversation_list
        listing.new_requested.connect(self.new_conversation)
        listing.chosen.connect(self.open_conversation)
        listing.rename_requested.connect(self.rename_conversation)
        listing.delete_requested.connect(self.delete_conversation)
        listing.undo_requested.connect(self.restore_conversation)
        listing.search_changed.connect(self.search_conversations)
        window.export_requested.connect(self.export)
        window.conversation_model_requested.connect(self.load_conversation_model)
        saver = history.saver
        saver.committed.connect(self._on_committed)
        saver.save_failed.connect(window.show_storage_problem)
        saver.saved_again.connect(self._on_saved_again)
        saver.store_opened.connect(self._on_store_opened)
        if saver.problem:
            window.show_storage_problem(saver.problem)

    def _on_model_ready(self, info: ModelInfo) -> None:
        # Once per conversation shown: a reload of the same model adds nothing to read.
        described = describe_model(info)
        if described != self._load_notice_shown:
            self._load_notice_shown = described
            self.window.chat_view.add_notice(f"Loaded {described}")

    def _stop_for_switch(self) -> None:
        """A reply in flight ends where it got to, before another conversation shows."""
        if self.session.busy:
            self.session.supervisor.stop_reply()
            self.session.end_reply("stopped")

    def new_conversation(self) -> None:
        """Clears the chat; the next message starts a new conversation."""
        self._stop_for_switch()
        self.history.new()
        self.window.cancel_edit()
        self.window.chat_view.clear_conversation()
        self.window.show_model_view("")
        self.session.transcript.memory_monitor.set_model_view("")
        self.window.conversation_list.select(None)
        self._load_notice_shown = ""
        self.conversation_settings.forget_new()
        self.conversation_shown.emit("")
        self.window.focus_composer()

    def open_conversation(self, key: str) -> None:
        if self.history.conversation is not None and self.history.conversation.key == key:
            return
        self._stop_for_switch()
        if not self.history.open(key):
            self.window.show_error("That conversation could not be opened: it is gone.")
            self.refresh_list()
            return
        self.window.cancel_edit()
        self.session.transcript.show_branch()
        self.window.conversation_list.select(key)
        self._load_notice_shown = ""
        self.conversation_settings.show()
        self.conversation_shown.emit(key)
        self.window.focus_composer()
        self.session.prepare()

    def open_latest(self) -> None:
        """Shows the conversation with the newest activity, if there is one."""
        self.refresh_list()
        latest = self.history.conversations()
        if latest:
            self.open_conversation(latest[0].key)

    def load_conversation_model(self) -> None:
        """Loads the model the conversation on screen was held with."""
        conversation = self.history.conversation
        if conversation is not None and conversation.model_path:
            self.session.supervisor.switch_model(conversation.model_path)

    def rename_conversation(self, key: str, title: str) -> None:
        self.history.rename(key, title)
        self.refresh_list()

    def delete_conversation(self, key: str) -> None:
        """Deletes a conversation; the list offers to undo it.

        The one on screen gives way to its neighbour in the list (a new
        conversation if it was the only one), and Undo brings it back on screen.
        """
        current = self.history.conversation
        listed = self.history.conversations()
        keys = [c.key for c in listed]
        title = next((c.title for c in listed if c.key == key), "")
        was_shown = current is not None and current.key == key
        self._shown_before_delete = key if was_shown else None
        if was_shown:
            index = keys.index(key) if key in keys else 0
            # The one below it in the list, else the one above, else a new one.
            neighbours = keys[index + 1 : index + 2] or keys[max(index - 1, 0) : index]
            self._stop_for_switch()
            self.history.trash(key)
            if neighbours:
                self.open_conversation(neighbours[0])
            else:
                self.new_conversation()
        else:
            self.history.trash(key)
        self.refresh_list()
        self.window.conversation_list.offer_undo(key, title)

    def restore_conversation(self, key: str) -> None:
        self.history.restore(key)
        self.refresh_list()
        if key == self._shown_before_delete:
            self._shown_before_delete = None
            self.open_conversation(key)

    def search_conversations(self, text: str) -> None:
        self._search = text
        self.refresh_list()

    def _on_committed(self, writes: tuple[Write, ...]) -> None:
        """The list is drawn again for what changes it: not for the checkpoints
        of a reply (a message's text alone), written every second as it streams."""
        if not all(isinstance(write, PutMessage) for write in writes):
            self.refresh_list()

    def refresh_list(self) -> None:
        items = [
            ConversationItem(
                c.key,
                c.title,
                f"{c.model_name} · last active "
                f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(c.updated_at))}",
            )
            for c in self.history.conversations(self._search)
        ]
        current = self.history.conversation
        self.window.conversation_list.set_conversations(items, current.key if current else None)

    def export(self, key: str, path: str, kind: str) -> None:
        """Writes a conversation to `path` as "markdown" or "json"."""
        self.history.checkpoint_reply()  # a reply being written: as far as it got
        found = self.history.load(key)
        if found is None:
            self.window.show_error("That conversation could not be exported: it is gone.")
            return
        conversation, tree = found
        if kind == "json":
            text = to_json(conversation, tree.all())
        else:
            # The branch on screen (or last shown), as the person reads it.
            branch = tree.branch(conversation.leaf_key)
            footers = ["" if m.role == "user" else footer_of(m) for m in branch]
            text = to_markdown(conversation, branch, footers)
        try:
            write_text(Path(path), text)
        except ExportError as exc:
            self.window.show_error(str(exc))
            return
        self.window.chat_view.add_notice(f"Exported “{conversation.title}” to {path}")

    def _on_saved_again(self) -> None:
        self.window.clear_storage_problem()
        self.window.chat_view.add_notice("Saving works again: every message is on disk.")

    def _on_store_opened(self, opened: Opened) -> None:
        if opened.notice:
            self.window.chat_view.add_notice(opened.notice)
        self.refresh_list()
