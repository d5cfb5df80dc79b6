"""The conversation store: every conversation and message in one SQLite file.

This is the only module that speaks SQL. The file lives in the data folder as
`kvchat.sqlite3`, in WAL mode with full sync, so a committed message survives
the app being killed at any moment (and the machine losing power).

Writes are plain values (`PutConversation`, `PutMessage`, ...) applied in
groups, one transaction a group. Keys are made by the app, not by SQLite, so
every write is idempotent: a write that failed (disk full, a read-only
folder) is simply applied again later, and a newer write of the same message
replaces an older one that never reached the disk.

Commits are synced to the disk (a message the person saw as sent survives a
power cut too), except the checkpoints of a reply still being generated:
those only need to survive the app dying, which WAL mode gives without
waiting for the disk. Checkpointing the WAL into the database is left to
moments when nothing streams (`checkpoint`), never to a commit mid-reply.

A file that is corrupt, or that a newer kvchat wrote, is never written to:
it is moved aside (with its WAL) and a fresh one is started, and the caller
gets a notice saying where the old one went.

An open store has two connections: one that writes and one that reads. WAL
lets a reader go on beside a writer, so the window's reads never wait for a
commit that is waiting for the disk (app.presenters.saving commits on a
worker thread). A read answers what is committed, and only that: this module
is the one place that knows what a write does to the data.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

from kvchat.engine.protocol import Role

DB_NAME = "kvchat.sqlite3"

MessageState = Literal["done", "streaming", "interrupted"]

# Each entry moves the schema up one version; PRAGMA user_version records how
# many have run. Append, never edit: a database in the field has run the old ones.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE conversations (
            key TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            model_path TEXT NOT NULL,
            model_name TEXT NOT NULL,
            system_prompt TEXT NOT NULL,
            view_start INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            deleted_at REAL
        )""",
        "CREATE INDEX conversations_by_activity ON conversations (updated_at)",
        """CREATE TABLE messages (
            key TEXT PRIMARY KEY,
            conversation_key TEXT NOT NULL
                REFERENCES conversations (key) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('done', 'streaming', 'interrupted')),
            stats TEXT,
            tokens INTEGER,
            tokens_model TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE UNIQUE INDEX messages_in_order ON messages (conversation_key, position)",
    ),
    # Kept alternatives: a conversation becomes a tree. Each message names the
    # one it follows (`parent_key`, NULL for a first message), `position` is
    # its depth, and the conversation remembers the branch on screen by its
    # last message (`leaf_key`). A history from version 1 is one branch: each
    # message follows the one before it. Replies keep their thinking apart,
    # and a conversation its own sampling values (JSON, only those changed).
    (
        "ALTER TABLE messages ADD COLUMN parent_key TEXT",
        "ALTER TABLE messages ADD COLUMN thinking TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE conversations ADD COLUMN leaf_key TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE conversations ADD COLUMN sampling TEXT NOT NULL DEFAULT '{}'",
        """UPDATE messages SET parent_key = (
            SELECT p.key FROM messages p
            WHERE p.conversation_key = messages.conversation_key
                AND p.position < messages.position
            ORDER BY p.position DESC LIMIT 1)""",
        """UPDATE conversations SET leaf_key = coalesce((
            SELECT m.key FROM messages m WHERE m.conversation_key = conversations.key
            ORDER BY m.position DESC LIMIT 1), '')""",
        "DROP INDEX messages_in_order",
        "CREATE INDEX messages_by_parent ON messages (conversation_key, parent_key)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# Errors that say the disk or the folder refused a write, not that the file is bad.
_WRITE_REFUSED = {
    "SQLITE_FULL": "the disk is full",
    "SQLITE_READONLY": "the data folder is read-only",
    "SQLITE_CANTOPEN": "the data folder cannot be written",
    "SQLITE_PERM": "the data folder cannot be written",
    "SQLITE_IOERR": "the disk reported an error",
}


class Error(Exception):
    """Base class of this module's errors; messages are meant for a person."""


class StoreUnavailableError(Error):
    """The database could not be opened for writing (read-only folder, full disk...)."""


class SaveError(Error):
    """A write did not reach the disk; applying the same writes again may succeed."""


def storable(text: str) -> str:
    """`text` as SQLite can hold it: each lone surrogate becomes U+FFFD.

    A Python string may hold surrogates that UTF-8 cannot encode: a file name
    decoded with surrogateescape, a JSON "\\ud800" escape, a caller's slip.
    Qt drops them on its way in, so a typed message never has one, but a
    write must never fail on one either: it would fail again at every retry.
    A pair written as two code points becomes the character it stands for.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _storable(values: Sequence[object]) -> tuple[object, ...]:
    return tuple(storable(v) if isinstance(v, str) else v for v in values)


def new_key() -> str:
    """A key for a conversation or a message, made before anything is written."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Conversation:
    """One conversation, with the model and system prompt it used.

    `view_start` is the position of the first message the model still sees;
    the ones before it left the context (the system prompt always stays).
    `leaf_key` is the last message of the branch on screen ("" before the
    first). `sampling` holds the sampling values this conversation changed
    from the defaults, as JSON (app.settings.clean_overrides reads it).
    """

    key: str
    title: str
    model_path: str
    model_name: str
    system_prompt: str
    created_at: float
    updated_at: float
    view_start: int = 0
    leaf_key: str = ""
    sampling: str = "{}"


@dataclass(frozen=True)
class Message:
    """One message. A reply being generated is "streaming"; one that was
    stopped, or whose app or engine died, is "interrupted".

    `parent_key` is the message this one follows (None for a first message);
    messages with the same parent are versions of one another, and
    `position` is the depth in that tree. `stats` is the reply's TurnStats as
    JSON. `tokens` is what the message costs in the context, as measured with
    the model at `tokens_model`. `thinking` is a reasoning model's thinking
    before the reply's `content`.
    """

    key: str
    conversation_key: str
    position: int
    role: Role
    content: str
    state: MessageState
    created_at: float
    updated_at: float
    stats: str | None = None
    tokens: int | None = None
    tokens_model: str = ""
    parent_key: str | None = None
    thinking: str = ""


@dataclass(frozen=True)
class PutConversation:
    conversation: Conversation


@dataclass(frozen=True)
class PutMessage:
    """Writes the message as it is now; its conversation counts as active then."""

    message: Message


@dataclass(frozen=True)
class DeleteMessage:
    """Removes a message and every message that follows it, on every branch."""

    conversation_key: str
    key: str


@dataclass(frozen=True)
class TrashConversation:
    """Hides a conversation; it is purged at the next start unless restored."""

    key: str


@dataclass(frozen=True)
class RestoreConversation:
    key: str


Write = PutConversation | PutMessage | DeleteMessage | TrashConversation | RestoreConversation


# The dataclasses' fields in order are the columns read and written.
CONVERSATION_FIELDS = tuple(f.name for f in fields(Conversation))
MESSAGE_FIELDS = tuple(f.name for f in fields(Message))
_CONVERSATION_COLUMNS = ", ".join(CONVERSATION_FIELDS)
_MESSAGE_COLUMNS = ", ".join(MESSAGE_FIELDS)


def conversation_of(write: Write) -> str:
    """The key of the conversation a write changes."""
    if isinstance(write, PutConversation):
        return write.conversation.key
    if isinstance(write, PutMessage):
        return write.message.conversation_key
    if isinstance(write, DeleteMessage):
        return write.conversation_key
    return write.key


def _describe(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", "")
    for prefix, words in _WRITE_REFUSED.items():
        if name.startswith(prefix):
            return words
    return str(exc)


def _connect(
    path: Path, connection_class: type[sqlite3.Connection] = sqlite3.Connection
) -> sqlite3.Connection:
    """The connection that writes. Made on one thread and used on another
    (the save worker's), never by two at once."""
    connection = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, factory=connection_class
    )
    connection.execute("PRAGMA busy_timeout = 2000")
    return connection


def _connect_reader(path: Path) -> sqlite3.Connection:
    """The connection that reads, beside the writer's (WAL mode); it refuses to write.

    It may be made on the save worker (a store opened at a retry) and used
    on the GUI thread, never by two threads at once.
    """
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA busy_timeout = 2000")
    connection.execute("PRAGMA query_only = ON")
    return connection


def _set_aside(path: Path, reason: str) -> Path:
    """Moves the database and its WAL files to a name no one writes to."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.{reason}-{stamp}")
    suffix = 1
    while target.exists():
        suffix += 1
        target = path.with_name(f"{path.name}.{reason}-{stamp}-{suffix}")
    for extra in ("-wal", "-shm"):
        side = path.with_name(path.name + extra)
        if side.exists():
            side.rename(target.with_name(target.name + extra))
    path.rename(target)
    return target


def _expected_tables() -> dict[str, list[tuple[str, str]]]:
    """kvchat's tables at this version: each one's columns, names and types."""
    scratch = sqlite3.connect(":memory:")
    try:
        for steps in MIGRATIONS:
            for statement in steps:
                scratch.execute(statement)
        return _tables(scratch)
    finally:
        scratch.close()


def _tables(connection: sqlite3.Connection) -> dict[str, list[tuple[str, str]]]:
    names = [
        row[0]
        for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    return {
        name: [(row[1], row[2]) for row in connection.execute(f"PRAGMA table_info('{name}')")]
        for name in names
    }


def _check(path: Path) -> str:
    """Why an existing database must not be used as it is.

    "corrupt", "newer" (from a newer kvchat), "foreign" (its tables are not
    kvchat's), "adopt" (kvchat's tables without kvchat's version mark, as a
    `.dump` restored into a new file has), or "" if it is fine.

    Read-only, so that a bad file and its WAL stay exactly as they were (a
    writable connection to a file that is not a database deletes its WAL).
    """
    connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        rows = connection.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            return "corrupt"
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            return "newer"
        tables = _tables(connection)
        expected = _expected_tables()
        if version == SCHEMA_VERSION:
            return "" if all(tables.get(n) == c for n, c in expected.items()) else "foreign"
        if version == 0 and tables:
            return "adopt" if tables == expected else "foreign"
        return ""
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
            return "corrupt"
        raise
    finally:
        connection.close()


def migrate(
    connection: sqlite3.Connection, migrations: Sequence[Sequence[str]] = MIGRATIONS
) -> int:
    """Runs the migrations the database has not run yet, in one transaction.

    Returns the version the database had before.
    """
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    if version >= len(migrations):
        return int(version)
    connection.execute("BEGIN IMMEDIATE")
    try:
        for steps in migrations[version:]:
            for statement in steps:
                connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {len(migrations)}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return int(version)


class ConversationStore:
    """The open database. Use `open_store`.

    Reading (`conversations`, `conversation`, `messages`, `integrity`) is for
    one thread, writing (`apply`, `checkpoint`) for one thread, which may be
    another: each has a connection of its own. `close` once neither runs.
    A read sees what is committed: a write still on its way is not in it.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: Path,
        read_only_reason: str = "",
        reader: sqlite3.Connection | None = None,
    ) -> None:
        """`reader`: the connection reads go through (None: `connection`,
        for a store that cannot be written)."""
        self._connection = connection
        self._reader = reader if reader is not None else connection
        self.path = path
        self._durable = True
        # Set for a view of a database that cannot be written: why, for a person.
        self.read_only_reason = read_only_reason

    def close(self) -> None:
        if self._reader is not self._connection:
            self._reader.close()  # first: the writer's close folds the WAL in
        self._connection.close()

    # Reading: what is committed, and nothing else.

    def conversations(self, search: str = "") -> list[Conversation]:
        """The conversations, newest activity first; `search` matches titles and text."""
        sql = f"SELECT {_CONVERSATION_COLUMNS} FROM conversations c WHERE deleted_at IS NULL"
        arguments: list[str] = []
        if search.strip():
            pattern = "%" + storable(search.strip()).replace("\\", "\\\\").replace("%", "\\%")
            pattern = pattern.replace("_", "\\_") + "%"
            sql += (
                " AND (title LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM messages m "
                "WHERE m.conversation_key = c.key AND m.content LIKE ? ESCAPE '\\'))"
            )
            arguments = [pattern, pattern]
        sql += " ORDER BY updated_at DESC"
        return [Conversation(*row) for row in self._reader.execute(sql, arguments)]

    def conversation(self, key: str, in_trash: bool = False) -> Conversation | None:
        """The conversation with this key; one in the trash (until the next
        start purges it) only if `in_trash`."""
        row = self._reader.execute(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations "
            f"WHERE key = ?{'' if in_trash else ' AND deleted_at IS NULL'}",
            (key,),
        ).fetchone()
        return Conversation(*row) if row else None

    def messages(self, conversation_key: str) -> list[Message]:
        """Every message of the conversation, on every branch: by depth, then
        oldest first (so versions come in the order they were made)."""
        rows = self._reader.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages "
            "WHERE conversation_key = ? ORDER BY position, created_at, rowid",
            (conversation_key,),
        )
        return [Message(*row) for row in rows]

    def integrity(self) -> str:
        """SQLite's full integrity check: "ok", or what is wrong."""
        rows = self._reader.execute("PRAGMA integrity_check").fetchall()
        return "; ".join(str(row[0]) for row in rows)

    # Writing.

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise SaveError(_describe(exc)) from exc
        try:
            yield self._connection
            self._connection.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if self._connection.in_transaction:
                self._connection.execute("ROLLBACK")
            raise SaveError(_describe(exc)) from exc
        except BaseException:
            if self._connection.in_transaction:
                self._connection.execute("ROLLBACK")
            raise

    def apply(self, writes: Sequence[Write], durable: bool = True) -> None:
        """Applies the writes in one transaction: all of them reach the disk, or none.

        `durable=False` commits without waiting for the disk: the writes
        survive the app being killed, not a power cut.

        Raises:
            SaveError: the disk or the folder refused; nothing was written.
        """
        if self.read_only_reason:
            raise SaveError("the data folder cannot be written")
        if durable != self._durable:
            self._connection.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._durable = durable
        with self._transaction() as db:
            for write in writes:
                self._apply_one(db, write)

    def _apply_one(self, db: sqlite3.Connection, write: Write) -> None:
        if isinstance(write, PutMessage):
            m = write.message
            db.execute(
                f"INSERT INTO messages ({_MESSAGE_COLUMNS}) "
                f"VALUES ({', '.join('?' * len(MESSAGE_FIELDS))}) "
                "ON CONFLICT (key) DO UPDATE SET content = excluded.content, "
                "state = excluded.state, updated_at = excluded.updated_at, "
                "stats = excluded.stats, tokens = excluded.tokens, "
                "tokens_model = excluded.tokens_model, thinking = excluded.thinking",
                _storable([getattr(m, name) for name in MESSAGE_FIELDS]),
            )
            db.execute(
                "UPDATE conversations SET updated_at = max(updated_at, ?) WHERE key = ?",
                (m.updated_at, m.conversation_key),
            )
        elif isinstance(write, PutConversation):
            c = write.conversation
            db.execute(
                f"INSERT INTO conversations ({_CONVERSATION_COLUMNS}) "
                f"VALUES ({', '.join('?' * len(CONVERSATION_FIELDS))}) "
                "ON CONFLICT (key) DO UPDATE SET title = excluded.title, "
                "model_path = excluded.model_path, model_name = excluded.model_name, "
                "system_prompt = excluded.system_prompt, "
                "updated_at = max(updated_at, excluded.updated_at), "
                "view_start = excluded.view_start, leaf_key = excluded.leaf_key, "
                "sampling = excluded.sampling",
                _storable([getattr(c, name) for name in CONVERSATION_FIELDS]),
            )
        elif isinstance(write, DeleteMessage):
            db.execute(
                "WITH RECURSIVE gone (key) AS (SELECT ? UNION ALL "
                "SELECT m.key FROM messages m JOIN gone ON m.parent_key = gone.key "
                "WHERE m.conversation_key = ?) "
                "DELETE FROM messages WHERE key IN gone",
                (write.key, write.conversation_key),
            )
        elif isinstance(write, TrashConversation):
            db.execute(
                "UPDATE conversations SET deleted_at = ? WHERE key = ?", (time.time(), write.key)
            )
        else:
            db.execute("UPDATE conversations SET deleted_at = NULL WHERE key = ?", (write.key,))

    def checkpoint(self) -> None:
        """Moves what the WAL holds into the database file, where it can.

        A checkpoint that cannot run now loses nothing (the WAL keeps it).
        """
        if self.read_only_reason:
            return
        try:
            self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.OperationalError:
            return

    def _recover(self) -> int:
        """After a start: replies left streaming by a dead app become interrupted,
        and conversations trashed and not restored are purged. Returns the replies."""
        with self._transaction() as db:
            marked = db.execute(
                "UPDATE messages SET state = 'interrupted' WHERE state = 'streaming'"
            ).rowcount
            db.execute("DELETE FROM conversations WHERE deleted_at IS NOT NULL")
        return int(marked)


@dataclass(frozen=True)
class Opened:
    """An open store, and what a person should be told about opening it."""

    store: ConversationStore
    notice: str
    interrupted: int


def open_store(
    data_dir: Path, connection_class: type[sqlite3.Connection] = sqlite3.Connection
) -> Opened:
    """Opens (or creates) the database in `data_dir`, migrated to this version.

    A corrupt database, or one from a newer kvchat, is moved aside and a fresh
    one started; the notice says so. When the folder or the disk refuses
    writes, an existing database is opened read-only, so the history can
    still be shown: its store's `read_only_reason` says why it cannot save.

    `connection_class` is the class of the connection that writes: tests and
    benchmarks watch its commits, or slow them down as a slow disk would.

    Raises:
        StoreUnavailableError: the database cannot be opened even to read,
            or the bad database could not be moved aside.
    """
    try:
        return _open_writable(data_dir, connection_class)
    except StoreUnavailableError as exc:
        view = _read_only_view(data_dir / DB_NAME, str(exc))
        if view is None:
            raise
        return Opened(view, "", 0)


def _read_only_view(path: Path, reason: str) -> ConversationStore | None:
    """The database as it is on disk, for reading only; None if it cannot be read."""
    if not path.is_file():
        return None
    # Plain read-only first (it sees what the WAL holds); immutable where even
    # that needs a file the folder will not take.
    for options in ("mode=ro", "mode=ro&immutable=1"):
        try:
            # Made on the save worker when a retry opens it, read on the GUI thread.
            connection = sqlite3.connect(
                f"{path.as_uri()}?{options}",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error:
            continue
        try:
            (version,) = connection.execute("PRAGMA user_version").fetchone()
            if version == SCHEMA_VERSION:
                connection.execute("SELECT key FROM conversations LIMIT 1").fetchall()
                connection.execute("SELECT key FROM messages LIMIT 1").fetchall()
                return ConversationStore(
                    connection,
                    path,
                    f"{reason} Your conversations are shown as they were; new messages "
                    "stay on screen, and kvchat saves them once it can.",
                )
        except sqlite3.Error:
            pass
        connection.close()
    return None


# Why a database is moved aside: the name it is kept under, and the words for a person.
_SET_ASIDE = {
    "corrupt": ("corrupt", "was damaged"),
    "newer": ("from-newer-kvchat", "was written by a newer version of kvchat"),
    "foreign": ("not-kvchat", "did not hold kvchat's tables"),
}


def _open_writable(data_dir: Path, connection_class: type[sqlite3.Connection]) -> Opened:
    path = data_dir / DB_NAME
    notice = ""
    try:
        problem = _check(path) if path.exists() else ""
        if problem in _SET_ASIDE:
            suffix, what = _SET_ASIDE[problem]
            kept = _set_aside(path, suffix)
            notice = (
                f"The conversation history {what}, so it was kept as {kept.name} "
                "and kvchat started a new one."
            )
        connection = _connect(path, connection_class)
        if problem == "adopt":
            # kvchat's own tables, without the version mark: use them as they are.
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            notice = (
                "The conversation history had lost kvchat's version mark (as a copy made "
                "with .dump does); its tables are kvchat's, so kvchat uses them."
            )
    except OSError as exc:
        raise StoreUnavailableError(
            f"Conversations cannot be saved: {exc.strerror or exc} ({data_dir})."
        ) from exc
    except sqlite3.Error as exc:
        raise StoreUnavailableError(
            f"Conversations cannot be saved: {_describe(exc)} ({data_dir})."
        ) from exc
    reader: sqlite3.Connection | None = None
    try:
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreUnavailableError(
                f"Conversations cannot be saved: the data folder does not allow a "
                f"write-ahead log ({data_dir})."
            )
        connection.execute("PRAGMA synchronous = FULL")
        # Checkpoints run between replies (ConversationStore.checkpoint), not
        # inside whichever commit happens to cross the threshold.
        connection.execute("PRAGMA wal_autocheckpoint = 0")
        connection.execute("PRAGMA foreign_keys = ON")
        migrate(connection)
        reader = _connect_reader(path)
        store = ConversationStore(connection, path, reader=reader)
        interrupted = store._recover()
    except (sqlite3.Error, SaveError) as exc:
        if reader is not None:
            reader.close()
        connection.close()
        reason = _describe(exc) if isinstance(exc, sqlite3.Error) else str(exc)
        raise StoreUnavailableError(
            f"Conversations cannot be saved: {reason} ({data_dir})."
        ) from exc
    except StoreUnavailableError:
        connection.close()
        raise
    return Opened(store, notice, interrupted)
