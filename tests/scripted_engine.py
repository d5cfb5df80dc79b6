"""A scripted engine host, for tests and benchmarks that need exact timing or
thousands of messages: replies come from a script, at a set rate, from a
thread of their own, as the engine host process sends them.

`ScriptedHost` is an engine.client.EngineHost, as the engine host process
and a server elsewhere are: commands in, engine.protocol's events out. The
window's EngineClient drives it through its own reader thread and signals,
so a test sees what the real pipe delivers and how the client turns it into
signals; `ScriptedEngine` is the script and the record its hosts share.

It is never a substitute for the real engine in end-to-end tests. Token
counts are words plus a few tokens of wrapping per message. The context is
enforced as the runner enforces it: with `drop_oldest` the oldest turns
leave the model's view by the overflow policy (engine.overflow), and a
prompt that still does not fit is refused with both numbers.

It keeps the two timing facts of the real pipe that a controller can get
wrong. A cancelled reply does not stop at once: text already on its way
(and what the host generates before it sees the flag) keeps arriving for
`cancel_lag_s`, then the turn finishes as cancelled, with all of that text.
A switch ends the old host: nothing it sent arrives afterwards, not even
what was already queued (EngineClient drops the old reader's events).

A scripted reply may think: words inside `<think>…</think>` (or harmony's
channels) are split off by the engine's own splitter (engine.reasoning) and
arrive as `TextDelta(thinking=True)`, counted in the stats' `thinking_tokens`,
as the real engine sends them; the answer's deltas and `TurnFinished` carry
the answer alone. A reply continued from a message cut inside its thinking
starts inside it, as the runner's does.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QEventLoop, QTimer

from kvchat.app.core.paths import engine_log_path
from kvchat.app.core.settings import EngineSettings
from kvchat.app.presenters.controller import Controller
from kvchat.app.presenters.engine_client import EngineClient
from kvchat.app.presenters.gui import build_window
from kvchat.engine.client import SHUTDOWN_GRACE_S, Inbox
from kvchat.engine.overflow import first_in_view, turn_starts
from kvchat.engine.protocol import (
    Cancel,
    Chat,
    ChatFailed,
    ChatMessage,
    ClearSavedStates,
    Command,
    Complete,
    Event,
    HostExited,
    HostStarted,
    LoadConfig,
    LoadFailed,
    LoadMemory,
    LoadModel,
    LoadProgress,
    ModelInfo,
    ModelLoaded,
    Prepare,
    PromptEvaluated,
    Sampling,
    Shutdown,
    TextDelta,
    TurnFinished,
    TurnStats,
)
from kvchat.engine.reasoning import Part, ThinkingSplitter
from kvchat.ui.main_window import MainWindow

# The model a scripted window loads; no file is read, so none need be there.
SCRIPTED_MODEL = "/models/scripted.gguf"
FLUSH_S = 0.010  # what the engine host batches text deltas to
# How long a cancelled reply keeps arriving: a few flushes of the host.
CANCEL_LAG_S = 0.030
WRAP_TOKENS = 4
SYSTEM_TOKENS = 10
# The progress a load reports, in this many steps.
LOAD_STEPS = 4
# A scripted engine keeps no cache it could count: its deltas say so, as a
# server elsewhere does (EngineClient then sends no `cache_filled`).
NO_CACHE_COUNT = -1


def count_tokens(text: str) -> int:
    return len(text.split())


def model_info(n_ctx: int = 4096, path: str = SCRIPTED_MODEL) -> ModelInfo:
    return ModelInfo(
        path=path,
        name="Scripted",
        architecture="script",
        n_params=1,
        size_bytes=1,
        n_ctx=n_ctx,
        n_ctx_train=n_ctx,
        n_threads=1,
        n_gpu_layers=0,
        n_layers=1,
        gpu_offload_supported=False,
        chat_template_source="none",
        load_seconds=0.0,
    )


@dataclass
class Request:
    """A chat request as a host received it."""

    request_id: int
    messages: list[ChatMessage]
    sampling: Sampling
    continue_last: bool
    reply_room: int = 0
    drop_oldest: bool = False


@dataclass(frozen=True)
class _Word:
    """One scripted word (a token) as the splitter reads it: its parts of
    thinking and answer (none for a marker), and whether it is a thinking token."""

    parts: tuple[Part, ...]
    thinking: bool


def _split_words(words: Sequence[str], start_in_thinking: bool) -> list[_Word]:
    """The words as the runner splits tokens: a word counts as thinking when
    the thinking is open before or after it."""
    splitter = ThinkingSplitter(start_in_thinking)
    split = []
    for word in words:
        was_thinking = splitter.thinking
        parts = splitter.push(word)
        split.append(_Word(tuple(parts), was_thinking or splitter.thinking))
    if split:
        last = split[-1]
        split[-1] = _Word(last.parts + tuple(splitter.finish()), last.thinking)
    return split


def _text_of(words: Sequence[_Word]) -> list[Part]:
    """What the words say, one part for each run of one side."""
    merged: list[Part] = []
    for word in words:
        for thinking, text in word.parts:
            if merged and merged[-1][0] == thinking:
                merged[-1] = (thinking, merged[-1][1] + text)
            else:
                merged.append((thinking, text))
    return merged


def _resumes_thinking(messages: Sequence[ChatMessage], continue_last: bool) -> bool:
    """Whether a continued reply was cut inside its thinking, to go on there (as runners do)."""
    last = messages[-1] if continue_last and messages else None
    return last is not None and bool(last.thinking) and not last.content.strip()


@dataclass(frozen=True)
class Prompt:
    """What the model sees of a request, in scripted tokens.

    `view_start` is the index, among the messages that are not the system
    prompt, of the first one in view (engine.overflow); `tokens` counts the
    system prompt and the messages from there on, `history` those before the
    last message.
    """

    view_start: int
    tokens: int
    system: int
    history: int


def count_prompt(command: Chat, n_ctx: int) -> Prompt:
    """The request's prompt as the scripted engine counts it, with the overflow
    policy applied when the request lets the oldest turns leave."""
    messages = command.messages
    system = SYSTEM_TOKENS + sum(
        count_tokens(m.content) + WRAP_TOKENS for m in messages if m.role == "system"
    )
    costs = [count_tokens(m.content) + WRAP_TOKENS for m in messages if m.role != "system"]
    # from_index[i]: the messages' tokens from the i-th on.
    from_index = [*itertools.accumulate(reversed(costs), initial=0)][::-1]
    view = 0
    if command.drop_oldest:
        view = first_in_view(
            lambda index: system + from_index[index],
            turn_starts(messages),
            n_ctx,
            command.reply_room,
        )
    history = from_index[view] - costs[-1] if view < len(costs) else 0
    return Prompt(view, system + from_index[view], system, history)


@dataclass(frozen=True)
class _Reply:
    """A chat request as the script answers it, decided as it is sent: a
    failure to report (`by_request`: a refusal of the request itself), or
    the prompt and the words to stream, cut at the request's limit (`cut`),
    at `rate` words a second and for `lag` seconds after a cancel."""

    command: Chat
    prompt: Prompt | None = None
    words: tuple[_Word, ...] = ()
    rate: float = 0.0
    lag: float = 0.0
    cut: bool = False
    failure: str = ""
    by_request: bool = False


class ScriptedEngine:
    """The script its hosts follow, and the record of what they were asked.

    `reply` gets the messages of a request and returns the reply's words
    (each with its own spacing), so that `"".join` of them is the reply, its
    thinking tags and all. It is read as each request is sent (on the
    sender's thread), as are `rate`, `n_ctx`, `cancel_lag_s` and `fail_next`,
    so a test's change applies from its next request on. `load_s` is how
    long a load takes. The context is `n_ctx`, whatever the load asks for.

    Every host keeps to the one record: `requests` (each chat request, in
    the order sent), `prepared`, `cleared_saved_states`, `hosts` (the newest
    last: `hosts[-1].kill(reason)` crashes the engine) and `threads`, every
    thread a host started, so that a test can check none is left running.
    """

    def __init__(
        self,
        reply: Callable[[list[ChatMessage]], list[str]],
        rate: float = 500.0,
        n_ctx: int = 4096,
        cancel_lag_s: float = CANCEL_LAG_S,
        load_s: float = 0.0,
    ) -> None:
        self.reply = reply
        self.rate = rate
        self.n_ctx = n_ctx
        self.cancel_lag_s = cancel_lag_s
        self.load_s = load_s
        self.fail_next = ""
        self.requests: list[Request] = []
        self.prepared: list[tuple[ChatMessage, ...]] = []
        self.cleared_saved_states = 0
        self.hosts: list[ScriptedHost] = []
        self.threads: list[threading.Thread] = []

    def host(self, log_path: Path = Path(os.devnull)) -> ScriptedHost:
        """A new host, started; it writes no log, `log_path` is only reported."""
        host = ScriptedHost(self, log_path)
        self.hosts.append(host)
        return host

    def client(self, log_path: Path = Path(os.devnull)) -> EngineClient:
        """The window's real engine client, whose every host is one of these."""
        return EngineClient(log_path, host_factory=lambda _model_path: self.host(log_path))

    def answer(self, command: Chat) -> _Reply:
        """Records the request and decides its reply (the failure the test
        asked for, the refusal of a prompt that does not fit, or the words)."""
        self.requests.append(
            Request(
                command.request_id,
                list(command.messages),
                command.sampling,
                command.continue_last,
                command.reply_room,
                command.drop_oldest,
            )
        )
        if self.fail_next:
            failure, self.fail_next = self.fail_next, ""
            return _Reply(command, failure=failure)
        prompt = count_prompt(command, self.n_ctx)
        if prompt.tokens >= self.n_ctx:
            refusal = (
                f"the conversation is {prompt.tokens} tokens long, and the context holds "
                f"{self.n_ctx}: start a new conversation or raise the context size"
            )
            return _Reply(command, failure=refusal, by_request=True)
        messages = list(command.messages)
        words = _split_words(
            self.reply(messages), _resumes_thinking(messages, command.continue_last)
        )
        limited = tuple(words[: command.sampling.max_tokens])
        return _Reply(
            command,
            prompt,
            limited,
            self.rate,
            self.cancel_lag_s,
            cut=len(words) > len(limited),
        )


def open_window(
    data_dir: Path, engine: ScriptedEngine, settings: EngineSettings | None = None
) -> tuple[MainWindow, Controller]:
    """The app's own window (app.presenters.gui.build_window) on SCRIPTED_MODEL,
    with this engine's hosts in place of the real ones. The model loads once
    the window is painted, as in use: wait for `controller.model`."""
    return build_window(
        SCRIPTED_MODEL,
        settings or EngineSettings(),
        data_dir,
        engine=engine.client(engine_log_path(data_dir)),
    )


def wait_for_model(controller: Controller) -> None:
    """Runs the event loop until the window's model has loaded, for scripts
    that drive a window without qtbot (benchmarks)."""
    while controller.model is None:
        loop = QEventLoop()
        QTimer.singleShot(10, loop.quit)
        loop.exec()


class ScriptedHost:
    """An engine host that follows a ScriptedEngine (engine.client.EngineHost).

    It works as the engine host process does: one worker thread runs the
    commands in order, while Cancel and Shutdown take effect as they are
    sent (a bare Cancel applies to what runs then, not to what comes after).
    `send` never blocks; `receive` is for one thread only. It has no process:
    `pid` is None, and `kill` ends it as a crash would, saying `reason`.
    """

    def __init__(self, script: ScriptedEngine, log_path: Path = Path(os.devnull)) -> None:
        self.log_path = log_path
        self.log_note = ""
        self._script = script
        self._events = Inbox()
        self._commands: queue.SimpleQueue[LoadModel | _Reply | Complete | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._cancelled: set[int] = set()
        self._cancel_all = False
        self._loaded = False
        self._stopping = threading.Event()  # asked to stop, or killed: the worker ends now
        self._exited = False  # its HostExited is queued: nothing goes after it
        self._emit(HostStarted(0, "", False))
        self._worker = threading.Thread(
            target=self._serve, name="kvchat-scripted-engine", daemon=True
        )
        script.threads.append(self._worker)
        self._worker.start()

    # The engine host's interface.

    @property
    def pid(self) -> int | None:
        return None

    def is_alive(self) -> bool:
        return self._worker.is_alive() and not self._exited

    def send(self, command: Command) -> bool:
        """Takes a command; False once the host is stopping or gone."""
        if self._stopping.is_set() or self._exited:
            return False
        if isinstance(command, Cancel):
            with self._lock:
                if command.request_id is None:
                    self._cancel_all = True
                else:
                    self._cancelled.add(command.request_id)
        elif isinstance(command, Shutdown):
            self._stopping.set()
            self._commands.put(None)
        elif isinstance(command, Chat):
            self._commands.put(self._script.answer(command))
        elif isinstance(command, LoadModel | Complete):
            self._commands.put(command)
        elif isinstance(command, Prepare):
            self._script.prepared.append(command.messages)
        elif isinstance(command, ClearSavedStates):
            self._script.cleared_saved_states += 1
        return True

    def receive(self, timeout: float | None = None) -> Event | None:
        """The next event; None on timeout, and after HostExited."""
        return self._events.get(timeout)

    def kill(self, reason: str) -> None:
        """Ends the host at once, as a crash: nothing more comes but its HostExited."""
        self._stopping.set()
        self._end(HostExited(None, reason, ""))
        self._commands.put(None)

    def stop(self, grace: float = SHUTDOWN_GRACE_S) -> None:
        """Asks the host to stop, and kills it if it has not within `grace` seconds."""
        self.send(Shutdown())
        self._worker.join(grace)
        if self._worker.is_alive():
            self.kill(f"the scripted engine did not stop within {grace:g} s")

    def close(self) -> None:
        """Stops the host if needed; its worker has ended once this returns."""
        if self.is_alive():
            self.stop()
        self._worker.join()

    # The worker.

    def _emit(self, event: Event) -> None:
        with self._lock:
            if not self._exited:
                self._events.put(event)

    def _end(self, exited: HostExited) -> None:
        with self._lock:
            if not self._exited:
                self._exited = True
                self._events.put(exited)

    def _is_cancelled(self, request_id: int | None) -> bool:
        with self._lock:
            return self._stopping.is_set() or self._cancel_all or request_id in self._cancelled

    def _serve(self) -> None:
        try:
            while not self._stopping.is_set():
                command = self._commands.get()
                with self._lock:
                    self._cancel_all = False
                if command is None or self._stopping.is_set():
                    break
                if isinstance(command, LoadModel):
                    self._load(command.config)
                elif isinstance(command, Complete):
                    self._emit(
                        ChatFailed(
                            command.request_id,
                            "the scripted engine takes chat requests only",
                            by_request=True,
                        )
                    )
                else:
                    self._chat(command)
        except BaseException as exc:
            # A bug of the script's: the window sees a crash, pytest the exception.
            self._end(HostExited(1, f"the scripted engine failed: {exc!r}", ""))
            raise
        self._end(HostExited(0, "the engine stopped", ""))

    def _load(self, config: LoadConfig) -> None:
        """Loads in LOAD_STEPS steps over `load_s`; a Cancel meanwhile ends it."""
        self._loaded = False  # the model loaded before goes first, as the runner's does
        step_s = self._script.load_s / LOAD_STEPS
        for step in range(LOAD_STEPS + 1):
            if step:
                deadline = time.perf_counter() + step_s
                while time.perf_counter() < deadline and not self._is_cancelled(None):
                    time.sleep(min(FLUSH_S, step_s))
            if self._is_cancelled(None):
                self._emit(LoadFailed(config.model_path, "loading was cancelled"))
                return
            self._emit(LoadProgress(step / LOAD_STEPS))
        self._loaded = True
        info = model_info(self._script.n_ctx, config.model_path)
        self._emit(ModelLoaded(info, LoadMemory((), (), "")))

    def _chat(self, reply: _Reply) -> None:
        """Streams the reply's words at `rate` a second, batched every FLUSH_S;
        once cancelled it goes on for `cancel_lag_s` more (what the pipe still
        carries), and a stopping host sends nothing more at all."""
        command = reply.command
        request_id = command.request_id
        if not self._loaded:
            self._emit(ChatFailed(request_id, "no model is loaded"))
            return
        prompt, rate, lag = reply.prompt, reply.rate, reply.lag
        if prompt is None:
            self._emit(ChatFailed(request_id, reply.failure, reply.by_request))
            return
        started = time.perf_counter()
        self._emit(
            PromptEvaluated(
                request_id,
                prompt.tokens,
                prompt.system,
                prompt.history,
                0,
                prompt.tokens,
                view_start=prompt.view_start,
            )
        )
        words = reply.words
        sent = 0
        first_at = last_at = thinking_ended_at = cancel_seen = 0.0
        streaming = time.perf_counter()
        while sent < len(words):
            if self._stopping.is_set():
                return
            if self._is_cancelled(request_id):
                cancel_seen = cancel_seen or time.perf_counter()
                if time.perf_counter() - cancel_seen >= lag:
                    break
            time.sleep(FLUSH_S)
            due = min(int((time.perf_counter() - streaming) * rate) + 1, len(words))
            if due > sent:
                now = time.perf_counter()
                first_at = first_at or now
                last_at = now
                if any(word.thinking for word in words[sent:due]):
                    thinking_ended_at = now
                for thinking, text in _text_of(words[sent:due]):
                    self._emit(TextDelta(request_id, text, NO_CACHE_COUNT, thinking))
                sent = due
        if self._stopping.is_set():
            return
        # A reply that ran to its end before the host saw the cancel ends as usual.
        stopped = self._is_cancelled(request_id) and sent < len(words)
        seconds = last_at - first_at
        stats = TurnStats(
            prompt_tokens=prompt.tokens,
            system_tokens=prompt.system,
            history_tokens=prompt.history,
            reused_tokens=0,
            evaluated_tokens=prompt.tokens,
            generated_tokens=sent,
            time_to_first_token_s=max(first_at - started, 0.0),
            prefill_tokens_per_s=0.0,
            decode_tokens_per_s=(sent - 1) / seconds if seconds > 0 else 0.0,
            stop_reason="cancelled" if stopped else ("length" if reply.cut else "eos"),
            thinking_tokens=sum(word.thinking for word in words[:sent]),
            thinking_seconds=max(thinking_ended_at - first_at, 0.0),
            view_start=prompt.view_start,
        )
        answer = "".join(text for thinking, text in _text_of(words[:sent]) if not thinking)
        self._emit(TurnFinished(request_id, answer, stats))
