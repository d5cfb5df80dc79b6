"""The conversation store on real SQLite files."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvchat.app.core.store import (
    DB_NAME,
    MIGRATIONS,
    SCHEMA_VERSION,
    Conversation,
    DeleteMessage,
    Message,
    PutConversation,
    PutMessage,
    RestoreConversation,
    SaveError,
    StoreUnavailableError,
    TrashConversation,
    migrate,
    open_store,
)
from kvchat.app.presenters.instance_lock import AlreadyRunningError, InstanceLock
from tests.read_only import read_only


def _conversation(key: str = "c1", title: str = "First", at: float = 100.0) -> Conversation:
    return Conversation(key, title, "/m/model.gguf", "Model", "Be brief.", at, at)


def _message(position: int, text: str, conversation: str = "c1", **extra: object) -> Message:
    values: dict[str, object] = {
        "key": f"{conversation}-m{position}",
        "conversation_key": conversation,
        "position": position,
        "role": "user" if position % 2 == 0 else "assistant",
        "content": text,
        "state": "done",
        "created_at": 100.0 + position,
        "updated_at": 100.0 + position,
    }
    values.update(extra)
    return Message(**values)  # type: ignore[arg-type]


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


def test_round_trip_in_wal_mode(store_dir: Path) -> None:
    opened = open_store(store_dir)
    store = opened.store
    assert opened.notice == ""
    store.apply([PutConversation(_conversation()), PutMessage(_message(0, "Hi ✓"))])
    reply = _message(1, "Hello", stats='{"generated_tokens": 2}', tokens=6, tokens_model="/m")
    store.apply([PutMessage(reply)])
    store.close()

    connection = sqlite3.connect(store_dir / DB_NAME)
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    connection.close()

    store = open_store(store_dir).store
    (conversation,) = store.conversations()
    assert conversation.title == "First"
    assert conversation.system_prompt == "Be brief."
    assert conversation.updated_at == 101.0  # the last message's activity
    assert store.messages("c1") == [_message(0, "Hi ✓"), reply]
    assert store.integrity() == "ok"
    store.close()


def test_rewriting_a_message_replaces_it(store_dir: Path) -> None:
    store = open_store(store_dir).store
    store.apply([PutConversation(_conversation())])
    for text in ("Hel", "Hello", "Hello, world"):
        store.apply([PutMessage(_message(1, text, state="streaming"))])
    store.apply([PutMessage(_message(1, "Hello, world!", state="done"))])
    (message,) = store.messages("c1")
    assert (message.content, message.state) == ("Hello, world!", "done")
    store.close()


def test_newest_activity_first_and_search(store_dir: Path) -> None:
    store = open_store(store_dir).store
    store.apply([PutConversation(_conversation("a", "Alpha", 1.0))])
    store.apply([PutConversation(_conversation("b", "Beta", 2.0))])
    store.apply([PutConversation(_conversation("c", "Gamma", 3.0))])
    store.apply([PutMessage(_message(0, "talk about 100% pure_gold", "a", updated_at=9.0))])
    assert [c.key for c in store.conversations()] == ["a", "c", "b"]
    assert [c.key for c in store.conversations("GOLD")] == ["a"]
    assert [c.key for c in store.conversations("gam")] == ["c"]
    assert [c.key for c in store.conversations("100%")] == ["a"]
    assert store.conversations("0%x") == []  # % is matched literally
    assert store.conversations("p_re") == []  # _ too
    store.close()


def test_cutting_and_trashing(store_dir: Path) -> None:
    store = open_store(store_dir).store
    store.apply([PutConversation(_conversation())])
    store.apply(
        [
            PutMessage(_message(i, f"m{i}", parent_key=f"c1-m{i - 1}" if i else None))
            for i in range(5)
        ]
    )
    # A message goes with every message that follows it, and nothing else.
    store.apply([DeleteMessage("c1", "c1-m2"), PutMessage(_message(2, "edited", key="new"))])
    assert [m.content for m in store.messages("c1")] == ["m0", "m1", "edited"]
    store.apply([TrashConversation("c1")])
    assert store.conversations() == []
    store.apply([RestoreConversation("c1")])
    assert [c.key for c in store.conversations()] == ["c1"]
    store.apply([TrashConversation("c1")])
    store.close()
    # Trashed and not restored: gone, messages and all, at the next start.
    store = open_store(store_dir).store
    assert store.conversations() == []
    assert store.messages("c1") == []
    store.close()


def test_a_failed_group_writes_nothing(store_dir: Path) -> None:
    store = open_store(store_dir).store
    store.apply([PutConversation(_conversation()), PutMessage(_message(0, "kept"))])
    with pytest.raises(sqlite3.IntegrityError):
        # The second message has a role the table does not take.
        store.apply([PutMessage(_message(1, "one")), PutMessage(_message(2, "x", role="tool"))])
    assert [m.content for m in store.messages("c1")] == ["kept"]
    store.close()


def test_replies_left_streaming_are_interrupted_at_the_next_start(store_dir: Path) -> None:
    store = open_store(store_dir).store
    store.apply([PutConversation(_conversation()), PutMessage(_message(0, "q"))])
    store.apply([PutMessage(_message(1, "half a rep", state="streaming"))])
    store.close()
    opened = open_store(store_dir)
    assert opened.interrupted == 1
    assert [m.state for m in opened.store.messages("c1")] == ["done", "interrupted"]
    opened.store.close()


def test_migrations_run_in_order_once(store_dir: Path) -> None:
    path = store_dir / "old.sqlite3"
    connection = sqlite3.connect(path, isolation_level=None)
    assert migrate(connection, MIGRATIONS) == 0
    connection.execute(
        "INSERT INTO conversations (key, title, model_path, model_name, system_prompt, "
        "created_at, updated_at) VALUES ('c', 't', 'p', 'n', '', 1.0, 1.0)"
    )
    later = (*MIGRATIONS, ("ALTER TABLE conversations ADD COLUMN pinned INTEGER DEFAULT 0",))
    assert migrate(connection, later) == len(MIGRATIONS)
    assert connection.execute("PRAGMA user_version").fetchone() == (len(later),)
    assert connection.execute("SELECT key, pinned FROM conversations").fetchall() == [("c", 0)]
    assert migrate(connection, later) == len(later)  # nothing left to run
    # A migration that fails leaves the database as it was.
    broken = (*later, ("ALTER TABLE conversations ADD COLUMN x INTEGER", "SELECT nonsense"))
    with pytest.raises(sqlite3.OperationalError):
        migrate(connection, broken)
    assert connection.execute("PRAGMA user_version").fetchone() == (len(later),)
    columns = [row[1] for row in connection.execute("PRAGMA table_info(conversations)")]
    assert "x" not in columns
    connection.close()


def _backups(store_dir: Path, reason: str) -> list[Path]:
    return sorted(
        p
        for p in store_dir.iterdir()
        if p.name.startswith(f"{DB_NAME}.{reason}-") and not p.name.endswith(("-wal", "-shm"))
    )


def test_a_corrupt_database_is_kept_aside_and_a_fresh_one_started(store_dir: Path) -> None:
    garbage = b"this is not a database, " * 200
    (store_dir / DB_NAME).write_bytes(garbage)
    (store_dir / f"{DB_NAME}-wal").write_bytes(b"stale wal")
    opened = open_store(store_dir)
    (backup,) = _backups(store_dir, "corrupt")
    assert backup.read_bytes() == garbage  # never overwritten
    assert Path(f"{backup}-wal").read_bytes() == b"stale wal"
    assert opened.notice == (
        f"The conversation history was damaged, so it was kept as {backup.name} "
        "and kvchat started a new one."
    )
    assert opened.store.conversations() == []
    opened.store.apply([PutConversation(_conversation())])
    assert opened.store.integrity() == "ok"
    opened.store.close()


def test_a_damaged_page_is_found(store_dir: Path) -> None:
    store = open_store(store_dir).store
    store.apply([PutConversation(_conversation())])
    store.apply([PutMessage(_message(i, "x" * 3000)) for i in range(40)])
    store.close()
    connection = sqlite3.connect(store_dir / DB_NAME)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    path = store_dir / DB_NAME
    data = bytearray(path.read_bytes())
    page = 4096
    data[3 * page : 3 * page + 200] = b"\xff" * 200  # scribble over a b-tree page
    path.write_bytes(bytes(data))
    opened = open_store(store_dir)
    assert len(_backups(store_dir, "corrupt")) == 1
    assert "was damaged" in opened.notice
    opened.store.close()


def test_a_database_from_a_newer_kvchat_is_kept_aside(store_dir: Path) -> None:
    path = store_dir / DB_NAME
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE future (x)")
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.commit()
    connection.close()
    before = path.read_bytes()
    opened = open_store(store_dir)
    (backup,) = _backups(store_dir, "from-newer-kvchat")
    assert backup.read_bytes() == before
    assert "was written by a newer version of kvchat" in opened.notice
    assert opened.store.conversations() == []
    opened.store.close()


def test_a_copy_made_with_dump_is_adopted(store_dir: Path, tmp_path: Path) -> None:
    """`sqlite3 old.db .dump | sqlite3 new.db` keeps the tables, not user_version."""
    original = tmp_path / "original"
    original.mkdir()
    store = open_store(original).store
    store.apply([PutConversation(_conversation()), PutMessage(_message(0, "kept"))])
    store.close()
    source = sqlite3.connect(original / DB_NAME)
    script = "\n".join(source.iterdump())
    source.close()
    restored = sqlite3.connect(store_dir / DB_NAME)
    restored.executescript(script)
    restored.close()
    opened = open_store(store_dir)
    assert "its tables are kvchat's, so kvchat uses them" in opened.notice
    assert [m.content for m in opened.store.messages("c1")] == ["kept"]
    opened.store.apply([PutMessage(_message(1, "and saved"))])
    opened.store.close()
    assert _backups(store_dir, "not-kvchat") == []


@pytest.mark.parametrize("version", [0, SCHEMA_VERSION])
def test_a_database_without_kvchats_tables_is_kept_aside(store_dir: Path, version: int) -> None:
    path = store_dir / DB_NAME
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE notes (x)")
    connection.execute(f"PRAGMA user_version = {version}")
    connection.commit()
    connection.close()
    before = path.read_bytes()
    opened = open_store(store_dir)
    (backup,) = _backups(store_dir, "not-kvchat")
    assert backup.read_bytes() == before
    assert opened.notice == (
        f"The conversation history did not hold kvchat's tables, so it was kept as "
        f"{backup.name} and kvchat started a new one."
    )
    opened.store.apply([PutConversation(_conversation())])
    assert [c.key for c in opened.store.conversations()] == ["c1"]
    opened.store.close()


def test_a_read_only_folder_is_refused_with_a_reason(store_dir: Path) -> None:
    with read_only(store_dir), pytest.raises(StoreUnavailableError) as refused:
        open_store(store_dir)
    assert str(refused.value).startswith("Conversations cannot be saved: ")
    assert str(store_dir) in str(refused.value)
    assert not list(store_dir.iterdir())  # nothing was written there
    open_store(store_dir).store.close()  # and once it is writable, it opens


def test_a_full_disk_fails_the_write_and_a_retry_succeeds(store_dir: Path) -> None:
    store = open_store(store_dir).store
    store.apply([PutConversation(_conversation())])
    pages = store._connection.execute("PRAGMA page_count").fetchone()[0]
    # SQLite reports SQLITE_FULL, as on a full disk, past this many pages.
    store._connection.execute(f"PRAGMA max_page_count = {pages}")
    big = [PutMessage(_message(i, "y" * 5000)) for i in range(10)]
    with pytest.raises(SaveError, match="the disk is full"):
        store.apply(big)
    assert store.messages("c1") == []
    store._connection.execute("PRAGMA max_page_count = 1073741823")
    store.apply(big)
    assert len(store.messages("c1")) == 10
    store.close()


@pytest.fixture
def lock_holder(store_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the data folder's lock, as a second kvchat would."""
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from kvchat.app.presenters.instance_lock import InstanceLock
        lock = InstanceLock(Path({str(store_dir)!r}))
        lock.acquire()
        print("locked", flush=True)
        sys.stdin.read()
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "locked\n"
    yield process
    process.communicate("")


def test_a_second_instance_is_refused(store_dir: Path, lock_holder: subprocess.Popen[str]) -> None:
    lock = InstanceLock(store_dir)
    with pytest.raises(AlreadyRunningError) as refused:
        lock.acquire()
    assert str(refused.value).startswith(
        f"kvchat is already running with the data folder {store_dir} (process {lock_holder.pid} on "
    )
    assert "--data-dir" in str(refused.value)


def test_a_lock_left_by_a_killed_process_is_taken_over(store_dir: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from kvchat.app.presenters.instance_lock import InstanceLock
        lock = InstanceLock(Path({str(store_dir)!r}))
        lock.acquire()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=False)
    assert (store_dir / "kvchat.lock").exists()
    lock = InstanceLock(store_dir)
    assert lock.acquire()
    assert lock.held
    lock.release()
    assert not (store_dir / "kvchat.lock").exists()
