"""Starting, talking to and stopping the engine host process.

This is the GUI side of the pipe and never imports `llama_cpp` (an
import-linter contract holds it to that). It is used from a plain thread by
the window's engine thread and directly by `kvchat chat`.

A host can be stopped without the caller waiting for it (`retire`): the
window's GUI thread hands the old host of a model switch to a thread of its
own, and the new host holds back its commands until the old one has ended.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import tempfile
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol

from kvchat.engine import faults, host
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
    """The last lines of a log: read from its end, and only from a regular file
    (a log that is a device, /dev/full say, would read forever)."""
    tail_bytes = 64 * 1024
    try:
        if not path.is_file():
            return ""
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - tail_bytes))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "".join(text.splitlines(keepends=True)[-lines:])


def usable_log_path(wanted: Path) -> tuple[Path, str]:
    """Where the engine's log can go: `wanted`, or a private folder elsewhere.

    A read-only or full data folder must not stop the engine from starting:
    the log is worth less than the chat. Returns the path and, when it is
    not `wanted`, a sentence saying why, for a person.
    """
    try:
        wanted.parent.mkdir(parents=True, exist_ok=True)
        with wanted.open("a", encoding="utf-8"):
            pass
        return wanted, ""
    except OSError as exc:
        reason = exc.strerror or str(exc)
    try:
        # mkdtemp: a new folder only the owner can enter, under a name no one can guess.
        elsewhere = Path(tempfile.mkdtemp(prefix="kvchat-engine-log-")) / wanted.name
        with elsewhere.open("a", encoding="utf-8"):
            pass
    except OSError:
        return Path(os.devnull), f"The engine's log cannot be written ({reason}): it is not kept."
    return (
        elsewhere,
        f"The engine's log cannot be written to {wanted} ({reason}); it goes to {elsewhere}.",
    )


# Hosts being stopped on a thread of their own (`retire`), each by the event
# set once it has ended. An engine host process started meanwhile sends its
# host nothing until they have.
_retiring_lock = threading.Lock()
_retiring: set[threading.Event] = set()


# The engine's threads are started by a thread of their own (`_launch`):
# Thread.start waits until the new thread runs, which on a busy machine is a
# time slice of the scheduler's (several ms), and at a model switch the
# caller is the GUI thread, starting two (the new host's writer, the old
# host's stopper).
_launches: queue.SimpleQueue[threading.Thread] = queue.SimpleQueue()
_launcher: threading.Thread | None = None
_launcher_lock = threading.Lock()
LAUNCHER_NAME = "kvchat-engine-launcher"


def _launch(thread: threading.Thread) -> None:
    """Has `thread` started, without waiting for it to run."""
    global _launcher
    with _launcher_lock:
        if _launcher is None:
            _launcher = threading.Thread(target=_start_launched, name=LAUNCHER_NAME, daemon=True)
            _launcher.start()
    _launches.put(thread)


def _start_launched() -> None:
    while True:
        _launches.get().start()


def _still_retiring() -> list[threading.Event]:
    with _retiring_lock:
        return list(_retiring)


class EngineHost(Protocol):
    """What drives a model: the engine host process here, or a server
    elsewhere (engine.remote.RemoteHost). Commands in, events out."""

    log_path: Path
    log_note: str

    @property
    def pid(self) -> int | None: ...

    def is_alive(self) -> bool: ...

    def send(self, command: Command) -> bool: ...

    def receive(self, timeout: float | None = None) -> Event | None: ...

    def kill(self, reason: str) -> None: ...

    def stop(self, grace: float = SHUTDOWN_GRACE_S) -> None: ...

    def close(self) -> None: ...


class Inbox:
    """The events an EngineHost's own threads put, for its `receive`: the next
    one, None on timeout, and nothing after HostExited (RemoteHost's, and the
    scripted engine's for tests)."""

    def __init__(self) -> None:
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._ended = False

    def put(self, event: Event) -> None:
        self._events.put(event)

    def get(self, timeout: float | None = None) -> Event | None:
        if self._ended:
            return None
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(event, HostExited):
            self._ended = True
        return event


class HostProcess:
    """One engine host process and the pipe to it.

    `send` may be called from any thread and never blocks: commands go to a
    writer thread that puts them down the pipe in order, so a host that is
    stopped or swapped out (its pipe full) cannot freeze the caller.
    `receive` is for one thread only.

    Commands wait for the hosts being retired when this one started (see
    `retire`): the process starts at once, but its model loads only once
    the memory of the one before, GPU memory included, is back.

    The process itself is made and started by the writer thread, which then
    writes the commands: starting a Python process (its pipe, its arguments
    pickled, a fork and exec) takes the caller 5-15 ms, and the caller is
    the GUI thread at a model switch. The log's folder is made there too, so
    `log_path` and `log_note` say where the log goes once the process has
    started (until then, where it is wanted).
    """

    _process: multiprocessing.process.BaseProcess

    def __init__(self, log_path: Path) -> None:
        self.log_path, self.log_note = log_path, ""
        self._connection, child_end = multiprocessing.get_context("spawn").Pipe(duplex=True)
        self._outbox: queue.SimpleQueue[Command | None] = queue.SimpleQueue()
        self._pipe_broken = threading.Event()
        self._exit_reported = False
        self._kill_reason = ""
        self._after = _still_retiring()
        self._started = threading.Event()
        self._start_failed: OSError | None = None
        self._writer = threading.Thread(
            target=self._write_commands,
            args=(child_end, faults.armed()),
            name="kvchat-engine-writer",
            daemon=True,
        )
        _launch(self._writer)

    def _start(self, child_end: Connection, fault: faults.Fault | None) -> bool:
        self.log_path, self.log_note = usable_log_path(self.log_path)
        self._process = multiprocessing.get_context("spawn").Process(
            target=host.main,
            args=(child_end, str(self.log_path), fault),
            name="kvchat-engine",
            daemon=True,
        )
        try:
            self._process.start()
        except OSError as exc:  # no memory or no process left to fork
            self._start_failed = exc
            self._pipe_broken.set()
            return False
        finally:
            # Without closing our copy of the child's end, the pipe never reports EOF.
            child_end.close()
            self._started.set()
        return True

    def _write_commands(self, child_end: Connection, fault: faults.Fault | None) -> None:
        if not self._start(child_end, fault):
            return
        for ended in self._after:
            ended.wait()
        while True:
            command = self._outbox.get()
            if command is None:
                return
            try:
                self._connection.send(command)
            except (BrokenPipeError, ConnectionResetError, OSError, ValueError):
                self._pipe_broken.set()
                return

    @property
    def pid(self) -> int | None:
        self._started.wait()
        return self._process.pid

    def is_alive(self) -> bool:
        """Whether the process runs, or is being started (asking never waits)."""
        if not self._started.is_set():
            return True
        return self._start_failed is None and self._process.is_alive()

    def send(self, command: Command) -> bool:
        """Queues a command for the host; returns False when the host is known gone."""
        if self._connection.closed or self._pipe_broken.is_set() or self._exit_reported:
            return False
        self._outbox.put(command)
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
            self._started.wait()
            if self._start_failed is not None:
                reason = self._start_failed.strerror or str(self._start_failed)
                return HostExited(None, f"the engine could not be started ({reason})", "")
            self._process.join(SHUTDOWN_GRACE_S)
            exit_code = self._process.exitcode
            description = self._kill_reason or describe_exit(exit_code)
            return HostExited(exit_code, description, read_log_tail(self.log_path))

    def kill(self, reason: str) -> None:
        """Kills a host that has stopped answering; its HostExited says `reason`."""
        self._kill_reason = reason
        self._started.wait()
        if self.is_alive():
            self._process.kill()

    def stop(self, grace: float = SHUTDOWN_GRACE_S) -> None:
        """Asks the host to stop, and kills it if it has not within `grace` seconds.

        The pipe stays open, so a thread blocked in `receive` sees the host
        exit; call `close` once that thread has finished.
        """
        self.send(Shutdown())
        self._started.wait()
        if not self.is_alive():
            return
        self._process.join(grace)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(grace)

    def wait_ended(self) -> None:
        """Waits, with no limit, for the process to be gone (after `stop` or `kill`)."""
        self._started.wait()
        if self._start_failed is None:
            self._process.join()

    def close(self) -> None:
        """Stops the host if needed and releases the pipe and the process object."""
        self._started.wait()
        if self.is_alive():
            self.stop()
        # The host is gone, so a writer blocked on the pipe has failed by now.
        self._outbox.put(None)
        self._writer.join(SHUTDOWN_GRACE_S)
        self._connection.close()
        if self._start_failed is None:
            self._process.close()


def retire(host: EngineHost, before_close: Callable[[], None] = lambda: None) -> threading.Thread:
    """Stops `host` (killing it after a grace period) and closes it, on a
    thread of its own: the caller never waits.

    Until the host has ended (an engine host process: until the process is
    gone, and the memory it held with it), a HostProcess started after this
    call holds back its commands, so the next model loads once the memory of
    this one is back. `before_close` runs on that thread after the host has
    ended and before it is closed: there the caller's thread that receives
    the host's events is waited for.

    Returns the thread, started at once by the launcher thread (see
    `_launch`). It is not a daemon: a process that exits waits for it.
    """
    ended = threading.Event()
    with _retiring_lock:
        _retiring.add(ended)

    def run() -> None:
        try:
            try:
                host.stop()
                if isinstance(host, HostProcess):
                    host.wait_ended()  # killed after the grace period: gone only now
            finally:
                with _retiring_lock:
                    _retiring.discard(ended)
                ended.set()
            before_close()
        finally:
            host.close()

    thread = threading.Thread(target=run, name="kvchat-engine-stopper")
    _launch(thread)
    return thread
