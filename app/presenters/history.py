"""The conversation on screen, kept in step with the store.

Every change is written as it happens: the person's message first (the
request for its reply is to leave once it is on disk: SaveQueue.when_saved),
then a reply being generated is checkpointed every CHECKPOINT_MS, and its
end (done, or interrupted) is written with its figures. Writes go through
the SaveQueue, so a full disk delays them but never loses them, and a slow
one never holds up the window.

The store answers with what is committed, so what was written and is not on
disk yet is never read back from it: the conversation on screen lives here,
and so does one left (or renamed) before its writes reached the disk, until
they do. The list is read from the store, and shows a change once
`SaveQueue.committed` says it is there.

A reply being written has one owner, the chat session: its text is read
from there (the callable given to `begin_reply`) at each checkpoint and at
its end, and the tree holds what was last written.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
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
    Write,
    new_key,
    storable,
)
from kvchat.app.presenters.saving import SaveQueue
from kvchat.engine.protocol import ModelInfo, TurnStats

CHECKPOINT_MS = 1000
TITLE_LENGTH = 60

# The answer and the thinking of a reply being written, as they are now.
ReplyText = Callable[[], tuple[str, str]]


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
        self._reply_text: ReplyText | None = None  # its owner's, while it is written
        # Conversations not on screen with writes not on disk yet, as written.
        self._left: dict[str, tuple[Conversation, ConversationTree]] = {}
        # Sent to the trash and not on disk yet: gone from here at once.
        self._trashed: set[str] = set()
        self._checkpoint = QTimer(self)
        self._checkpoint.setInterval(CHECKPOINT_MS)
        self._checkpoint.timeout.connect(self.checkpoint_reply)
        saver.committed.connect(self._on_committed)

    # Reading.

    def conversations(self, search: str = "") -> list[Conversation]:
        """The stored conversations, newest activity first (see
        ConversationStore.conversations); one sent to the trash is left out at once.

        One with writes not on disk yet is listed as it is held here (renamed,
        say); one the store has nothing of yet (begun while the disk refuses
        writes) comes first, when nothing is searched: its text is searched
        by SQL once it is on disk, not here.
        """
        held = {
            conversation.key: conversation
            for conversation, _tree in self._held()
            if conversation.key not in self._trashed and self.saver.unsaved(conversation.key)
        }
        stored = self.saver.conversations(search)
        listed = [held.pop(c.key, c) for c in stored if c.key not in self._trashed]
        if search.strip():
            return listed
        return sorted(held.values(), key=lambda c: c.updated_at, reverse=True) + listed

    def _held(self) -> list[tuple[Conversation, ConversationTree]]:
        """The conversations held here: the one on screen, and those left unsaved."""
        current = [(self.conversation, self.tree)] if self.conversation is not None else []
        return current + list(self._left.values())

    def load(self, key: str) -> tuple[Conversation, ConversationTree] | None:
        """The conversation with this key and its messages, as last written
        (from here where its writes are not all on disk); None if it is gone."""
        if key in self._trashed:
            return None
        if self.conversation is not None and self.conversation.key == key:
            return self.conversation, self.tree
        if key in self._left:
            return self._left[key]
        conversation = self.saver.conversation(key)
        if conversation is None:
            return None
        return conversation, ConversationTree(self.saver.messages(key))

    def open(self, key: str) -> bool:
        """Makes the conversation with this key the current one, on the branch
        it was last shown on."""
        found = self.load(key)
        if found is None:
            return False
        self._forget_reply()
        self._leave()
        self.conversation, self.tree = found
        self._left.pop(key, None)
        self.messages = self.tree.branch(self.conversation.leaf_key)
        return True

    def new(self) -> None:
        """The next message starts a new conversation."""
        self._forget_reply()
        self._leave()
        self.conversation = None
        self.tree = ConversationTree()
        self.messages = []

    def _leave(self) -> None:
        """The current conversation leaves the screen; kept here until its writes are on disk."""
        conversation = self.conversation
        if conversation is not None and self.saver.unsaved(conversation.key):
            self._left[conversation.key] = (conversation, self.tree)

    def _on_committed(self, _writes: tuple[Write, ...]) -> None:
        """Writes reached the disk: what the store now has need not be kept here
        (a conversation in the trash on disk is one the store leaves out)."""
        for key in [key for key in self._left if not self.saver.unsaved(key)]:
            del self._left[key]
        self._trashed = {key for key in self._trashed if self.saver.unsaved(key)}

    def _forget_reply(self) -> None:
        self._checkpoint.stop()
        self._reply_key = None
        self._reply_text = None

    @property
    def view_start(self) -> int:
        return self.conversation.view_start if self.conversation else 0

    def versions(self, message: Message) -> tuple[int, int]:
        """Which version of itself the message is (from 1), and of how many."""
        return self.tree.versions(message)

    @property
    def reply_key(self) -> str | None:
        """The key of the reply being written; None when none is."""
        return self._reply_key

    @property
    def reply(self) -> Message | None:
        """The reply being written, on screen or not, with its text as its
        owner has it now; None when none is."""
        last = self.tree.get(self._reply_key) if self._reply_key else None
        if last is None or self._reply_text is None:
            return last
        answer, thinking = self._reply_text()
        return replace(last, content=answer, thinking=thinking)

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

    def begin_reply(self, text: ReplyText) -> Message:
        """A reply starts; `text` says its answer and thinking so far. It is
        written at the first checkpoint that has text."""
        message = self._message("assistant", "", "streaming")
        self.tree.put(message)
        self.messages.append(message)
        self._reply_key, self._reply_text = message.key, text
        if self.conversation is not None:
            self.saver.submit(*self._show_leaf(message.key))
        self._checkpoint.start()
        return message

    def reopen_reply(self, text: ReplyText) -> Message:
        """The last reply on screen is continued; it streams again from its
        text, and `text` says all of it so far (its earlier text included)."""
        last = replace(self.messages[-1], state="streaming", updated_at=time.time())
        self._update(last)
        self._reply_key, self._reply_text = last.key, text
        self._checkpoint.start()
        return last

    def _update(self, message: Message) -> None:
        """A message already in the tree changed; the branch on screen follows."""
        self.tree.put(message)
        if message.position < len(self.messages) and self.messages[message.position].key == (
            message.key
        ):
            self.messages[message.position] = message

    def checkpoint_reply(self) -> None:
        """Writes the reply being written as its owner has it now, unless that
        is what was written last (every CHECKPOINT_MS, and before an export)."""
        last = self.tree.get(self._reply_key) if self._reply_key else None
        if last is None or last.state != "streaming" or self._reply_text is None:
            return
        answer, thinking = self._reply_text()
        if (answer, thinking) == (last.content, last.thinking):
            return
        reply = replace(last, content=answer, thinking=thinking, updated_at=time.time())
        self._update(reply)
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

        `thinking` None takes the thinking its owner has. Returns the reply
        as stored, or None when no reply was being written.
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
        found = self.load(key)
        if found is None:
            return
        conversation, tree = found
        conversation = replace(conversation, title=storable(title))
        if self.conversation is not None and self.conversation.key == key:
            self.conversation = conversation
        else:
            # Opened before the store has the new title, it must not bring back the old.
            self._left[key] = (conversation, tree)
        self.saver.submit(PutConversation(conversation))

    def trash(self, key: str) -> None:
        """Deletes a conversation, recoverably until the next start (see `restore`)."""
        if self.conversation is not None and self.conversation.key == key:
            self.new()
        self._trashed.add(key)
        self.saver.submit(TrashConversation(key))

    def restore(self, key: str) -> None:
        """Takes a conversation out of the trash: it can be opened and is listed
        at once (held here until that is on disk)."""
        self._trashed.discard(key)
        if key not in self._left and (found := self.saver.conversation(key, in_trash=True)):
            self._left[key] = (found, ConversationTree(self.saver.messages(key)))
        self.saver.submit(RestoreConversation(key))

    def close(self) -> None:
        """Writes a reply still streaming as interrupted, then closes the store."""
        reply = self.reply
        if reply is not None and reply.state == "streaming":
            self.finish_reply(reply.content, "interrupted")
        self.saver.close()
