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

from PySide6.QtCore import QObject, QThread, QTimer, Signal

from kvchat.engine.client import EngineHost, HostProcess
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
# How long a cancelled request may take to end before its host counts as
# hung. The host checks for a cancel between tokens and between prefill
# batches, so this only has to cover one batch of a large model on a CPU.
ANSWER_TIMEOUT_S = 15.0
# How long a load may go without reporting progress before it counts as hung.
# llama.cpp reports progress tensor by tensor; the longest silence is while a
# large context is allocated and the first graph reserved.
LOAD_STALL_S = 120.0

# Every reader thread ever started, so tests can fail one that is left running.
live_readers: weakref.WeakSet[EventReader] = weakref.WeakSet()


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
        self, log_path: Path, parent: QObject | None = None, kv_cache_dir: Path | None = None
    ) -> None:
        """`kv_cache_dir`: where conversations' keys and values are kept between
        runs, for loads that do not name a folder (None: kept in RAM only)."""
        super().__init__(parent)
        self._log_path = log_path
        self._kv_cache_dir = kv_cache_dir
        self._host: EngineHost | None = None
        # The API key for a server's base URL (a remote model), from the app's keyring.
        self.server_key: Callable[[str], str | None] = lambda _base_url: None
        self._reader: EventReader | None = None
        self._request_ids = itertools.count(1)
        self._stopping = False
        self._open_requests: set[int] = set()
        self._cancelled: set[int] = set()  # open, and asked to stop
        self.answer_timeout_s = ANSWER_TIMEOUT_S
        self._watchdog = QTimer(self)
        self._watchdog.setSingleShot(True)
        self._watchdog.timeout.connect(self._end_hung_host)
        self.load_stall_s = LOAD_STALL_S
        self._loading = False
        self._load_stopped = False
        self._load_watchdog = QTimer(self)
        self._load_watchdog.setSingleShot(True)
        self._load_watchdog.timeout.connect(self._end_stalled_load)
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

    def start(self, model_path: str = "") -> None:
        """Starts a host for `model_path` and its reader; a no-op while a fitting one runs.

        A remote model's URL (engine.remote) gets a RemoteHost for its server,
        anything else the engine host process.
        """
        server = split_model_url(model_path)[0] if is_remote(model_path) else ""
        if self.running and (not model_path or server == self._host_for):
            return
        self._discard()
        self._stopping = False
        self._open_requests.clear()
        self._cancelled.clear()
        self._host_for = server
        if server:
            # Imported here: httpx and the server code load only for a remote model.
            from kvchat.engine.remote import RemoteHost

            self._host = RemoteHost(self._log_path, self.server_key(server))
        else:
            self._host = HostProcess(self._log_path)
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
        self._load_stopped = False
        self._load_watchdog.start(round(self.load_stall_s * 1000))

    def stop_load(self) -> None:
        """Stops the load under way; a host that does not end it within
        `answer_timeout_s` is killed, and `host_exited` says so."""
        if self._host is None or not self._loading:
            return
        self._host.send(Cancel())
        self._load_stopped = True
        self._load_watchdog.start(round(self.answer_timeout_s * 1000))

    def _end_stalled_load(self) -> None:
        if self._host is None or not self._loading:
            return
        if self._load_stopped:
            reason = (
                f"the model load did not stop within {self.answer_timeout_s:g} s of being asked to"
            )
        else:
            reason = f"the model load made no progress for {self.load_stall_s:g} s"
        self._host.kill(f"{reason}, so kvchat ended it")

    def _load_ended(self) -> None:
        self._loading = False
        self._load_watchdog.stop()

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
        self, messages: Sequence[ChatMessage], sampling: Sampling, continue_last: bool = False
    ) -> int:
        """Asks for a reply; returns the request id its events will carry.

        With `continue_last`, the last message is a reply cut short, which the
        model is to continue.
        """
        request_id = next(self._request_ids)
        command = Chat(request_id, tuple(messages), sampling, continue_last)
        self._open_requests.add(request_id)
        if self._host is None or not self._host.send(command):
            self._open_requests.discard(request_id)
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
        """Stops a request (None: whatever runs); a host that does not end it
        within `answer_timeout_s` is killed, and `host_exited` says so."""
        if self._host is None:
            return
        self._host.send(Cancel(request_id))
        cancelled = self._open_requests if request_id is None else {request_id}
        self._cancelled |= cancelled & self._open_requests
        if self._cancelled and not self._watchdog.isActive():
            self._watchdog.start(round(self.answer_timeout_s * 1000))

    def _end_hung_host(self) -> None:
        if self._host is not None and self._cancelled:
            self._host.kill(
                f"the engine did not stop within {self.answer_timeout_s:g} s "
                "of being asked to, so kvchat ended it"
            )

    def shutdown(self) -> None:
        """Stops the host (killing it after a grace period) and joins the reader."""
        self._stopping = True
        self._watchdog.stop()
        self._load_ended()
        if self._host is not None:
            self._host.stop()
        self._discard()

    def _discard(self) -> None:
        if self._reader is not None:
            self._reader.event_received.disconnect(self._dispatch)
            self._reader.wait(READER_JOIN_MS)
            self._reader.deleteLater()
            self._reader = None
        if self._host is not None:
            self.link.host = None
            self._host.close()
            self._host = None
            self.link.listeners.set_state(EngineState("stopped"))

    def _dispatch(self, event: Event) -> None:
        if self.sender() is not self._reader:
            return  # queued before its host was replaced: that host is gone
        if isinstance(event, TurnFinished | ChatFailed):
            self._open_requests.discard(event.request_id)
            self._cancelled.discard(event.request_id)
            if not self._cancelled:
                self._watchdog.stop()
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
            if self._loading and not self._load_stopped:
                self._load_watchdog.start(round(self.load_stall_s * 1000))
            self.load_progress.emit(event.fraction)
        elif isinstance(event, ModelLoaded):
            self._load_ended()
            self.memory_reported.emit(event.memory)
            self.model_loaded.emit(event.info)
        elif isinstance(event, LoadFailed):
            self._load_ended()
            self.load_failed.emit(event)
        elif isinstance(event, ChatFailed):
            self.chat_failed.emit(event.request_id, event.message)
        elif isinstance(event, HostStarted):
            self.host_started.emit(event)
        elif isinstance(event, HostExited):
            self._watchdog.stop()
            self._load_ended()
            self._open_requests.clear()
            self._cancelled.clear()
            if not self._stopping:
                self.host_exited.emit(event)
