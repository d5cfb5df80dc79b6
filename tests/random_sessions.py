"""Random sessions of a person at the window: send, stop, wait, switch models,
start or reopen conversations, regenerate, edit, page through versions, in a
seeded order.

The same driver runs against the scripted engine (hundreds of sessions, in
tests/app/test_random_sessions.py) and the real one (a few, in
tests/test_abuse.py). `check` holds the invariants that must survive any
order of those actions:

- every message the window accepted is stored exactly once (an edit or a
  regenerated reply is a new version: nothing is cut), and nothing else of
  the person's is stored;
- each stored conversation is a tree whose every message follows one of
  its own conversation at the position before it, a reply always following
  the person's message and the person's message a reply (or nothing), and
  the branch the window shows is a path of that tree, as it is on disk;
- each stored reply holds only text that its own request produced, as a
  prefix of what that request streamed (all of it when the reply is done),
  and that request was sent with the message the reply follows.

A reply's request is known from its message key: the driver wraps the
engine's `chat`, and the reply being generated is the last message then.
"""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from kvchat.app.core.store import DB_NAME
from kvchat.app.presenters.controller import Controller
from kvchat.engine.protocol import ChatMessage, Sampling
from kvchat.ui.main_window import MainWindow
from tests.stored import wait_until_saved

ACTIONS = (
    ("send", 30),
    ("stop", 14),
    ("wait", 14),
    ("settle", 10),
    ("switch", 5),
    ("new", 5),
    ("open", 6),
    ("regenerate", 8),
    ("edit", 8),
    ("page", 8),
)
WORDS = ("apple", "river", "stone", "cloud", "seven", "quiet", "north", "lamp")


@dataclass(repr=False)  # its window may be gone when a failure is shown
class Session:
    """Drives one window; `log` is the actions taken, for a failure's message."""

    qtbot: QtBot
    window: MainWindow
    controller: Controller
    data_dir: Path
    model_path: str
    rng: random.Random
    wait_ms: tuple[int, int] = (0, 40)
    settle_ms: int = 10_000
    log: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    streamed: dict[int, list[str]] = field(default_factory=dict)
    prompts: dict[int, list[ChatMessage]] = field(default_factory=dict)
    reply_request: dict[str, int] = field(default_factory=dict)
    _count: int = 0

    def __post_init__(self) -> None:
        engine = self.controller.engine
        real_chat = engine.chat

        def chat(
            messages: Sequence[ChatMessage],
            sampling: Sampling,
            continue_last: bool = False,
            *,
            reply_room: int = 0,
            drop_oldest: bool = False,
        ) -> int:
            request_id = real_chat(
                messages,
                sampling,
                continue_last,
                reply_room=reply_room,
                drop_oldest=drop_oldest,
            )
            self.prompts[request_id] = list(messages)
            reply = self.controller.history.reply  # not always the last one shown
            assert reply is not None
            self.reply_request[reply.key] = request_id
            return request_id

        engine.chat = chat  # type: ignore[method-assign]
        engine.text_received.connect(
            lambda request_id, text: self.streamed.setdefault(request_id, []).append(text)
        )

    # Actions.

    def _text(self) -> str:
        self._count += 1
        words = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(1, 6)))
        return f"m{self._count} {words}"

    def _press_enter(self, text: str) -> bool:
        """Types `text` in the composer and presses Enter; True if it was taken."""
        self.window.composer.setPlainText(text)
        self.qtbot.keyClick(self.window.composer, Qt.Key.Key_Return)
        return self.window.composer.toPlainText() == ""

    def send(self) -> None:
        self.window.cancel_edit()
        text = self._text()
        if self._press_enter(text):
            self.accepted.append(text)
            self.log.append(f"send {text!r}")
        else:
            self.log.append(f"send {text!r} (refused: busy or no model)")
            self.window.composer.clear()

    def edit(self) -> None:
        messages = self.controller.history.messages
        users = [m for m in messages if m.role == "user"]
        if not users or self.controller.busy:
            self.log.append("edit (nothing to edit now)")
            return
        target = self.rng.choice(users)
        self.window.chat_view.edit_requested.emit(target.key)
        text = self._text()
        if self._press_enter(text):
            self.accepted.append(text)
            self.log.append(f"edit {target.content!r} -> {text!r}")
        else:
            self.log.append(f"edit {target.content!r} (refused)")
            self.window.cancel_edit()

    def regenerate(self) -> None:
        messages = self.controller.history.messages
        if not messages or messages[-1].role != "assistant":
            self.log.append("regenerate (no reply)")
            return
        self.log.append(f"regenerate {messages[-1].content[:20]!r}")
        self.window.chat_view.regenerate_requested.emit(messages[-1].key)

    def page(self) -> None:
        """Another version of a message on screen, even while a reply streams."""
        history = self.controller.history
        kept = [m for m in history.messages if history.versions(m)[1] > 1]
        if not kept:
            self.log.append("page (one version of everything)")
            return
        target = self.rng.choice(kept)
        step = self.rng.choice((-1, 1))
        self.log.append(f"page {target.content[:20]!r} {step:+d}")
        self.window.chat_view.version_requested.emit(target.key, step)

    def open(self) -> None:
        keys = self.window.conversation_list.keys()
        if not keys:
            self.log.append("open (no conversation)")
            return
        key = self.rng.choice(keys)
        self.log.append(f"open {key[:6]}")
        self.window.conversation_list.chosen.emit(key)

    def step(self) -> None:
        names, weights = zip(*ACTIONS, strict=True)
        action = self.rng.choices(names, weights)[0]
        if action == "send":
            self.send()
        elif action == "edit":
            self.edit()
        elif action == "regenerate":
            self.regenerate()
        elif action == "open":
            self.open()
        elif action == "page":
            self.page()
        elif action == "stop":
            self.log.append("stop")
            self.window.stop_action.trigger()
        elif action == "wait":
            ms = self.rng.randint(*self.wait_ms)
            self.log.append(f"wait {ms} ms")
            self.qtbot.wait(ms)
        elif action == "settle":
            self.log.append("settle")
            self.settle()
        elif action == "switch":
            self.log.append("switch model")
            self.window.model_file_chosen.emit(self.model_path)
        else:
            self.log.append("new conversation")
            self.window.new_action.trigger()

    def settle(self) -> None:
        """Waits until no reply streams and a model is loaded."""
        self.qtbot.waitUntil(
            lambda: not self.controller.busy and self.controller.model is not None,
            timeout=self.settle_ms,
        )
        self.qtbot.wait(1)

    # Invariants.

    def rows(self) -> dict[str, dict[str, tuple[int, str, str, str, str | None]]]:
        """Stored conversations (not deleted): key -> message key -> (position,
        role, content, state, the key of the message it follows)."""
        connection = sqlite3.connect(self.data_dir / DB_NAME)
        try:
            found: dict[str, dict[str, tuple[int, str, str, str, str | None]]] = {}
            for (key,) in connection.execute(
                "SELECT key FROM conversations WHERE deleted_at IS NULL"
            ):
                found[key] = {
                    str(k): (int(p), str(r), str(c), str(s), parent)
                    for k, p, r, c, s, parent in connection.execute(
                        "SELECT key, position, role, content, state, parent_key FROM messages "
                        "WHERE conversation_key = ?",
                        (key,),
                    )
                }
            return found
        finally:
            connection.close()

    def check(self, extra: Callable[[str, int], str] | None = None, idle: bool = True) -> None:
        """Asserts the invariants on the store (and on the window when `idle`).

        `extra(content, request_id)` may add an engine's own check of a
        reply; it returns what is wrong, or "". What the window wrote is
        waited for first: the save queue commits on a worker thread.
        """
        wait_until_saved(self.qtbot, self.controller.history.saver)
        stored = self.rows()
        where = "\n".join(self.log[-40:])
        users = Counter(
            content
            for messages in stored.values()
            for _, role, content, _, _ in messages.values()
            if role == "user"
        )
        twice = [text for text, count in users.items() if count > 1]
        assert not twice, f"stored more than once: {twice}\n{where}"
        expected = set(self.accepted)
        assert set(users) == expected, (
            f"missing {expected - set(users)}, unexpected {set(users) - expected}\n{where}"
        )
        used: dict[int, str] = {}
        for conversation, messages in stored.items():
            for key, (position, role, content, state, parent) in messages.items():
                follows = messages.get(parent) if parent is not None else None
                assert (parent is None) == (position == 0), f"{key[:6]} at {position}\n{where}"
                if parent is not None:
                    assert follows is not None, f"{key[:6]} follows a message not stored\n{where}"
                    assert follows[0] == position - 1, where
                    assert follows[1] != role, f"{conversation[:6]}: two {role}s\n{where}"
                else:
                    assert role == "user", f"{conversation[:6]} starts with {role}\n{where}"
                if role != "assistant":
                    continue
                if idle:
                    assert state != "streaming", where
                request_id = self.reply_request.get(key)
                if request_id is None:
                    # Stopped, or left, before its request went out (it goes
                    # once the person's message is on disk): nothing in it.
                    assert (content, state) == ("", "interrupted"), where
                    continue
                assert request_id not in used, f"request {request_id} in two replies\n{where}"
                used[request_id] = key
                full = "".join(self.streamed.get(request_id, []))
                assert full.startswith(content), (
                    f"reply {content!r} is not what request {request_id} streamed ({full!r})"
                    f"\n{where}"
                )
                if state == "done":
                    assert content == full, where
                assert follows is not None
                assert self.prompts[request_id][-1] == ChatMessage("user", follows[2]), where
                if extra is not None:
                    problem = extra(content, request_id)
                    assert not problem, f"{problem}\n{where}"
        current = self.controller.history.conversation
        if idle and current is not None and current.key in stored:
            on_disk = stored[current.key]
            shown = self.controller.history.messages
            assert all(
                on_disk.get(m.key) == (m.position, m.role, m.content, m.state, m.parent_key)
                for m in shown
            ), f"window and disk differ\n{where}"
            assert [m.parent_key for m in shown] == [None] + [m.key for m in shown[:-1]], where
