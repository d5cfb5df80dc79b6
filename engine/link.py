"""The engine as other threads use it: requests in, events out, safe from any thread.

`EngineLink` is what the API server needs of an engine. Two things provide
it: `LocalEngine` here (an engine host of its own, for `kvchat serve`), and
the window's engine client (the window's own engine, so that API requests
queue with the window's turns and its panels show them).

Listeners are called on the thread that reads the engine, with every event;
they must return quickly (hand the event to another thread or loop).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

from kvchat.engine.client import SHUTDOWN_GRACE_S, HostProcess
from kvchat.engine.protocol import (
    Cancel,
    Chat,
    Complete,
    Event,
    HostExited,
    HostStarted,
    LoadConfig,
    LoadFailed,
    LoadMemory,
    LoadModel,
    LoadProgress,
    MemorySample,
    ModelInfo,
    ModelLoaded,
    Shutdown,
)

Listener = Callable[[Event], None]
Phase = Literal["starting", "loading", "ready", "restarting", "failed", "stopped"]

# Ids of requests made through a link, far from the window's own (which count
# from 1) and still inside the 32-bit int that a Qt signal carries.
LINK_REQUEST_IDS_START = 1_000_000_000
# A crashed engine is started again after these waits, then gives up.
RESTART_DELAYS_S = (0.5, 2.0, 5.0)
# An engine that ran this long without crashing gets its whole backoff again.
STABLE_AFTER_S = 60.0


@dataclass(frozen=True)
class EngineState:
    """Where an engine is. `model` is the loaded model while `phase` is "ready"."""

    phase: Phase
    model: ModelInfo | None = None
    message: str = ""
    load_fraction: float = 0.0
    # Where the loaded model's memory went, and the latest sample of the
    # devices and the KV cache: what the memory panels show.
    memory: LoadMemory | None = None
    sample: MemorySample | None = None

    @property
    def ready(self) -> bool:
        return self.phase == "ready" and self.model is not None


def next_state(state: EngineState, event: Event) -> EngineState:
    """The state after an event; events that do not change it leave it as it is."""
    if isinstance(event, HostStarted):
        return EngineState("starting")
    if isinstance(event, LoadProgress):
        return EngineState("loading", load_fraction=event.fraction)
    if isinstance(event, ModelLoaded):
        return EngineState("ready", event.info, memory=event.memory)
    if isinstance(event, MemorySample):
        return replace(state, sample=event) if state.model is not None else state
    if isinstance(event, LoadFailed):
        if event.loaded is not None:
            kept = state.memory if state.model == event.loaded else None
            return EngineState("ready", event.loaded, event.message, memory=kept)
        return EngineState("failed", message=event.message)
    if isinstance(event, HostExited):
        return EngineState("restarting", message=event.description)
    return state


class EngineLink(Protocol):
    """An engine that any thread may send requests to."""

    def state(self) -> EngineState:
        """Where the engine is now."""
        ...

    def new_request_id(self) -> int: ...

    def submit(self, request: Chat | Complete) -> bool:
        """Sends a request; False when no engine is there to take it."""
        ...

    def cancel(self, request_id: int) -> None: ...

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Calls `listener` with every event from now on; returns what stops it."""
        ...


class Listeners:
    """A thread-safe set of listeners, and the engine state their events lead to."""

    def __init__(self, state: EngineState) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._state = state
        self._ids = itertools.count(LINK_REQUEST_IDS_START)

    def state(self) -> EngineState:
        with self._lock:
            return self._state

    def set_state(self, state: EngineState) -> None:
        with self._lock:
            self._state = state

    def new_request_id(self) -> int:
        with self._lock:
            return next(self._ids)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def publish(self, event: Event) -> None:
        with self._lock:
            self._state = next_state(self._state, event)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(event)


class LocalEngine:
    """An engine host of its own, loaded with one model and started again after a crash.

    For `kvchat serve`. A reader thread receives the host's events and hands
    them to the listeners; a host that exits unasked is started again with
    the same model, after a short wait that grows with each crash in a row.
    """

    def __init__(self, config: LoadConfig, log_path: Path) -> None:
        self._config = config
        self._log_path = log_path
        self._listeners = Listeners(EngineState("starting"))
        self._host_lock = threading.Lock()
        self._host: HostProcess | None = None
        self._stopping = threading.Event()
        self._reader: threading.Thread | None = None
        self.log_note = ""

    @property
    def pid(self) -> int | None:
        """The engine host's process id, while one runs."""
        host = self._host
        return host.pid if host is not None else None

    @property
    def log_path(self) -> Path:
        host = self._host
        return host.log_path if host is not None else self._log_path

    def start(self) -> None:
        """Starts the host and the model's load; events follow on the reader thread."""
        self._reader = threading.Thread(target=self._run, name="kvchat-engine-link", daemon=True)
        self._reader.start()

    def _start_host(self) -> HostProcess:
        host = HostProcess(self._log_path)
        self.log_note = host.log_note
        host.send(LoadModel(self._config))
        with self._host_lock:
            self._host = host
        return host

    def _run(self) -> None:
        crashes = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            host = self._start_host()
            exited = self._read_until_exit(host)
            host.close()
            if self._stopping.is_set():
                break
            if time.monotonic() - started > STABLE_AFTER_S:
                crashes = 0
            if crashes >= len(RESTART_DELAYS_S):
                self._listeners.set_state(
                    EngineState("failed", message=f"{exited.description}; not started again")
                )
                return
            delay = RESTART_DELAYS_S[crashes]
            crashes += 1
            if self._stopping.wait(delay):
                break
        self._listeners.set_state(EngineState("stopped"))

    def _read_until_exit(self, host: HostProcess) -> HostExited:
        while True:
            event = host.receive(timeout=None)
            if event is None:
                continue
            self._listeners.publish(event)
            if isinstance(event, HostExited):
                return event

    def stop(self) -> None:
        """Stops the host and the reader; the link answers no more requests.

        Only the reader thread closes a host (it sees the host exit), so the
        two threads never race over the process object.
        """
        self._stopping.set()
        with self._host_lock:
            host = self._host
        if host is not None:
            host.send(Shutdown())
        if self._reader is None:
            return
        self._reader.join(SHUTDOWN_GRACE_S + 1.0)
        if self._reader.is_alive() and host is not None:
            with contextlib.suppress(ValueError):  # closed meanwhile
                host.kill("the engine did not stop when asked")
            self._reader.join(SHUTDOWN_GRACE_S + 1.0)

    def kill_host(self) -> None:
        """Kills the engine host as a crash would (for tests of recovery)."""
        with self._host_lock:
            host = self._host
        if host is not None:
            with contextlib.suppress(ValueError):  # it ended and was closed meanwhile
                host.kill("the engine was killed")

    # EngineLink

    def state(self) -> EngineState:
        return self._listeners.state()

    def new_request_id(self) -> int:
        return self._listeners.new_request_id()

    def submit(self, request: Chat | Complete) -> bool:
        with self._host_lock:
            host = self._host
        return host is not None and self.state().ready and host.send(request)

    def cancel(self, request_id: int) -> None:
        with self._host_lock:
            host = self._host
        if host is not None:
            host.send(Cancel(request_id))

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self._listeners.subscribe(listener)

    def wait_ready(self, timeout: float) -> EngineState:
        """Blocks until the model is loaded, the load failed, or `timeout` passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if state.ready or state.phase in ("failed", "stopped"):
                return state
            time.sleep(0.02)
        return replace(self.state(), message="the model did not load in time")
