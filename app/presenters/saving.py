"""Saving that survives a full disk or a read-only folder, and never makes the
window wait for the disk.

Writes are committed, in order, on one worker thread (a commit waits for the
disk to sync it); what comes of them is handled back on the GUI thread. What
the disk refused is kept, in order, and written again every few seconds.

The window never waits on a commit or a retry and never drops text: the
writes are the store's idempotent values, so applying one twice is harmless,
and a newer checkpoint of a reply replaces an older one still waiting. Reads
go through a connection of their own and answer what is committed; what the
window wrote and is not on disk yet it holds itself (app.presenters.history),
and `committed` says when a read would show it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QTimer, Signal

from kvchat.app.core.serial_worker import SerialWorker
from kvchat.app.core.store import (
    Conversation,
    ConversationStore,
    Message,
    Opened,
    PutMessage,
    SaveError,
    StoreUnavailableError,
    Write,
    conversation_of,
)

RETRY_MS = 3000


class _Group:
    """Writes committed in one transaction. `sent` while the worker has them:
    from then on a newer checkpoint no longer folds into them."""

    __slots__ = ("durable", "sent", "writes")

    def __init__(self, writes: tuple[Write, ...], durable: bool) -> None:
        self.writes = writes
        self.durable = durable
        self.sent = False


@dataclasses.dataclass(eq=False)
class _Batch:
    """One job for the worker, and what came of it (written by the worker
    until `done` is set, read on the GUI thread after that).

    In order: open the store (`reopen`, with `opener`; else write to
    `store`), commit each group in a transaction of its own, stopping at the
    first that fails, then checkpoint the WAL if asked and everything was
    saved. `queue` is the SaveQueue it reports to, held weakly: the worker
    never holds a queue, so none is ever deleted on the worker's thread.
    """

    queue: weakref.ref[SaveQueue]
    opener: Callable[[], Opened]
    store: ConversationStore | None
    groups: tuple[tuple[tuple[Write, ...], bool], ...]
    reopen: bool
    checkpoint: bool
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    opened: Opened | None = None
    saved: int = 0  # groups committed
    failure: str = ""  # why the store did not open, or why a group was not saved


def _run(batch: _Batch) -> None:
    """On the worker: does what the batch asks, then hands it to the GUI thread."""
    try:
        store = batch.store
        if batch.reopen:
            try:
                batch.opened = batch.opener()
            except StoreUnavailableError as exc:
                batch.failure = str(exc)
                return
            store = batch.opened.store
            if store.read_only_reason:
                return
        assert store is not None
        for writes, durable in batch.groups:
            try:
                store.apply(writes, durable)
            except SaveError as exc:
                batch.failure = str(exc)
                return
            batch.saved += 1
        if batch.checkpoint:
            store.checkpoint()
    except Exception as exc:
        # Not the disk refusing: a fault, reported as a save that failed
        # (kept, retried, rescued), and raised for the worker to print.
        batch.failure = f"the database reported an error ({exc})"
        raise
    finally:
        _relay().ended.emit(batch)
        batch.done.set()


class _Relay(QObject):
    """Carries a batch that ended from the worker to the GUI thread.

    One for every queue, made on the GUI thread and never deleted, so the
    worker emits through an object that outlives it.

    Signals:
        ended(object): _Batch.
    """

    ended = Signal(object)


@functools.cache
def _relay() -> _Relay:
    relay = _Relay()
    relay.ended.connect(_deliver, Qt.ConnectionType.QueuedConnection)
    return relay


def _deliver(batch: _Batch) -> None:
    """On the GUI thread: the batch to its queue, if the queue is still there."""
    queue = batch.queue()
    if queue is not None:
        queue._on_batch_done(batch)


class SaveQueue(QObject):
    """Applies groups of writes to the store, one transaction a group, in order,
    on a worker thread. Everything else, its signals included, is on the GUI thread.

    Signals:
        committed(object): tuple[Write, ...], writes that reached the disk, in
            order: a read made from now on shows them.
        save_failed(str): writes did not reach the disk; the text says why, for a person.
        saved_again(): everything that had failed is on disk now.
        store_opened(object): Opened, when a store that could not be opened now is.
    """

    committed = Signal(object)
    save_failed = Signal(str)
    saved_again = Signal()
    store_opened = Signal(object)

    def __init__(
        self,
        opener: Callable[[], Opened],
        rescue_folders: Sequence[Path] = (),
        retry_ms: int | None = None,
        parent: QObject | None = None,
    ) -> None:
        """`opener` opens the store: on the calling thread for `open`, on the
        worker when a retry opens it (it is to hold no Qt object, which the
        worker would then hold too)."""
        super().__init__(parent)
        self._opener = opener
        self._rescue = RescueFile(rescue_folders)
        # Every group not known to be on disk, in order: those the worker has
        # (`sent`) come first.
        self._pending: list[_Group] = []
        self._in_flight: _Batch | None = None
        self._checkpoint_wanted = False
        self._waiting: list[tuple[_Group, Callable[[], None]]] = []
        self._failing = False
        self._worker = SerialWorker("kvchat-save")
        self.store: ConversationStore | None = None
        self.problem = ""
        self._timer = QTimer(self)
        # Read here, not as the default's value, which is fixed when the module loads.
        self._timer.setInterval(RETRY_MS if retry_ms is None else retry_ms)
        self._timer.timeout.connect(self.retry)
        _relay()  # made here, on the GUI thread, before any worker needs it

    def open(self) -> Opened | None:
        """Opens the store, on this thread (it is for the start, before the
        window shows); on failure remembers why and retries later.

        A store that can only be read (a read-only folder) is kept for
        reading, and counts as a failure to save.
        """
        self._settle()
        try:
            opened = self._opener()
        except StoreUnavailableError as exc:
            self._fail(str(exc))
            return None
        self._install(opened)
        return opened

    @property
    def pending(self) -> int:
        """Groups of writes not on disk yet (the one being written included)."""
        return len(self._pending)

    def unsaved(self, conversation_key: str) -> bool:
        """Whether writes of this conversation are not on disk yet (a read misses them)."""
        return any(
            conversation_of(write) == conversation_key
            for group in self._pending
            for write in group.writes
        )

    # Reading: what is committed (see `committed` for when that changes).

    def conversations(self, search: str = "") -> list[Conversation]:
        """The store's conversations (see ConversationStore.conversations); none without one."""
        store = self.store
        return store.conversations(search) if store is not None else []

    def conversation(self, key: str, in_trash: bool = False) -> Conversation | None:
        store = self.store
        return store.conversation(key, in_trash) if store is not None else None

    def messages(self, conversation_key: str) -> list[Message]:
        store = self.store
        return store.messages(conversation_key) if store is not None else []

    # Writing.

    def submit(self, *writes: Write, durable: bool = True) -> None:
        """Queues the writes as one transaction, after every group queued before.

        `durable=False` is for checkpoints of a reply being generated (see
        ConversationStore.apply). `when_saved` says when they reached the disk.
        """
        group = tuple(writes)
        last = self._pending[-1] if self._pending else None
        if (
            last is not None
            and not last.sent
            and len(last.writes) == len(group) == 1
            and isinstance(last.writes[0], PutMessage)
            and isinstance(group[0], PutMessage)
            and last.writes[0].message.key == group[0].message.key
        ):
            # A newer state of the same message; durable if either asked for it.
            last.writes, last.durable = group, durable or last.durable
        else:
            self._pending.append(_Group(group, durable))
        self._send()

    def when_saved(self, callback: Callable[[], None]) -> None:
        """Calls `callback` (on the GUI thread) once every write submitted so
        far is on disk, or the disk refused it: it then waits for the retry,
        with the rescue file holding a copy. At once when nothing waits.
        """
        if not self._pending or self._failing:
            callback()
        else:
            self._waiting.append((self._pending[-1], callback))

    def checkpoint(self) -> None:
        """Lets the store fold its WAL into the database, after the writes queued."""
        if self.store is not None and not self._failing:
            self._checkpoint_wanted = True
            self._send()

    def retry(self) -> None:
        """Tries again: opens the store if it was not open, then writes what waits.

        On the worker, like every write; the signals tell what came of it.
        """
        if self._in_flight is None:
            self._send(retrying=True)

    def _send(self, retrying: bool = False) -> None:
        """Hands the worker every group not sent yet, unless it has a batch
        already (the next one goes when it ends) or saving is failing (then
        only a retry does)."""
        if self._in_flight is not None:
            return
        reopen = self.store is None or bool(self.store.read_only_reason)
        if not retrying and (self._failing or reopen):
            return
        groups = [group for group in self._pending if not group.sent]
        checkpoint = self._checkpoint_wanted and not retrying
        if not groups and not checkpoint and not retrying:
            return
        self._checkpoint_wanted = False
        for group in groups:
            group.sent = True
        batch = _Batch(
            weakref.ref(self),
            self._opener,
            None if reopen else self.store,
            tuple((group.writes, group.durable) for group in groups),
            reopen,
            checkpoint,
        )
        self._in_flight = batch
        self._worker.submit(functools.partial(_run, batch))

    def _on_batch_done(self, batch: _Batch) -> None:
        """On the GUI thread (see `_deliver`): takes what came of a batch, then
        sends the next."""
        if batch is not self._in_flight:
            return  # taken already, by close or open waiting for it
        self._in_flight = None
        saved = self._pending[: batch.saved]
        del self._pending[: batch.saved]
        for group in self._pending[: len(batch.groups) - batch.saved]:
            group.sent = False  # not saved: sent again, in order, at the next try
        opened = batch.opened
        if batch.reopen and opened is None:
            self._fail(batch.failure)
        elif opened is not None and opened.store.read_only_reason:
            self._install(opened)
        else:
            if opened is not None:
                self._install(opened)
            if batch.failure:
                self._fail(
                    f"Could not save the conversation: {batch.failure}. Everything stays on "
                    "screen, and kvchat keeps trying to save it every few seconds."
                )
            elif self._failing:
                self._failing = False
                self.problem = ""
                self._timer.stop()
                self._rescue.remove()
                self.saved_again.emit()
        if saved:
            self.committed.emit(tuple(write for group in saved for write in group.writes))
        self._answer_waiting()
        if opened is not None and not opened.store.read_only_reason:
            self.store_opened.emit(opened)
        self._send()

    def _install(self, opened: Opened) -> None:
        """Makes the opened store the one written to and read from (no batch runs)."""
        if self.store is not None:
            self.store.close()
        self.store = opened.store
        if opened.store.read_only_reason:
            self._fail(opened.store.read_only_reason)

    def _answer_waiting(self) -> None:
        """Calls back those whose writes are on disk, or refused by it."""
        pending = {id(group) for group in self._pending}
        ready = [
            callback
            for group, callback in self._waiting
            if self._failing or id(group) not in pending
        ]
        self._waiting = [
            (group, callback)
            for group, callback in self._waiting
            if not self._failing and id(group) in pending
        ]
        for callback in ready:
            callback()

    def _fail(self, message: str) -> None:
        rescue = self._rescue.write(self._pending_values()) if self._pending else None
        if rescue is not None:
            message += f" Until then, a copy of what is unsaved is kept in {rescue}."
        first = not self._failing or message != self.problem
        self._failing = True
        self.problem = message
        if not self._timer.isActive():
            self._timer.start()
        if first:
            self.save_failed.emit(message)

    def _pending_values(self) -> list[tuple[tuple[Write, ...], bool]]:
        return [(group.writes, group.durable) for group in self._pending]

    def _settle(self) -> None:
        """Waits for the worker's batch, and whatever follows it, and takes what came of it.

        Only where waiting is the point: at quit (`close`), and at the start.
        """
        while (batch := self._in_flight) is not None:
            batch.done.wait()
            self._on_batch_done(batch)

    def close(self) -> Path | None:
        """Saves what it can and closes the store; waits for the worker to do so.

        Writes that still cannot be saved stay in the rescue file, whose path
        is returned (and printed), so that quitting never drops them silently.
        """
        self._timer.stop()
        self._settle()
        if self._pending:
            self._send(retrying=True)  # once more, failing or not
            self._settle()
        self._timer.stop()
        if self.store is not None:
            self.store.close()
            self.store = None
        if not self._pending:
            self._rescue.remove()
            return None
        rescue = self._rescue.write(self._pending_values())
        where = f"were written to {rescue}" if rescue else "could not be written anywhere"
        print(f"kvchat: {self.problem} Unsaved messages {where}", file=sys.stderr)
        self._pending.clear()
        self._answer_waiting()
        return rescue


class RescueFile:
    """One owner-only JSON file holding the writes the database refused.

    Created exclusively (never through a link someone planted), in the first
    of the folders where that works, and replaced atomically as it changes.
    """

    def __init__(self, folders: Sequence[Path]) -> None:
        self._folders = list(folders)
        self.path: Path | None = None

    def write(self, pending: Sequence[tuple[tuple[Write, ...], bool]]) -> Path | None:
        """Writes the pending groups; returns the file, or None if no folder took it."""
        groups = [
            [{type(w).__name__: dataclasses.asdict(w)} for w in group]
            for group, _durable in pending
        ]
        data = json.dumps(groups, indent=1).encode("utf-8")
        if self.path is not None and self._replace(self.path, data):
            return self.path
        stamp = f"kvchat-unsaved-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
        for folder in self._folders:
            path = folder / stamp
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                _write_new(path, data)
            except OSError:
                continue
            self.path = path
            return path
        return None

    def remove(self) -> None:
        """Everything reached the database: the copy is no longer needed."""
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.path = None

    @staticmethod
    def _replace(path: Path, data: bytes) -> bool:
        fresh = path.with_name(f".{path.name}.{time.monotonic_ns()}")
        try:
            _write_new(fresh, data)
            os.replace(fresh, path)  # replaces a link itself, never its target
        except OSError:
            with contextlib.suppress(OSError):
                fresh.unlink()
            return False
        return True


def _write_new(path: Path, data: bytes) -> None:
    """Creates `path` for the owner alone; fails if anything (a link included) is there."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(path, flags, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
