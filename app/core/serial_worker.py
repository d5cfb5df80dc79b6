"""One thread that runs calls in the order they come, started only when there is work."""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable


class SerialWorker:
    """Runs calls one after another on a thread of its own, started when there is work.

    The thread ends when nothing is left to do, so an idle flow holds none.
    It is not a daemon thread: what runs as the app quits (a cancelled
    download removing its partial file) ends before the process does.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._pending: deque[Callable[[], None]] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, work: Callable[[], None]) -> None:
        """Queues `work`; ignored once closed."""
        with self._lock:
            if self._closed:
                return
            self._pending.append(work)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name)
                self._thread.start()

    def close(self) -> None:
        """Drops the calls not started; the one running ends on its own."""
        with self._lock:
            self._closed = True
            self._pending.clear()

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._thread is not None

    def join(self, timeout_s: float) -> bool:
        """Waits for the thread to end; False if it still runs after `timeout_s`."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            return not thread.is_alive()
        return True

    def _next(self) -> Callable[[], None] | None:
        with self._lock:
            if not self._pending:
                self._thread = None
                return None
            return self._pending.popleft()

    def _run(self) -> None:
        while (work := self._next()) is not None:
            try:
                work()
            except Exception:
                # A fault in one call must not strand the calls queued after it.
                sys.excepthook(*sys.exc_info())
