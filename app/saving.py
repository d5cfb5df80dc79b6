"""Saving that survives a full disk or a read-only folder: what the disk
refused is kept, in order, and written again every few seconds.

The window never waits on a retry and never drops text: the writes are the
store's idempotent values, so applying one twice is harmless, and a newer
checkpoint of a reply replaces an older one still waiting.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal

from kvchat.app.store import (
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
        retry_ms: int = RETRY_MS,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._opener = opener
        self._pending: list[tuple[tuple[Write, ...], bool]] = []
        self._failing = False
        self.store: ConversationStore | None = None
        self.problem = ""
        self._timer = QTimer(self)
        self._timer.setInterval(retry_ms)
        self._timer.timeout.connect(self.retry)

    def open(self) -> Opened | None:
        """Opens the store; on failure remembers why and retries later."""
        try:
            opened = self._opener()
        except StoreUnavailableError as exc:
            self._fail(str(exc))
            return None
        self.store = opened.store
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
        if self.store is None:
            opened = self.open()
            if opened is None:
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
            self.saved_again.emit()
        return True

    def checkpoint(self) -> None:
        """Lets the store fold its WAL into the database (at a quiet moment)."""
        if self.store is not None and not self._failing:
            self.store.checkpoint()

    def _fail(self, message: str) -> None:
        first = not self._failing or message != self.problem
        self._failing = True
        self.problem = message
        if not self._timer.isActive():
            self._timer.start()
        if first:
            self.save_failed.emit(message)

    def close(self) -> Path | None:
        """Saves what it can and closes the store.

        Writes that still cannot be saved go to a JSON file in the system's
        temporary folder, whose path is returned (and printed), so that
        quitting never drops them silently.
        """
        self._timer.stop()
        if self._pending and self.store is None:
            self.retry()
        if self._pending and self.store is not None:
            self._flush()
        if self.store is not None:
            self.store.close()
            self.store = None
        if not self._pending:
            return None
        rescue = (
            Path(tempfile.gettempdir()) / f"kvchat-unsaved-{time.strftime('%Y%m%d-%H%M%S')}.json"
        )
        groups = [
            [{type(w).__name__: dataclasses.asdict(w)} for w in group]
            for group, _durable in self._pending
        ]
        rescue.write_text(json.dumps(groups, indent=1), encoding="utf-8")
        print(f"kvchat: {self.problem} Unsaved messages were written to {rescue}", file=sys.stderr)
        self._pending.clear()
        return rescue
