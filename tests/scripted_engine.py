"""A scripted stand-in for the EngineClient, for tests and benchmarks that need
exact timing or thousands of messages: replies come from a script, at a set
rate, from a thread of their own as the real reader thread sends them.

It is never a substitute for the real engine in end-to-end tests. Token
counts are words plus a few tokens of wrapping per message, and the context
is enforced as the runner enforces it: a prompt that does not fit is refused
with both numbers.

It keeps the two timing facts of the real pipe that a controller can get
wrong. A cancelled reply does not stop at once: text already on its way
(and what the host generates before it sees the flag) keeps arriving for
`cancel_lag_s`, then the turn finishes as cancelled, with all of that text.
A switch ends the old host: nothing it sent arrives afterwards, not even
what was already queued (as EngineClient drops the old reader's events).

A scripted reply may think: words inside `<think>…</think>` (or harmony's
channels) are split off by the engine's own splitter (engine.reasoning) and
arrive through `thinking_received`, counted in the stats' `thinking_tokens`,
as the real engine sends them; `text_received` and `turn_finished` carry the
answer alone. A reply continued from a message cut inside its thinking
starts inside it, as the runner's does.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, QThread, QTimer, Signal

from kvchat.app.core.paths import engine_log_path, rescue_folders
from kvchat.app.core.settings import EngineSettings
from kvchat.app.core.store import open_store
from kvchat.app.presenters.controller import Controller
from kvchat.app.presenters.help_flow import HelpFlow
from kvchat.app.presenters.history import History
from kvchat.app.presenters.instance_lock import InstanceLock
from kvchat.app.presenters.saving import SaveQueue
from kvchat.engine.protocol import (
    ChatMessage,
    LoadConfig,
    LoadFailed,
    ModelInfo,
    PromptEvaluated,
    Sampling,
    TurnStats,
)
from kvchat.engine.reasoning import Part, ThinkingSplitter
from kvchat.ui.main_window import MainWindow

FLUSH_S = 0.010  # what the engine host batches text deltas to
# How long a cancelled reply keeps arriving: a few flushes of the host.
CANCEL_LAG_S = 0.030
WRAP_TOKENS = 4
SYSTEM_TOKENS = 10


def count_tokens(text: str) -> int:
    return len(text.split())


def model_info(n_ctx: int = 4096, path: str = "/models/scripted.gguf") -> ModelInfo:
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
    request_id: int
    messages: list[ChatMessage]
    sampling: Sampling
    continue_last: bool


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


def _resumes_thinking(messages: Sequence[ChatMessage], continue_last: bool) -> bool:
    """Whether a continued reply was cut inside its thinking, to go on there (as runners do)."""
    last = messages[-1] if continue_last and messages else None
    return last is not None and bool(last.thinking) and not last.content.strip()


class _Stream(QThread):
    """Emits the reply's words at `rate` a second, batched every FLUSH_S, as
    the range of words each batch holds.

    Once cancelled it goes on for `lag` seconds more (what the pipe still
    carries), unless `dropped` (its host was ended: nothing more comes).
    """

    delta = Signal(int, int, int)

    def __init__(self, request_id: int, words: Sequence[_Word], rate: float, lag: float) -> None:
        super().__init__()
        self.request_id = request_id
        self.words = list(words)
        self.rate = rate
        self.lag = lag
        self.cancelled = threading.Event()
        self.dropped = threading.Event()
        self.sent = 0
        self.first_at = 0.0
        self.last_at = 0.0
        self.thinking_ended_at = 0.0

    def _stopping(self) -> bool:
        if self.dropped.is_set():
            return True
        if not self.cancelled.is_set():
            return False
        if self._cancel_seen == 0.0:
            self._cancel_seen = time.perf_counter()
        return time.perf_counter() - self._cancel_seen >= self.lag

    def run(self) -> None:
        started = time.perf_counter()
        self._cancel_seen = 0.0
        while self.sent < len(self.words) and not self._stopping():
            time.sleep(FLUSH_S)
            due = min(int((time.perf_counter() - started) * self.rate) + 1, len(self.words))
            if due > self.sent:
                now = time.perf_counter()
                self.first_at = self.first_at or now
                self.last_at = now
                if any(word.thinking for word in self.words[self.sent : due]):
                    self.thinking_ended_at = now
                self.delta.emit(self.request_id, self.sent, due)
                self.sent = due

    def text(self, start: int, end: int) -> list[Part]:
        """What words `start` to `end` say, one part for each run of one side."""
        merged: list[Part] = []
        for word in self.words[start:end]:
            for thinking, text in word.parts:
                if merged and merged[-1][0] == thinking:
                    merged[-1] = (thinking, merged[-1][1] + text)
                else:
                    merged.append((thinking, text))
        return merged


class ScriptedEngine(QObject):
    """Speaks the EngineClient's signals; `reply` says what each reply is.

    `reply` gets the messages of the request and returns the reply's words
    (each with its own spacing), so that `"".join` of them is the reply, its
    thinking tags and all.
    """

    host_started = Signal(object)
    log_note = ""
    # Where the real engine would write its log; a scripted one writes none.
    log_path = Path(os.devnull)
    remote = ""
    pid: int | None = None
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
        reply: Callable[[list[ChatMessage]], list[str]],
        rate: float = 500.0,
        n_ctx: int = 4096,
        parent: QObject | None = None,
        cancel_lag_s: float = CANCEL_LAG_S,
    ) -> None:
        super().__init__(parent)
        self.reply = reply
        self.rate = rate
        self.n_ctx = n_ctx
        self.cancel_lag_s = cancel_lag_s
        self.requests: list[Request] = []
        self.fail_next = ""
        self._ids = itertools.count(1)
        self._streams: dict[int, _Stream] = {}
        self.cleared_saved_states = 0
        self.prepared: list[tuple[ChatMessage, ...]] = []
        # Every stream ever started, so a test can check that none is left running.
        self.threads: list[_Stream] = []
        self._running = False
        self._loading: str | None = None
        # Counts the hosts: events of an ended one are never delivered.
        self._host = 0

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        self._running = True

    def _later(self, emit: Callable[[], None]) -> None:
        """Emits on the next turn of the event loop, unless the host ended by then."""
        host = self._host

        def deliver() -> None:
            if host == self._host:
                emit()

        QTimer.singleShot(0, deliver)

    @property
    def loading(self) -> bool:
        return self._loading is not None

    def load(self, config: LoadConfig) -> None:
        self._running = True
        info = model_info(self.n_ctx, config.model_path)
        self._loading = config.model_path

        def loaded() -> None:
            if self._loading == config.model_path:
                self._loading = None
                self.model_loaded.emit(info)

        self._later(loaded)

    def stop_load(self) -> None:
        """Stop during a load: the engine ends it and says so."""
        path, self._loading = self._loading, None
        if path is not None:
            self._later(lambda: self.load_failed.emit(LoadFailed(path, "loading was cancelled")))

    def switch(self, config: LoadConfig) -> None:
        """A fresh host: the old one's replies end, and none of their events arrive."""
        self.shutdown()
        self.load(config)

    def _prompt(self, messages: Sequence[ChatMessage]) -> tuple[int, int, int]:
        system = SYSTEM_TOKENS + sum(
            count_tokens(m.content) + WRAP_TOKENS for m in messages if m.role == "system"
        )
        turns = [m for m in messages if m.role != "system"]
        costs = [count_tokens(m.content) + WRAP_TOKENS for m in turns]
        history = sum(costs[:-1])
        return system + sum(costs), system, history

    def chat(
        self, messages: Sequence[ChatMessage], sampling: Sampling, continue_last: bool = False
    ) -> int:
        request_id = next(self._ids)
        self.requests.append(Request(request_id, list(messages), sampling, continue_last))
        if self.fail_next:
            message, self.fail_next = self.fail_next, ""
            self._later(lambda: self.chat_failed.emit(request_id, message))
            return request_id
        prompt, system, history = self._prompt(messages)
        if prompt >= self.n_ctx:
            refusal = (
                f"the conversation is {prompt} tokens long, and the context holds "
                f"{self.n_ctx}: start a new conversation or raise the context size"
            )
            self._later(lambda: self.chat_failed.emit(request_id, refusal))
            return request_id
        words = _split_words(self.reply(list(messages)), _resumes_thinking(messages, continue_last))
        limited = words[: sampling.max_tokens]
        stream = _Stream(request_id, limited, self.rate, self.cancel_lag_s)
        self.threads.append(stream)
        stream.delta.connect(self._on_delta)
        stream.finished.connect(
            lambda: self._finish(stream, prompt, system, history, len(words) > len(limited))
        )
        self._streams[request_id] = stream
        evaluated = PromptEvaluated(request_id, prompt, system, history, 0, prompt)
        self._started = time.perf_counter()
        QTimer.singleShot(0, lambda: self._begin(evaluated, stream))
        return request_id

    def _begin(self, evaluated: PromptEvaluated, stream: _Stream) -> None:
        if stream.request_id not in self._streams:
            return  # its host ended before the prompt was evaluated
        self.prompt_evaluated.emit(evaluated)
        stream.start()

    def _on_delta(self, request_id: int, start: int, end: int) -> None:
        stream = self._streams.get(request_id)
        if stream is None:
            return
        for thinking, text in stream.text(start, end):
            if thinking:
                self.thinking_received.emit(request_id, text)
            else:
                self.text_received.emit(request_id, text)

    def _finish(self, stream: _Stream, prompt: int, system: int, history: int, cut: bool) -> None:
        stream.wait()
        if self._streams.pop(stream.request_id, None) is None:
            return
        # A reply that ran to its end before the host saw the cancel ends as usual.
        stopped = stream.cancelled.is_set() and stream.sent < len(stream.words)
        reason = "cancelled" if stopped else ("length" if cut else "eos")
        seconds = stream.last_at - stream.first_at
        stats = TurnStats(
            prompt_tokens=prompt,
            system_tokens=system,
            history_tokens=history,
            reused_tokens=0,
            evaluated_tokens=prompt,
            generated_tokens=stream.sent,
            time_to_first_token_s=max(stream.first_at - self._started, 0.0),
            prefill_tokens_per_s=0.0,
            decode_tokens_per_s=(stream.sent - 1) / seconds if seconds > 0 else 0.0,
            stop_reason=reason,
            thinking_tokens=sum(word.thinking for word in stream.words[: stream.sent]),
            thinking_seconds=max(stream.thinking_ended_at - stream.first_at, 0.0),
        )
        answer = "".join(text for thinking, text in stream.text(0, stream.sent) if not thinking)
        self.turn_finished.emit(stream.request_id, answer, stats)

    def prepare(self, messages: Sequence[ChatMessage]) -> None:
        """A scripted engine keeps no keys and values: it records what it was asked to prepare."""
        self.prepared.append(tuple(messages))

    def clear_saved_states(self) -> None:
        """A scripted engine keeps no keys and values: it remembers that it was asked."""
        self.cleared_saved_states += 1

    def cancel(self, request_id: int | None = None) -> None:
        for key, stream in self._streams.items():
            if request_id is None or key == request_id:
                stream.cancelled.set()

    def shutdown(self) -> None:
        """Ends the host: streams stop now, and what they queued is dropped
        (`_on_delta` and `_finish` only pass on streams still listed)."""
        self._running = False
        self._host += 1
        for stream in list(self._streams.values()):
            stream.dropped.set()
            stream.wait()
        self._streams.clear()


def build_scripted_window(
    data_dir: Path, engine: ScriptedEngine, settings: EngineSettings | None = None
) -> tuple[MainWindow, Controller]:
    """What app.gui.build_window makes, with this engine in place of the real one."""
    lock = InstanceLock(data_dir)
    lock.acquire()
    window = MainWindow()
    saver = SaveQueue(lambda: open_store(data_dir), rescue_folders(data_dir))
    opened = saver.open()
    controller = Controller(
        window,
        engine,  # type: ignore[arg-type]
        settings or EngineSettings(),
        history=History(saver),
        lock=lock,
    )
    engine.log_path = engine_log_path(data_dir)
    HelpFlow(controller, data_dir)
    window.show()
    controller.open_latest()
    if opened is not None and opened.notice:
        window.chat_view.add_notice(opened.notice)
    controller.start("/models/scripted.gguf")
    return window, controller
