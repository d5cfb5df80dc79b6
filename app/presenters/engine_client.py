"""The window's side of the engine: a host process and the thread that reads it.

`EngineClient` lives on the GUI thread. Commands go straight down the pipe
from there (a cancel never waits behind anything), and a dedicated QThread
blocks on the pipe and turns each event into a queued Qt signal, so slots
always run on the GUI thread with immutable event objects.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import shiboken6
from PySide6.QtCore import QObject, QThread, QTimer, Signal

from kvchat.engine.client import EngineHost, HostProcess, describe_exit, retire
from kvchat.engine.link import EngineState, Listener, Listeners
from kvchat.engine.protocol import (
    Cancel,
    Chat,
    ChatFailed,
    ChatMessage,
    ClearSavedStates,
    Complete,
    Event,
    HostExited,
    HostStarted,
    LoadConfig,
    LoadFailed,
    LoadModel,
    LoadProgress,
    MemorySample,
    ModelLoaded,
    Prepare,
    PromptEvaluated,
    Sampling,
    TextDelta,
    TurnFinished,
)
from kvchat.engine.remote_address import is_remote, split_model_url

READER_JOIN_MS = 1000

# Every reader thread ever started, so tests can fail one that is left running.
live_readers: weakref.WeakSet[EventReader] = weakref.WeakSet()
# The readers of hosts let go of (EngineClient._discard), held here, on the
# GUI thread, until Qt has deleted them: a QThread destroyed while it runs
# takes the process down with it, and its EngineClient may go first.
_ending_readers: set[EventReader] = set()


def _keep_until_deleted(reader: EventReader) -> None:
    _ending_readers.difference_update([r for r in _ending_readers if not shiboken6.isValid(r)])
    reader.setParent(None)
    _ending_readers.add(reader)


class EventReader(QThread):
    """Blocks on the host's pipe and emits each event; ends when the host does.

    Signals:
        event_received(object): an engine.protocol event.
    """

    event_received = Signal(object)

    def __init__(self, host: EngineHost, listeners: Listeners, parent: QObject) -> None:
        super().__init__(parent)
        self.setObjectName("kvchat-engine-reader")
        self._host = host
        self._listeners = listeners
        live_readers.add(self)

    def detach(self) -> None:
        """Publishes what comes from now on to no one: its host is being let go of."""
        self._listeners = Listeners(EngineState("stopped"))

    def run(self) -> None:
        while True:
            event = self._host.receive(timeout=None)
            if event is None:
                continue
            # Other threads' listeners first (the API server), on this thread.
            self._listeners.publish(event)
            self.event_received.emit(event)
            if isinstance(event, HostExited):
                return


class WindowEngineLink:
    """The window's engine as an engine.link.EngineLink, for the API server.

    Its requests go down the same pipe as the window's, so they queue with
    the window's turns, and their events reach the window too (its panels
    show them; the chat ignores request ids it did not make).
    """

    def __init__(self) -> None:
        self.listeners = Listeners(EngineState("stopped"))
        self.host: EngineHost | None = None

    def state(self) -> EngineState:
        return self.listeners.state()

    def new_request_id(self) -> int:
        return self.listeners.new_request_id()

    def submit(self, request: Chat | Complete) -> bool:
        host = self.host
        return host is not None and host.send(request)

    def cancel(self, request_id: int) -> None:
        host = self.host
        if host is not None:
            host.send(Cancel(request_id))

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self.listeners.subscribe(listener)


class EngineClient(QObject):
    """Starts the engine host and speaks to it; all methods run on the GUI thread.

    Signals:
        host_started(object): HostStarted.
        load_progress(float): fraction of the model loaded.
        memory_reported(object): LoadMemory of the model about to be announced.
        model_loaded(object): ModelInfo.
        load_failed(object): LoadFailed (its message is meant for a person).
        prompt_evaluated(object): PromptEvaluated, before the reply's first token.
        text_received(int, str): request id, answer text to append (never thinking).
        thinking_received(int, str): request id, thinking text to append: the
            reasoning a model writes before its answer (engine.reasoning),
            without its markers.
        cache_filled(int): tokens in the KV cache, with each text or thinking received.
        memory_sampled(object): MemorySample, about once a second.
        turn_finished(int, str, object): request id, the reply's whole answer,
            TurnStats (with the thinking's tokens and seconds).
        chat_failed(int, str): request id, message for a person.
        host_exited(object): HostExited, when the host ended without being asked.
    """

    host_started = Signal(object)
    load_progress = Signal(float)
    memory_reported = Signal(object)
    model_loaded = Signal(object)
    load_failed = Signal(object)
    prompt_evaluated = Signal(object)
    text_received = Signal(int, str)
    thinking_received = Signal(int, str)
    cache_filled = Signal(int)
    memory_sampled = Signal(object)
    turn_finished = Signal(int, str, object)
    chat_failed = Signal(int, str)
    host_exited = Signal(object)

    def __init__(
        self,
        log_path: Path,
        parent: QObject | None = None,
        kv_cache_dir: Path | None = None,
        host_factory: Callable[[str], EngineHost] | None = None,
    ) -> None:
        """`kv_cache_dir`: where conversations' keys and values are kept between
        runs, for loads that do not name a folder (None: kept in RAM only).

        `host_factory` makes the host for a model path (None: `_default_host`).
        Any engine.client.EngineHost will do: the tests' scripted one goes
        through this class and its reader as the real hosts do.
        """
        super().__init__(parent)
        self._log_path = log_path
        self._kv_cache_dir = kv_cache_dir
        self._host_factory = host_factory or self._default_host
        self._host: EngineHost | None = None
        # The API key for a server's base URL (a remote model), from the app's keyring.
        self.server_key: Callable[[str], str | None] = lambda _base_url: None
        self._reader: EventReader | None = None
        self._request_ids = itertools.count(1)
        self._stopping = False
        self._loading = False
        self.link = WindowEngineLink()
        self._host_for = ""

    @property
    def running(self) -> bool:
        return self._host is not None and self._host.is_alive()

    @property
    def pid(self) -> int | None:
        """The engine host's process id, while one runs."""
        return self._host.pid if self._host is not None else None

    @property
    def log_path(self) -> Path:
        """Where the engine's log is: the running host's (it moves when the data
        folder cannot take it, see `log_note`), else where the next host writes it."""
        return self._host.log_path if self._host is not None else self._log_path

    @property
    def log_note(self) -> str:
        """Why the engine's log is not where it belongs ("" when it is)."""
        return self._host.log_note if self._host is not None else ""

    @property
    def remote(self) -> str:
        """The server the engine talks to ("" for the engine process here)."""
        return self._host_for if self._host is not None else ""

    def _default_host(self, model_path: str) -> EngineHost:
        """A remote model's URL (engine.remote) gets a RemoteHost for its server,
        anything else the engine host process."""
        if is_remote(model_path):
            # Imported here: httpx and the server code load only for a remote model.
            from kvchat.engine.remote import RemoteHost

            server = split_model_url(model_path)[0]
            return RemoteHost(self._log_path, self.server_key(server))
        return HostProcess(self._log_path)

    def start(self, model_path: str = "") -> None:
        """Starts a host for `model_path` (made by the host factory) and its
        reader; a no-op while a fitting one runs: one for the same server, or
        the engine here for a model here."""
        server = split_model_url(model_path)[0] if is_remote(model_path) else ""
        if self.running and (not model_path or server == self._host_for):
            return
        self._discard()
        self._stopping = False
        self._host_for = server
        self._host = self._host_factory(model_path)
        self.link.host = self._host
        # Parented, so that dropping our reference inside a slot that this
        # reader's own signal invoked (a restart after a crash) does not
        # destroy it there: deleteLater does, once the event loop is back.
        self._reader = EventReader(self._host, self.link.listeners, self)
        self._reader.event_received.connect(self._dispatch)
        self._reader.start()

    @property
    def loading(self) -> bool:
        """A load was asked for and has not ended yet."""
        return self._loading

    def load(self, config: LoadConfig) -> None:
        if self._kv_cache_dir is not None and not config.kv_cache_dir:
            config = replace(config, kv_cache_dir=str(self._kv_cache_dir))
        server = split_model_url(config.model_path)[0] if is_remote(config.model_path) else ""
        if self.running and server != self._host_for:
            self.shutdown()  # another kind of engine: this one ends first
        self.start(config.model_path)
        assert self._host is not None
        self._host.send(Cancel())
        self._host.send(LoadModel(config))
        self._loading = True

    def stop_load(self) -> None:
        """Stops the load under way (the engine answers with LoadFailed)."""
        if self._host is not None and self._loading:
            self._host.send(Cancel())

    def kill(self, reason: str) -> None:
        """Kills an engine that stopped answering; `host_exited` says `reason`
        (app.presenters.watchdog decides when)."""
        if self._host is not None:
            self._host.kill(reason)

    def switch(self, config: LoadConfig) -> None:
        """Loads a model in a fresh host process.

        The old process ends first, so everything the old model held, the
        GPU runtime's own context included, goes back to the system before
        the new model asks for memory.
        """
        self.shutdown()
        self.start(config.model_path)
        self.load(config)

    def chat(
        self,
        messages: Sequence[ChatMessage],
        sampling: Sampling,
        continue_last: bool = False,
        *,
        reply_room: int = 0,
        drop_oldest: bool = False,
    ) -> int:
        """Asks for a reply; returns the request id its events will carry.

        With `continue_last`, the last message is a reply cut short, which the
        model is to continue. `reply_room` and `drop_oldest` are the overflow
        policy's (engine.overflow): the engine keeps that room for the reply,
        and may drop the oldest turns to keep it.
        """
        request_id = next(self._request_ids)
        command = Chat(
            request_id, tuple(messages), sampling, continue_last, reply_room, drop_oldest
        )
        if self._host is None or not self._host.send(command):
            # Emitted later, so that the caller knows the request id by then.
            QTimer.singleShot(
                0, lambda: self.chat_failed.emit(request_id, "the engine is not running")
            )
        return request_id

    def prepare(self, messages: Sequence[ChatMessage]) -> None:
        """Has the engine bring this conversation's saved keys and values back now."""
        if self._host is not None and not self._loading:
            self._host.send(Prepare(tuple(messages)))

    def clear_saved_states(self) -> None:
        """Forgets the conversations' saved keys and values (RAM and disk)."""
        if self._host is not None:
            self._host.send(ClearSavedStates())

    def cancel(self, request_id: int | None = None) -> None:
        """Stops a request (None: whatever runs); it ends with what it has."""
        if self._host is not None:
            self._host.send(Cancel(request_id))

    def shutdown(self) -> None:
        """Stops the host (killing it after a grace period), without waiting for it.

        See `_discard`: the GUI thread goes on at once, and a host started
        next (a switch's) loads its model only once this one has ended.
        """
        self._stopping = True
        self._loading = False
        self._discard()

    def _discard(self) -> None:
        """Lets go of the host and its reader at once; they end on a thread of their own.

        engine.client.retire stops the host there, waits for the reader to
        finish, and closes the host; an engine host process started meanwhile
        holds back its commands until the old process is gone, so the memory
        it held is back before the next model asks for it. Nothing the old
        reader receives from now on reaches the window or the API server's
        listeners. A process that exits waits for that thread (it is no daemon).
        """
        reader, host = self._reader, self._host
        self._reader = None
        self._host = None
        if reader is not None:
            reader.event_received.disconnect(self._dispatch)
            reader.detach()
            if host is not None and reader.isRunning():
                # Its host's own exit now goes to no one: the API server's
                # requests on that host end here.
                self.link.listeners.publish(HostExited(0, describe_exit(0), ""))
            _keep_until_deleted(reader)
        if host is None:
            if reader is not None:
                reader.finished.connect(reader.deleteLater)
                if not reader.isRunning():
                    reader.deleteLater()  # twice is harmless
            return
        self.link.host = None
        self.link.listeners.set_state(EngineState("stopped"))

        def reader_ended() -> None:
            # On retire's thread: QThread.wait and deleteLater may be called
            # from any thread, and the reader is deleted on the GUI thread,
            # after the events it queued. One still running (its host's pipe
            # never closed) is left to end on its own, never deleted running.
            # No Python callable is connected to it: Qt would disconnect one
            # on whichever thread lets go of the callable's object.
            if reader is not None and reader.wait(READER_JOIN_MS):
                reader.deleteLater()

        retire(host, before_close=reader_ended)

    def _dispatch(self, event: Event) -> None:
        if self.sender() is not self._reader:
            return  # queued before its host was replaced: that host is gone
        if isinstance(event, TextDelta):
            if event.thinking:
                self.thinking_received.emit(event.request_id, event.text)
            else:
                self.text_received.emit(event.request_id, event.text)
            if event.tokens_in_cache >= 0:  # a server elsewhere does not say
                self.cache_filled.emit(event.tokens_in_cache)
        elif isinstance(event, MemorySample):
            self.memory_sampled.emit(event)
        elif isinstance(event, PromptEvaluated):
            self.prompt_evaluated.emit(event)
        elif isinstance(event, TurnFinished):
            self.turn_finished.emit(event.request_id, event.text, event.stats)
        elif isinstance(event, LoadProgress):
            self.load_progress.emit(event.fraction)
        elif isinstance(event, ModelLoaded):
            self._loading = False
            self.memory_reported.emit(event.memory)
            self.model_loaded.emit(event.info)
        elif isinstance(event, LoadFailed):
            self._loading = False
            self.load_failed.emit(event)
        elif isinstance(event, ChatFailed):
            self.chat_failed.emit(event.request_id, event.message)
        elif isinstance(event, HostStarted):
            self.host_started.emit(event)
        elif isinstance(event, HostExited):
            self._loading = False
            if not self._stopping:
                self.host_exited.emit(event)
