"""The conversation's branch in the chat view: its messages, versions and
figures, the reply being written where it belongs, and where the model's
view starts."""

from __future__ import annotations

from collections.abc import Callable

from kvchat.app.core.formatting import format_stats
from kvchat.app.core.store import Message
from kvchat.app.presenters.history import History, stats_of, thinking_note
from kvchat.app.presenters.memory_monitor import MemoryMonitor
from kvchat.engine.protocol import ModelInfo
from kvchat.ui.chat_view import MessageView
from kvchat.ui.main_window import MainWindow


class Transcript:
    """Shows the history's branch; it holds no state of its own."""

    def __init__(
        self,
        window: MainWindow,
        history: History,
        memory_monitor: MemoryMonitor,
        model: Callable[[], ModelInfo | None],
    ) -> None:
        self.window = window
        self.history = history
        self.memory_monitor = memory_monitor
        self._model = model

    def show_branch(self) -> None:
        """Shows the conversation's branch, with the reply being written if it is on it."""
        conversation = self.history.conversation
        assert conversation is not None
        heading = conversation.model_name or "Model"
        reply = self.history.reply
        views = [
            MessageView(
                m.key,
                "You" if m.role == "user" else heading,
                m.content,
                m.role == "user",
                "" if m.role == "user" else footer_of(m),
                versions=self.history.versions(m),
                thinking=m.thinking,
                thinking_note=thinking_note(m) if m.thinking else "",
            )
            for m in self.history.messages
            if reply is None or m.key != reply.key
        ]
        self.window.chat_view.show_conversation(views, conversation.view_start)
        if reply is not None and self.reply_on_screen():
            # The reply being written is on this branch: it goes on growing here.
            view = self.window.chat_view
            view.begin_reply(heading, reply.key, versions=self.history.versions(reply))
            if reply.thinking:
                view.append_thinking(reply.thinking)
                view.set_thinking_note(thinking_note(reply))
            if reply.content:
                view.append_reply(reply.content)
        self.show_view_label()
        self.offer_actions(busy=False)
        model = self._model()
        if model is not None and conversation.model_path != model.path:
            self.window.chat_view.add_notice(
                f"This conversation was held with {conversation.model_name}; "
                f"replies now come from {model.name}."
            )

    def show_view_start(self, first: int) -> None:
        self.history.set_view_start(first)
        self.window.chat_view.set_view_start(first)
        self.show_view_label()

    def show_view_label(self) -> None:
        first = self.history.view_start
        count = len(self.history.messages)
        note = f"the model sees messages {first + 1}–{count} of {count}" if first else ""
        self.window.show_model_view(note)
        self.memory_monitor.set_model_view(
            f"The first {first} messages have left the model's view: {note}; "
            "the system prompt stays."
            if first
            else ""
        )

    def offer_actions(self, busy: bool) -> None:
        """Regenerate for the last reply, and Continue for one cut at its limit, when idle."""
        last = self.history.messages[-1] if self.history.messages else None
        if busy or last is None or last.role != "assistant":
            self.window.chat_view.set_reply_actions(regenerate=False, continue_=False)
            return
        stats = stats_of(last)
        can_continue = stats is not None and stats.stop_reason == "length"
        self.window.chat_view.set_reply_actions(regenerate=True, continue_=can_continue)

    def show_person(self, message: Message) -> None:
        """The person's message as stored (the store may have replaced what
        UTF-8 cannot hold), with its versions."""
        self.window.chat_view.add_message(
            "You",
            message.content,
            from_person=True,
            key=message.key,
            versions=self.history.versions(message),
        )

    def index(self, key: str) -> int | None:
        return next((i for i, m in enumerate(self.history.messages) if m.key == key), None)

    def leaf(self) -> str:
        return self.history.messages[-1].key if self.history.messages else ""

    def reply_on_screen(self) -> bool:
        key = self.history.reply_key
        return key is not None and self.index(key) is not None


def footer_of(message: Message) -> str:
    """The line under a stored reply: its figures, or how it ended."""
    stats = stats_of(message)
    if stats is not None:
        return format_stats(stats)
    return "interrupted" if message.state != "done" else ""
