"""Saving that survives a full disk or a read-only folder: what the disk
refused is kept, in order, and written again every few seconds.

The window never waits on a retry and never drops text: the writes are the
store's idempotent values, so applying one twice is harmless, and a newer
checkpoint of a reply replaces an older one still waiting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal

from kvchat.app.core.store import (
    ConversationStore,
    Opened,
    PutMessage,
    SaveError,
    StoreUnavailableError,
    Write,
)

RETRY_MS = 3000


class SaveQueue(QObject):
    """Applies groups of writes to the store, one transaction a group, in order.

    Signals:
        save_failed(str): writes did not reach the disk; the text says why, for a person.
        saved_again(): everything that had failed is on disk now.
        store_opened(object): Opened, when a store that could not be opened now is.
    """

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
        super().__init__(parent)
        self._opener = opener
        self._rescue = RescueFile(rescue_folders)
        self._pending: list[tuple[tuple[Write, ...], bool]] = []
        self._failing = False
        self.store: ConversationStore | None = None
        self.problem = ""
        self._timer = QTimer(self)
        # Read here, not as the default's value, which is fixed when the module loads.
        self._timer.setInterval(RETRY_MS if retry_ms is None else retry_ms)
        self._timer.timeout.connect(self.retry)

    def open(self) -> Opened | None:
        """Opens the store; on failure remembers why and retries later.

        A store that can only be read (a read-only folder) is kept for
        reading, and counts as a failure to save.
        """
        try:
            opened = self._opener()
        except StoreUnavailableError as exc:
            self._fail(str(exc))
            return None
        if self.store is not None:
            self.store.close()
        self.store = opened.store
        if opened.store.read_only_reason:
            self._fail(opened.store.read_only_reason)
        return opened

    @property
    def pending(self) -> int:
        """Groups of writes not on disk yet."""
        return len(self._pending)

    def submit(self, *writes: Write, durable: bool = True) -> bool:
        """Queues the writes as one transaction and tries to save everything queued.

        `durable=False` is for checkpoints of a reply being generated (see
        ConversationStore.apply). Returns True when all of it is on disk.
        """
        group = tuple(writes)
        last = self._pending[-1][0] if self._pending else None
        if (
            last is not None
            and len(last) == len(group) == 1
            and isinstance(last[0], PutMessage)
            and isinstance(group[0], PutMessage)
            and last[0].message.key == group[0].message.key
        ):
            # A newer state of the same message; durable if either asked for it.
            self._pending[-1] = (group, durable or self._pending[-1][1])
        else:
            self._pending.append((group, durable))
        if self._failing:
            return False  # the retry timer writes them, in order
        return self._flush()

    def retry(self) -> None:
        """Tries again: opens the store if it was not open, then writes what waits."""
        if self.store is None or self.store.read_only_reason:
            opened = self.open()
            if opened is None or opened.store.read_only_reason:
                return
            self._flush()
            self.store_opened.emit(opened)
            return
        self._flush()

    def _flush(self) -> bool:
        if self.store is None:
            return False
        while self._pending:
            try:
                self.store.apply(*self._pending[0])
            except SaveError as exc:
                self._fail(
                    f"Could not save the conversation: {exc}. Everything stays on screen, "
                    "and kvchat keeps trying to save it every few seconds."
                )
                return False
            del self._pending[0]
        if self._failing:
            self._failing = False
            self.problem = ""
            self._timer.stop()
            self._rescue.remove()
            self.saved_again.emit()
        return True

    def checkpoint(self) -> None:
        """Lets the store fold its WAL into the database (at a quiet moment)."""
        if self.store is not None and not self._failing:
            self.store.checkpoint()

    def _fail(self, message: str) -> None:
        rescue = self._rescue.write(self._pending) if self._pending else None
        if rescue is not None:
            message += f" Until then, a copy of what is unsaved is kept in {rescue}."
        first = not self._failing or message != self.problem
        self._failing = True
        self.problem = message
        if not self._timer.isActive():
            self._timer.start()
        if first:
            self.save_failed.emit(message)

    def close(self) -> Path | None:
        """Saves what it can and closes the store.

        Writes that still cannot be saved stay in the rescue file, whose path
        is returned (and printed), so that quitting never drops them silently.
        """
        self._timer.stop()
        if self._pending and (self.store is None or self.store.read_only_reason):
            self.retry()
        if self._pending and self.store is not None:
            self._flush()
        if self.store is not None:
            self.store.close()
            self.store = None
        if not self._pending:
            self._rescue.remove()
            return None
        rescue = self._rescue.write(self._pending)
        where = f"were written to {rescue}" if rescue else "could not be written anywhere"
        print(f"kvchat: {self.problem} Unsaved messages {where}", file=sys.stderr)
        self._pending.clear()
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
