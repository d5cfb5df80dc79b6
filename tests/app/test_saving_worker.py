"""The save queue's worker: commits leave the GUI thread, go in order, one
transaction a group; the window's reads never wait for them, and what the
window wrote is never lost to a read that came before its commit.

No timing: the store's writing connection (open_store's `connection_class`)
records each commit's thread and, while `Disk.hold` is clear, holds commits
off the GUI thread until the test, from the GUI thread's event loop, lets
them go.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytestqt.qtbot import QtBot

from kvchat.app.core.store import (
    DB_NAME,
    Conversation,
    DeleteMessage,
    Message,
    PutConversation,
    PutMessage,
    open_store,
)
from kvchat.app.presenters.history import History
from kvchat.app.presenters.saving import SaveQueue
from tests.scripted_engine import model_info
from tests.stored import wait_until_saved

WAIT_MS = 5000


class Disk:
    """Watches the commits of the store's writing connection, and holds them."""

    def __init__(self) -> None:
        self.hold = threading.Event()  # set: commits go through
        self.hold.set()
        self.holding = threading.Event()  # a commit waits for `hold`
        self.threads: list[threading.Thread] = []  # each commit's, since `forget`
        self.transactions: list[list[str]] = []  # the keys each committed transaction put
        self._putting: list[str] = []

    def forget(self) -> None:
        """From here on (opening the store committed on the thread that opened it)."""
        self.threads.clear()
        self.transactions.clear()

    def connection_class(self) -> type[sqlite3.Connection]:
        disk = self

        class Watched(sqlite3.Connection):
            def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
                if sql.startswith("BEGIN"):
                    disk._putting = []
                elif sql.startswith("INSERT INTO"):
                    disk._putting.append(parameters[0])  # the key comes first
                elif sql == "COMMIT":
                    disk.threads.append(threading.current_thread())
                    # Never held on the GUI thread: that would hang the test, not fail it.
                    if threading.current_thread() is not threading.main_thread():
                        disk.holding.set()
                        disk.hold.wait()
                cursor = super().execute(sql, parameters)
                if sql == "COMMIT":
                    disk.transactions.append(disk._putting)
                return cursor

        return Watched


@pytest.fixture
def disk() -> Iterator[Disk]:
    watched = Disk()
    yield watched
    watched.hold.set()  # a test that failed must not leave the worker waiting


def _queue(data_dir: Path, disk: Disk, retry_ms: int | None = None) -> SaveQueue:
    queue = SaveQueue(lambda: open_store(data_dir, disk.connection_class()), retry_ms=retry_ms)
    assert queue.open() is not None
    disk.forget()
    return queue


def _message(position: int, text: str, state: str = "done", **extra: Any) -> Message:
    values: dict[str, Any] = {
        "key": f"m{position}",
        "conversation_key": "c",
        "position": position,
        "role": "user" if position % 2 == 0 else "assistant",
        "content": text,
        "state": state,
        "created_at": 10.0 + position,
        "updated_at": 10.0 + position,
    }
    values.update(extra)
    return Message(**values)


def _put(position: int, text: str, state: str = "done", **extra: Any) -> PutMessage:
    return PutMessage(_message(position, text, state, **extra))


def _conversation(key: str = "c", title: str = "Chat", at: float = 1.0) -> Conversation:
    return Conversation(key, title, "/m.gguf", "Model", "", at, at)


def _on_disk(data_dir: Path) -> list[tuple[str, str]]:
    """What another connection reads from the file: committed, and nothing else."""
    connection = sqlite3.connect(data_dir / DB_NAME)
    try:
        rows = connection.execute("SELECT key, content FROM messages ORDER BY position")
        return [(str(key), str(content)) for key, content in rows]
    finally:
        connection.close()


def test_a_commit_runs_on_the_worker_while_the_gui_thread_goes_on_and_reads(
    qtbot: QtBot, data_dir: Path, disk: Disk
) -> None:
    queue = _queue(data_dir, disk)
    disk.hold.clear()
    queue.submit(PutConversation(_conversation()), _put(0, "first"))
    # The GUI thread runs its event loop while the commit waits for the disk.
    qtbot.waitUntil(disk.holding.is_set, timeout=WAIT_MS)
    assert queue.pending == 1
    assert queue.unsaved("c") and not queue.unsaved("other")
    assert _on_disk(data_dir) == []
    # Reads go on beside the writer, and answer what is committed: nothing yet.
    assert queue.messages("c") == [] and queue.conversations() == []
    assert queue.store is not None and queue.store.messages("c") == []  # committed: nothing
    with qtbot.waitSignal(queue.committed, timeout=WAIT_MS) as committed:
        disk.hold.set()
    assert committed.args == [(PutConversation(_conversation()), _put(0, "first"))]
    wait_until_saved(qtbot, queue)
    assert queue.pending == 0 and not queue.unsaved("c")
    assert [m.content for m in queue.messages("c")] == ["first"]
    assert [c.title for c in queue.conversations()] == ["Chat"]
    assert _on_disk(data_dir) == [("m0", "first")]
    assert disk.threads and threading.main_thread() not in disk.threads
    assert queue.close() is None


def test_groups_commit_in_order_one_transaction_each(
    qtbot: QtBot, data_dir: Path, disk: Disk
) -> None:
    queue = _queue(data_dir, disk)
    disk.hold.clear()
    queue.submit(PutConversation(_conversation()), _put(0, "a"))
    qtbot.waitUntil(disk.holding.is_set, timeout=WAIT_MS)
    # Queued behind the one being committed.
    queue.submit(_put(1, "b"))
    queue.submit(_put(2, "rep", "streaming"), durable=False)
    queue.submit(_put(2, "reply", "streaming"), durable=False)  # folds into the one before
    queue.submit(DeleteMessage("c", "m1"), _put(3, "d"))
    assert queue.pending == 4
    disk.hold.set()
    wait_until_saved(qtbot, queue)
    assert disk.transactions == [["c", "m0"], ["m1"], ["m2"], ["m3"]]
    assert _on_disk(data_dir) == [("m0", "a"), ("m2", "reply"), ("m3", "d")]
    assert threading.main_thread() not in disk.threads
    queue.close()


def test_a_checkpoint_being_committed_is_not_replaced_by_a_newer_one(
    qtbot: QtBot, data_dir: Path, disk: Disk
) -> None:
    queue = _queue(data_dir, disk)
    queue.submit(PutConversation(_conversation()))
    wait_until_saved(qtbot, queue)
    disk.forget()
    disk.hold.clear()
    queue.submit(_put(1, "Hel", "streaming"), durable=False)
    qtbot.waitUntil(disk.holding.is_set, timeout=WAIT_MS)
    queue.submit(_put(1, "Hello", "streaming"), durable=False)
    queue.submit(_put(1, "Hello there", "streaming"), durable=False)
    assert queue.pending == 2  # the one on its way, and the newest
    disk.hold.set()
    wait_until_saved(qtbot, queue)
    assert [m.content for m in queue.messages("c")] == ["Hello there"]
    assert disk.transactions == [["m1"], ["m1"]]
    assert _on_disk(data_dir) == [("m1", "Hello there")]
    queue.close()


def test_when_saved_calls_back_once_the_writes_are_on_disk(
    qtbot: QtBot, data_dir: Path, disk: Disk
) -> None:
    queue = _queue(data_dir, disk)
    called: list[list[tuple[str, str]]] = []
    queue.when_saved(lambda: called.append(_on_disk(data_dir)))
    assert called == [[]]  # nothing waited: at once
    disk.hold.clear()
    queue.submit(PutConversation(_conversation()), _put(0, "kept"))
    queue.when_saved(lambda: called.append(_on_disk(data_dir)))
    qtbot.waitUntil(disk.holding.is_set, timeout=WAIT_MS)
    assert len(called) == 1  # still on its way
    disk.hold.set()
    qtbot.waitUntil(lambda: len(called) == 2, timeout=WAIT_MS)
    assert called[1] == [("m0", "kept")]
    queue.close()


def test_a_refused_write_is_retried_on_the_worker_and_read_meanwhile(
    qtbot: QtBot, data_dir: Path, disk: Disk, tmp_path: Path
) -> None:
    queue = SaveQueue(
        lambda: open_store(data_dir, disk.connection_class()), [tmp_path / "rescue"], retry_ms=30
    )
    queue.open()
    queue.submit(PutConversation(_conversation()))
    wait_until_saved(qtbot, queue)
    disk.forget()
    store = queue.store
    assert store is not None
    pages = store._connection.execute("PRAGMA page_count").fetchone()[0]
    store._connection.execute(f"PRAGMA max_page_count = {pages}")
    with qtbot.waitSignal(queue.save_failed, timeout=WAIT_MS) as failed:
        queue.submit(_put(0, "x" * 50_000))
    (rescue,) = (tmp_path / "rescue").iterdir()
    assert str(rescue) in failed.args[0]
    refused: list[bool] = []
    queue.when_saved(lambda: refused.append(True))
    assert refused == [True]  # refused: the caller need not wait for the retry
    queue.submit(_put(1, "after"))
    # Reads meanwhile answer what is committed; the refused writes wait for the retry.
    assert queue.messages("c") == [] and queue.unsaved("c")
    with qtbot.waitSignal(queue.saved_again, timeout=WAIT_MS):
        store._connection.execute("PRAGMA max_page_count = 1073741823")
    wait_until_saved(qtbot, queue)
    assert [m.key for m in queue.messages("c")] == ["m0", "m1"]
    assert [key for key, _text in _on_disk(data_dir)] == ["m0", "m1"]
    assert not rescue.exists()
    assert disk.threads and threading.main_thread() not in disk.threads
    assert queue.close() is None


def test_close_waits_for_the_worker_and_saves_everything(
    qtbot: QtBot, data_dir: Path, disk: Disk
) -> None:
    queue = _queue(data_dir, disk)
    disk.hold.clear()
    queue.submit(PutConversation(_conversation()), _put(0, "a"))
    qtbot.waitUntil(disk.holding.is_set, timeout=WAIT_MS)
    queue.submit(_put(1, "b"))
    queue.submit(_put(2, "c"))
    # Let go from elsewhere: close, on the GUI thread, is waiting by then or soon.
    threading.Thread(target=disk.hold.set).start()
    assert queue.close() is None
    assert queue.pending == 0 and queue.store is None
    assert _on_disk(data_dir) == [("m0", "a"), ("m1", "b"), ("m2", "c")]
    assert len(disk.transactions) == 3
    assert threading.main_thread() not in disk.threads


def test_the_list_shows_a_change_once_it_is_committed_and_nothing_waits_for_it(
    qtbot: QtBot, data_dir: Path, disk: Disk
) -> None:
    """The window refreshes its list when a commit says it may
    (`committed`), not by reading back what is still on its way: a read made
    while a commit waits for the disk answers what is on disk, at once."""
    queue = _queue(data_dir, disk)
    history = History(queue)
    queue.submit(PutConversation(_conversation("old", "Old one", at=5.0)))
    wait_until_saved(qtbot, queue)
    disk.hold.clear()
    greeting = _put(0, "hi", key="n0", conversation_key="new")
    queue.submit(PutConversation(_conversation("new", "New one", at=6.0)), greeting)
    qtbot.waitUntil(disk.holding.is_set, timeout=WAIT_MS)
    assert [c.title for c in history.conversations()] == ["Old one"]
    disk.hold.set()
    wait_until_saved(qtbot, queue)
    assert [c.title for c in history.conversations()] == ["New one", "Old one"]
    disk.hold.clear()
    history.rename("old", "Renamed")
    history.trash("new")
    # Both shown at once, before they are on disk: the history holds the rename.
    assert [c.title for c in history.conversations()] == ["Renamed"]
    disk.hold.set()
    wait_until_saved(qtbot, queue)
    assert [c.title for c in history.conversations()] == ["Renamed"]
    assert not history.open("new")  # in the trash
    history.restore("new")
    wait_until_saved(qtbot, queue)
    assert history.open("new")
    assert [m.content for m in history.messages] == ["hi"]
    assert [c.title for c in history.conversations("hi")] == ["New one"]
    assert [c.title for c in history.conversations()] == ["New one", "Renamed"]
    queue.close()


def test_a_conversation_left_before_its_writes_are_on_disk_opens_as_written(
    qtbot: QtBot, data_dir: Path, disk: Disk
) -> None:
    """The store answers what is committed, so History keeps a conversation it
    left (or renamed) with writes still on their way, and opens it from there."""
    queue = _queue(data_dir, disk)
    history = History(queue)
    model = model_info()
    history.add_user("first", model, "")
    first = history.conversation
    assert first is not None
    wait_until_saved(qtbot, queue)
    disk.hold.clear()
    history.add_user("second", model, "")  # waits for the disk
    history.new()
    history.add_user("elsewhere", model, "")
    history.rename(first.key, "Renamed")
    assert queue.store is not None and len(queue.store.messages(first.key)) == 1
    # Listed as held here: the one the store has nothing of yet first.
    assert [c.title for c in history.conversations()] == ["elsewhere", "Renamed"]
    assert history.open(first.key)
    assert history.conversation is not None and history.conversation.title == "Renamed"
    assert [m.content for m in history.messages] == ["first", "second"]
    history.new()
    disk.hold.set()
    wait_until_saved(qtbot, queue)
    assert history._left == {}  # on disk: read from the store again
    assert history.open(first.key)
    assert history.conversation is not None and history.conversation.title == "Renamed"
    assert [m.content for m in history.messages] == ["first", "second"]
    queue.close()
