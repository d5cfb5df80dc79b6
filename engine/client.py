"""Starting, talking to and stopping the engine host process.

This is the GUI side of the pipe and never imports `llama_cpp` (an
import-linter contract holds it to that). It is used from a plain thread by
the window's engine thread and directly by `kvchat chat`.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from collections import deque
from pathlib import Path

from kvchat.engine import host
from kvchat.engine.protocol import Command, Event, HostExited, Shutdown

SHUTDOWN_GRACE_S = 1.0
# What a signal most likely means for an engine host.
HINTS = {
    "SIGKILL": " (killed, perhaps for lack of memory)",
    # The model file is memory-mapped: a page that is no longer in the file.
    "SIGBUS": " (was the model file changed or truncated while it was loaded?)",
}


def describe_exit(exit_code: int | None) -> str:
    """Says in words how a process ended, from its multiprocessing exit code."""
    if exit_code is None:
        return "the engine is still running"
    if exit_code == 0:
        return "the engine stopped"
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        hint = HINTS.get(name, "")
        return f"the engine crashed with {name}{hint}"
    return f"the engine exited with code {exit_code}"


def read_log_tail(path: Path, lines: int = 8) -> str:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))
    except OSError:
        return ""


class HostProcess:
    """One engine host process and the pipe to it.

    `send` may be called from any thread; `receive` from one thread only.
    """

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        context = multiprocessing.get_context("spawn")
        self._connection, child_end = context.Pipe(duplex=True)
        self._process = context.Process(
            target=host.main,
            args=(child_end, str(log_path)),
            name="kvchat-engine",
            daemon=True,
        )
        self._send_lock = threading.Lock()
        self._exit_reported = False
        self._kill_reason = ""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._process.start()
        # Without closing our copy of the child's end, the pipe never reports EOF.
        child_end.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def is_alive(self) -> bool:
        return self._process.is_alive()

    def send(self, command: Command) -> bool:
        """Sends a command; returns False when the host is gone."""
        with self._send_lock:
            if self._connection.closed:
                return False
            try:
                self._connection.send(command)
            except (BrokenPipeError, ConnectionResetError, OSError):
                return False
        return True

    def receive(self, timeout: float | None = None) -> Event | None:
        """The next event; None on timeout; HostExited once the host is gone."""
        if self._exit_reported:
            return None
        try:
            if not self._connection.poll(timeout):
                return None
            event: Event = self._connection.recv()
            return event
        except (EOFError, OSError):
            self._exit_reported = True
            self._process.join(SHUTDOWN_GRACE_S)
            exit_code = self._process.exitcode
            description = self._kill_reason or describe_exit(exit_code)
            return HostExited(exit_code, description, read_log_tail(self.log_path))

    def kill(self, reason: str) -> None:
        """Kills a host that has stopped answering; its HostExited says `reason`."""
        self._kill_reason = reason
        if self._process.is_alive():
            self._process.kill()

    def stop(self, grace: float = SHUTDOWN_GRACE_S) -> None:
        """Asks the host to stop, and kills it if it has not within `grace` seconds.

        The pipe stays open, so a thread blocked in `receive` sees the host
        exit; call `close` once that thread has finished.
        """
        self.send(Shutdown())
        self._process.join(grace)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(grace)

    def close(self) -> None:
        """Stops the host if needed and releases the pipe and the process object."""
        if self._process.is_alive():
            self.stop()
        with self._send_lock:
            self._connection.close()
        self._process.close()
