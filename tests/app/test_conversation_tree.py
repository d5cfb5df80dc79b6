"""Kept alternatives: the tree of versions, its storage, and the migration of
a history that the previous kvchat wrote."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kvchat.app.core.conversation_tree import ConversationTree
from kvchat.app.core.store import (
    DB_NAME,
    SCHEMA_VERSION,
    Conversation,
    DeleteMessage,
    Message,
    PutConversation,
    PutMessage,
    open_store,
)

DATA = Path(__file__).parent / "data"


def _message(key: str, parent: str | None, position: int, at: float, text: str = "") -> Message:
    return Message(
        key=key,
        conversation_key="c",
        position=position,
        role="user" if position % 2 == 0 else "assistant",
        content=text or key,
        state="done",
        created_at=at,
        updated_at=at,
        parent_key=parent,
    )


def _tree() -> ConversationTree:
    """u1 → a1 → u2 → a2, with a2 regenerated (a2b) and u1 edited (u1b → a1b)."""
    return ConversationTree(
        [
            _message("u1", None, 0, 1),
            _message("a1", "u1", 1, 2),
            _message("u2", "a1", 2, 3),
            _message("a2", "u2", 3, 4),
            _message("a2b", "u2", 3, 5),
            _message("u1b", None, 0, 6),
            _message("a1b", "u1b", 1, 7),
        ]
    )


def test_versions_count_siblings_in_the_order_they_were_made() -> None:
    tree = _tree()
    assert [tree.versions(tree.get(k)) for k in ("u1", "u1b", "a1", "a2", "a2b")] == [  # type: ignore[arg-type]
        (1, 2),
        (2, 2),
        (1, 1),
        (1, 2),
        (2, 2),
    ]


def test_a_branch_runs_from_a_first_message_to_its_leaf() -> None:
    tree = _tree()
    assert [m.key for m in tree.branch("a2")] == ["u1", "a1", "u2", "a2"]
    assert [m.key for m in tree.branch("a1b")] == ["u1b", "a1b"]
    # A leaf that never reached the store: the branch active last.
    assert [m.key for m in tree.branch("gone")] == ["u1b", "a1b"]
    assert ConversationTree().branch("") == []


def test_paging_lands_on_the_branch_as_it_was_left() -> None:
    tree = _tree()
    first = tree.sibling("u1b", -1)
    assert first is not None and first.key == "u1"
    # Under u1 the newest leaf is a2b, the regenerated reply.
    assert tree.latest_leaf("u1") == "a2b"
    assert tree.sibling("u1b", +1) is None
    assert tree.sibling("u1", -1) is None


def test_removing_a_message_takes_what_follows_it_only() -> None:
    tree = _tree()
    assert sorted(tree.remove("u2")) == ["a2", "a2b", "u2"]
    assert [m.key for m in tree.all()] == ["u1", "a1", "u1b", "a1b"]
    assert tree.versions(tree.get("u1b")) == (2, 2)  # type: ignore[arg-type]


def test_a_deep_conversation_needs_no_recursion() -> None:
    messages = [_message(f"m{i}", f"m{i - 1}" if i else None, i, i) for i in range(5000)]
    tree = ConversationTree(messages)
    assert len(tree.branch("m4999")) == 5000
    assert tree.latest_leaf("m0") == "m4999"
    assert len(tree.remove("m1")) == 4999


def test_the_store_keeps_every_version_and_the_branch_shown(tmp_path: Path) -> None:
    store = open_store(tmp_path).store
    conversation = Conversation("c", "Tree", "/m.gguf", "M", "", 1.0, 1.0, leaf_key="a2b")
    tree = _tree()
    store.apply([PutConversation(conversation), *(PutMessage(m) for m in tree.all())])
    store.apply([DeleteMessage("c", "u1b")])
    store.close()
    store = open_store(tmp_path).store
    stored = store.conversation("c")
    assert stored is not None and stored.leaf_key == "a2b"
    again = ConversationTree(store.messages("c"))
    assert [m.key for m in again.branch(stored.leaf_key)] == ["u1", "a1", "u2", "a2b"]
    assert [m.key for m in again.all()] == ["u1", "a1", "u2", "a2", "a2b"]
    store.close()


def test_a_history_from_the_previous_version_migrates_whole(tmp_path: Path) -> None:
    """The dump was written by kvchat before versions (schema 1): every message
    comes through, in order, each following the one before it, and the
    branch shown is the whole conversation."""
    connection = sqlite3.connect(tmp_path / DB_NAME)
    connection.executescript((DATA / "history_v1.sql").read_text(encoding="utf-8"))
    connection.execute("PRAGMA user_version = 1")
    before = connection.execute(
        "SELECT key, conversation_key, position, role, content, state, stats, tokens "
        "FROM messages ORDER BY conversation_key, position"
    ).fetchall()
    connection.close()
    assert len(before) == 6

    opened = open_store(tmp_path)
    store = opened.store
    assert opened.notice == ""
    after = []
    for conversation in sorted(store.conversations(), key=lambda c: c.key):
        messages = store.messages(conversation.key)
        branch = ConversationTree(messages).branch(conversation.leaf_key)
        assert branch == messages  # one branch, all of it
        assert conversation.leaf_key == messages[-1].key
        assert [m.parent_key for m in messages] == [None] + [m.key for m in messages[:-1]]
        after += [
            (m.key, m.conversation_key, m.position, m.role, m.content, m.state, m.stats, m.tokens)
            for m in messages
        ]
    assert after == before
    fruit = store.conversation("c0ffee01")
    assert fruit is not None and fruit.view_start == 2 and fruit.sampling == "{}"
    assert store.integrity() == "ok"
    store.close()
    connection = sqlite3.connect(tmp_path / DB_NAME)
    assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    connection.close()
