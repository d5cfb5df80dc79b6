"""The conversation on screen, kept in step with the store.

Every change is written as it happens: the person's message first (the
request for its reply is to leave once it is on disk: SaveQueue.when_saved),
then a reply being generated is checkpointed every CHECKPOINT_MS, and its
end (done, or interrupted) is written with its figures. Writes go through
the SaveQueue, so a full disk delays them but never loses them, and a slow
one never holds up the window. Reads go through it too: they see the writes
not on disk yet.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import replace

from PySide6.QtCore import QObject, QTimer

from kvchat.app.core.conversation_tree import ConversationTree
from kvchat.app.core.settings import clean_overrides
from kvchat.app.core.store import (
    Conversation,
    DeleteMessage,
    Message,
    MessageState,
    PutConversation,
    PutMessage,
    RestoreConversation,
    TrashConversation,
    new_key,
    storable,
)
from kvchat.app.presenters.saving import SaveQueue
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


def thinking_note(message: Message) -> str:
    """The line that stands for a reply's thinking while it is collapsed."""
    stats = stats_of(message)
    if message.state == "streaming":
        return "Thinking…"
    if stats is None or not stats.thinking_tokens:
        return "Thought" if message.content else "Thinking, interrupted"
    figures = f"{stats.thinking_tokens} tokens, {stats.thinking_seconds:.1f} s"
    if message.content:
        return f"Thought for {figures}"
    if stats.stop_reason in ("length", "context_full"):
        return f"Thinking cut off at the token limit after {figures}: no answer yet"
    return f"Thinking stopped after {figures}: no answer yet"


def overrides_json(overrides: Mapping[str, object]) -> str:
    """A conversation's own sampling values as the store keeps them."""
    return json.dumps(dict(sorted(overrides.items())))


def overrides_of(sampling: str) -> dict[str, object]:
    """The sampling values a stored conversation changed; a value that is not
    valid (a hand-edited or damaged database) is left out, never raised."""
    try:
        raw = json.loads(sampling)
    except ValueError:
        return {}
    return clean_overrides(raw)


class History(QObject):
    """The conversation being shown (`conversation`, `tree`), the branch of it
    on screen (`messages`), and the store's other conversations. All on the
    GUI thread.

    A reply being written is followed by its key, not its place: the person
    may page to another branch while it streams, and it goes on in its own.
    """

    def __init__(self, saver: SaveQueue, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.saver = saver
        self.conversation: Conversation | None = None
        self.tree = ConversationTree()
        self.messages: list[Message] = []
        self._reply_key: str | None = None
        self._reply_saved = ("", "")  # the reply's answer and thinking as last written
        self._checkpoint = QTimer(self)
        self._checkpoint.setInterval(CHECKPOINT_MS)
        self._checkpoint.timeout.connect(self._save_reply)

    # Reading.

    def conversations(self, search: str = "") -> list[Conversation]:
        return self.saver.conversations(search)

    def open(self, key: str) -> bool:
        """Makes the stored conversation with this key the current one, on the
        branch it was last shown on."""
        conversation = self.saver.conversation(key)
        if conversation is None:
            return False
        self._forget_reply()
        self.conversation = conversation
        self.tree = ConversationTree(self.saver.messages(key))
        self.messages = self.tree.branch(conversation.leaf_key)
        return True

    def new(self) -> None:
        """The next message starts a new conversation."""
        self._forget_reply()
        self.conversation = None
        self.tree = ConversationTree()
        self.messages = []

    def _forget_reply(self) -> None:
        self._checkpoint.stop()
        self._reply_key = None

    @property
    def view_start(self) -> int:
        return self.conversation.view_start if self.conversation else 0

    def versions(self, message: Message) -> tuple[int, int]:
        """Which version of itself the message is (from 1), and of how many."""
        return self.tree.versions(message)

    @property
    def reply(self) -> Message | None:
        """The reply being written, on screen or not; None when none is."""
        return self.tree.get(self._reply_key) if self._reply_key else None

    # Writing.

    def _message(self, role: str, text: str, state: MessageState) -> Message:
        """A new message after the last one on screen."""
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
            parent_key=self.messages[-1].key if self.messages else None,
        )

    def _append(self, message: Message) -> list[PutConversation | PutMessage]:
        """Puts a new message at the end of the branch on screen; the writes
        that store it and make its branch the one shown."""
        self.tree.put(message)
        self.messages.append(message)
        return [PutMessage(message), *self._show_leaf(message.key)]

    def _show_leaf(self, key: str, view_start: int | None = None) -> list[PutConversation]:
        assert self.conversation is not None
        changed = replace(
            self.conversation,
            leaf_key=key,
            view_start=self.conversation.view_start if view_start is None else view_start,
        )
        if changed == self.conversation:
            return []
        self.conversation = changed
        return [PutConversation(changed)]

    def add_user(
        self, text: str, model: ModelInfo, system_prompt: str, sampling: str = "{}"
    ) -> Message:
        """Appends the person's message and commits it (with a new conversation
        if this is the first message, holding `system_prompt` and the
        `sampling` values it changed). Returns the message.

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
                sampling=sampling,
            )
            writes.append(PutConversation(self.conversation))
        message = self._message("user", text, "done")
        self.saver.submit(*writes, *self._append(message))
        return message

    def edit(self, position: int, text: str) -> Message:
        """A new version of the person's message at `position`: what followed
        the old one stays on its own branch, and the new one is shown."""
        assert self.conversation is not None
        del self.messages[position:]
        message = self._message("user", storable(text), "done")
        self.saver.submit(*self._append(message))
        return message

    def branch_off(self, position: int) -> None:
        """The branch on screen ends before `position`, so that the next
        message (a regenerated reply) is a new version of the one there."""
        del self.messages[position:]

    def page(self, key: str, step: int) -> bool:
        """Shows the version `step` away from the message with this key, and
        the branch under it as it was left. False when there is none."""
        version = self.tree.sibling(key, step)
        if version is None or self.conversation is None:
            return False
        leaf = self.tree.latest_leaf(version.key)
        self.messages = self.tree.branch(leaf)
        # Another branch is another conversation for the model: where its
        # view starts is found again at its next turn.
        self.saver.submit(*self._show_leaf(leaf, view_start=0))
        return True

    def take_back(self, key: str, leaf_before: str) -> None:
        """Removes the message with this key and all after it (the engine
        refused it), and shows the branch that was on screen before."""
        assert self.conversation is not None
        self.tree.remove(key)
        if self._reply_key is not None and self._reply_key not in self.tree:
            self._forget_reply()
        self.messages = self.tree.branch(leaf_before)
        leaf = self.messages[-1].key if self.messages else ""
        self.saver.submit(DeleteMessage(self.conversation.key, key), *self._show_leaf(leaf))

    def begin_reply(self) -> Message:
        """A reply starts; it is written at the first checkpoint that has text."""
        message = self._message("assistant", "", "streaming")
        self.tree.put(message)
        self.messages.append(message)
        self._reply_key = message.key
        self._reply_saved = ("", "")
        if self.conversation is not None:
            self.saver.submit(*self._show_leaf(message.key))
        self._checkpoint.start()
        return message

    def reopen_reply(self) -> Message:
        """The last reply on screen is continued; it streams again from its text."""
        last = replace(self.messages[-1], state="streaming", updated_at=time.time())
        self._update(last)
        self._reply_key = last.key
        self._reply_saved = (last.content, last.thinking)
        self._checkpoint.start()
        return last

    def _update(self, message: Message) -> None:
        """A message already in the tree changed; the branch on screen follows."""
        self.tree.put(message)
        if message.position < len(self.messages) and self.messages[message.position].key == (
            message.key
        ):
            self.messages[message.position] = message

    def reply_grew(self, text: str, thinking: str = "") -> None:
        """The reply's answer and thinking so far (saved at the next checkpoint)."""
        reply = self.reply
        if reply is not None:
            self._update(replace(reply, content=text, thinking=thinking))

    def _save_reply(self) -> None:
        reply = self.reply
        if reply is None or reply.state != "streaming":
            return
        if (reply.content, reply.thinking) == self._reply_saved:
            return
        reply = replace(reply, updated_at=time.time())
        self._update(reply)
        self._reply_saved = (reply.content, reply.thinking)
        self.saver.submit(PutMessage(reply), durable=False)

    def finish_reply(
        self,
        text: str,
        state: MessageState,
        stats: TurnStats | None = None,
        tokens: int | None = None,
        tokens_model: str = "",
        thinking: str | None = None,
    ) -> Message | None:
        """The reply ended ("done", or "interrupted" when stopped or cut off).

        `thinking` None keeps the thinking it has. Returns the reply as
        stored, or None when no reply was being written.
        """
        reply = self.reply
        self._forget_reply()
        if reply is None:
            return None
        reply = replace(
            reply,
            content=text,
            thinking=reply.thinking if thinking is None else storable(thinking),
            state=state,
            updated_at=time.time(),
            stats=stats_json(stats) if stats is not None else reply.stats,
            tokens=tokens,
            tokens_model=tokens_model,
        )
        self._update(reply)
        self.saver.submit(PutMessage(reply))
        self.saver.checkpoint()
        return reply

    def set_tokens(self, index: int, tokens: int, model_path: str) -> None:
        """Records what a message costs in the context, measured by the engine."""
        message = replace(self.messages[index], tokens=tokens, tokens_model=model_path)
        self._update(message)
        self.saver.submit(PutMessage(message))

    def set_view_start(self, position: int) -> None:
        if self.conversation is None or self.conversation.view_start == position:
            return
        self.conversation = replace(self.conversation, view_start=position)
        self.saver.submit(PutConversation(self.conversation))

    def set_sampling(self, sampling: str) -> None:
        """The sampling values this conversation changed from the defaults (JSON)."""
        if self.conversation is None or self.conversation.sampling == sampling:
            return
        self.conversation = replace(self.conversation, sampling=sampling)
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
        conversation = (
            self.conversation if self.conversation and self.conversation.key == key else None
        )
        if conversation is None:
            conversation = self.saver.conversation(key)
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
        reply = self.reply
        if reply is not None and reply.state == "streaming":
            self.finish_reply(reply.content, "interrupted")
        self.saver.close()
