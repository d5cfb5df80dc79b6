"""The conversation on screen, kept in step with the store.

Every change is written as it happens: the person's message is committed
before the request leaves for the engine, a reply being generated is
checkpointed every CHECKPOINT_MS, and its end (done, or interrupted) is
written with its figures. Writes go through the SaveQueue, so a full disk
delays them but never loses them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import replace

from PySide6.QtCore import QObject, QTimer

from kvchat.app.saving import SaveQueue
from kvchat.app.store import (
    Conversation,
    DeleteMessagesFrom,
    Message,
    MessageState,
    PutConversation,
    PutMessage,
    RestoreConversation,
    TrashConversation,
    new_key,
    storable,
)
from kvchat.engine.protocol import ModelInfo, TurnStats

CHECKPOINT_MS = 1000
TITLE_LENGTH = 60


def title_for(text: str) -> str:
    """A conversation's first title: the first line of its first message."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "New conversation")
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


def stats_json(stats: TurnStats) -> str:
    return json.dumps(dataclasses.asdict(stats))


def stats_of(message: Message) -> TurnStats | None:
    """The figures stored with a reply; None if there are none (or from an
    older kvchat whose figures had other fields)."""
    if not message.stats:
        return None
    try:
        return TurnStats(**json.loads(message.stats))
    except (TypeError, ValueError):
        return None


class History(QObject):
    """The conversation being shown (`conversation`, `messages`), and the
    store's other conversations. All on the GUI thread."""

    def __init__(self, saver: SaveQueue, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.saver = saver
        self.conversation: Conversation | None = None
        self.messages: list[Message] = []
        self._reply_saved = ""
        self._checkpoint = QTimer(self)
        self._checkpoint.setInterval(CHECKPOINT_MS)
        self._checkpoint.timeout.connect(self._save_reply)

    # Reading.

    def conversations(self, search: str = "") -> list[Conversation]:
        store = self.saver.store
        return store.conversations(search) if store is not None else []

    def open(self, key: str) -> bool:
        """Makes the stored conversation with this key the current one."""
        store = self.saver.store
        conversation = store.conversation(key) if store is not None else None
        if store is None or conversation is None:
            return False
        self._checkpoint.stop()
        self.conversation = conversation
        self.messages = store.messages(key)
        return True

    def new(self) -> None:
        """The next message starts a new conversation."""
        self._checkpoint.stop()
        self.conversation = None
        self.messages = []

    @property
    def view_start(self) -> int:
        return self.conversation.view_start if self.conversation else 0

    # Writing.

    def _message(self, role: str, text: str, state: MessageState) -> Message:
        assert self.conversation is not None
        now = time.time()
        return Message(
            key=new_key(),
            conversation_key=self.conversation.key,
            position=len(self.messages),
            role="user" if role == "user" else "assistant",
            content=text,
            state=state,
            created_at=now,
            updated_at=now,
        )

    def add_user(self, text: str, model: ModelInfo, system_prompt: str) -> Message:
        """Appends the person's message and commits it (with a new conversation
        if this is the first message). Returns the message.

        The text is kept as the store holds it (see app.store.storable), so
        what the window shows, exports and sends is what is on disk.
        """
        text = storable(text)
        writes: list[PutConversation | PutMessage] = []
        if self.conversation is None:
            now = time.time()
            self.conversation = Conversation(
                new_key(),
                title_for(text),
                storable(model.path),
                storable(model.name),
                storable(system_prompt),
                now,
                now,
            )
            writes.append(PutConversation(self.conversation))
        message = self._message("user", text, "done")
        self.messages.append(message)
        self.saver.submit(*writes, PutMessage(message))
        return message

    def replace_from(self, position: int, text: str) -> Message:
        """The person's message at `position` becomes `text`; what came after it goes.

        Both happen in one transaction.
        """
        assert self.conversation is not None
        del self.messages[position:]
        message = self._message("user", storable(text), "done")
        self.messages.append(message)
        self.saver.submit(DeleteMessagesFrom(self.conversation.key, position), PutMessage(message))
        return message

    def drop_from(self, position: int) -> None:
        """Removes the message at `position` and all after it."""
        assert self.conversation is not None
        del self.messages[position:]
        self.saver.submit(DeleteMessagesFrom(self.conversation.key, position))

    def begin_reply(self) -> Message:
        """A reply starts; it is written at the first checkpoint that has text."""
        message = self._message("assistant", "", "streaming")
        self.messages.append(message)
        self._reply_saved = ""
        self._checkpoint.start()
        return message

    def reopen_reply(self) -> Message:
        """The last reply is continued; it streams again from its text."""
        last = replace(self.messages[-1], state="streaming", updated_at=time.time())
        self.messages[-1] = last
        self._reply_saved = last.content
        self._checkpoint.start()
        return last

    def reply_grew(self, text: str) -> None:
        """The reply's text so far (saved at the next checkpoint)."""
        self.messages[-1] = replace(self.messages[-1], content=text)

    def _save_reply(self) -> None:
        last = self.messages[-1] if self.messages else None
        if last is None or last.state != "streaming" or last.content == self._reply_saved:
            return
        last = replace(last, updated_at=time.time())
        self.messages[-1] = last
        self._reply_saved = last.content
        self.saver.submit(PutMessage(last), durable=False)

    def finish_reply(
        self,
        text: str,
        state: MessageState,
        stats: TurnStats | None = None,
        tokens: int | None = None,
        tokens_model: str = "",
    ) -> Message:
        """The reply ended ("done", or "interrupted" when stopped or cut off)."""
        self._checkpoint.stop()
        last = replace(
            self.messages[-1],
            content=text,
            state=state,
            updated_at=time.time(),
            stats=stats_json(stats) if stats is not None else self.messages[-1].stats,
            tokens=tokens,
            tokens_model=tokens_model,
        )
        self.messages[-1] = last
        self.saver.submit(PutMessage(last))
        self.saver.checkpoint()
        return last

    def set_tokens(self, index: int, tokens: int, model_path: str) -> None:
        """Records what a message costs in the context, measured by the engine."""
        message = replace(self.messages[index], tokens=tokens, tokens_model=model_path)
        self.messages[index] = message
        self.saver.submit(PutMessage(message))

    def set_view_start(self, position: int) -> None:
        if self.conversation is None or self.conversation.view_start == position:
            return
        self.conversation = replace(self.conversation, view_start=position)
        self.saver.submit(PutConversation(self.conversation))

    def use_model(self, model: ModelInfo) -> None:
        """The conversation goes on with this model (it remembers the last one used)."""
        if self.conversation is None or self.conversation.model_path == storable(model.path):
            return
        self.conversation = replace(
            self.conversation, model_path=storable(model.path), model_name=storable(model.name)
        )
        self.saver.submit(PutConversation(self.conversation))

    def set_system_prompt(self, text: str) -> None:
        """The current conversation's system prompt from now on (its next turn)."""
        if self.conversation is None:
            return
        self.conversation = replace(self.conversation, system_prompt=storable(text))
        self.saver.submit(PutConversation(self.conversation))

    def rename(self, key: str, title: str) -> None:
        store = self.saver.store
        conversation = (
            self.conversation if self.conversation and self.conversation.key == key else None
        )
        if conversation is None and store is not None:
            conversation = store.conversation(key)
        if conversation is None:
            return
        conversation = replace(conversation, title=storable(title))
        if self.conversation is not None and self.conversation.key == key:
            self.conversation = conversation
        self.saver.submit(PutConversation(conversation))

    def trash(self, key: str) -> None:
        """Deletes a conversation, recoverably until the next start (see `restore`)."""
        if self.conversation is not None and self.conversation.key == key:
            self.new()
        self.saver.submit(TrashConversation(key))

    def restore(self, key: str) -> None:
        self.saver.submit(RestoreConversation(key))

    def close(self) -> None:
        """Writes a reply still streaming as interrupted, then closes the store."""
        last = self.messages[-1] if self.messages else None
        if last is not None and last.state == "streaming":
            self.finish_reply(last.content, "interrupted")
        self.saver.close()
