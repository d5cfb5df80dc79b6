"""A model served elsewhere, driven as the engine host is: commands in, events out.

kvchat does not run a remote model; it talks to the server that does
(llama-server, vLLM, Ollama, LM Studio, another kvchat) through its
OpenAI-compatible API, and reads what that server says about its memory
(engine.remote_servers). `RemoteHost` has the engine host's interface
(`send`, `receive`, `kill`, `stop`, `close`), so the window's engine client
and `kvchat chat` drive it unchanged:

- `LoadModel` asks the server which models it has; the model is "loaded"
  when the server lists it (a server loads its models itself).
- `Chat` streams a chat completion. The first token's time and the decode
  speed are measured here, as the bytes arrive; prompt and cached tokens
  come from the server's `usage` (and llama-server's `timings`) when it
  sends them. `Cancel` closes the stream, which ends the generation on the
  server.
- Thinking comes apart from the answer as the server sends it: in a
  `reasoning_content` (llama-server, DeepSeek, vLLM, another kvchat) or
  `reasoning` (Ollama, OpenRouter) field of the delta, or as `<think>` tags
  in the content of a server that does not parse them, which the splitter
  of engine.reasoning reads as the engine host's does. (Such a server's
  template may open the thinking in its prompt, which is not seen here:
  that thinking arrives as answer.) A conversation's earlier thinking goes
  back as `reasoning_content` to the servers known to read it.
- A `Chat` that lets old turns leave (`drop_oldest`) sends only the turns
  that fit the server's context, as the engine host's runner does
  (engine.overflow), but with counts estimated here (`PromptSize`): the
  server tokenizes, with its own template, only what it is sent. A server
  that does not say its context is sent everything.
- While a model is chosen, a sampler thread asks the server for its memory
  figures every `SAMPLE_INTERVAL_S` and sends them as `MemorySample`s with
  their source, never as local measurements.

A remote model's "path" is its URL (engine.remote_address).
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx

from kvchat.engine import overflow, remote_servers
from kvchat.engine.client import Inbox, usable_log_path
from kvchat.engine.protocol import (
    Cancel,
    Chat,
    ChatFailed,
    ChatMessage,
    ClearSavedStates,
    Command,
    Complete,
    DeviceBuffers,
    DeviceSample,
    Event,
    HostExited,
    HostStarted,
    KvCache,
    LoadConfig,
    LoadFailed,
    LoadMemory,
    LoadModel,
    LoadProgress,
    MemorySample,
    ModelInfo,
    ModelLoaded,
    Prepare,
    PromptEvaluated,
    Sampling,
    ServerFigures,
    Shutdown,
    StopReason,
    TextDelta,
    TurnFinished,
    TurnStats,
)
from kvchat.engine.reasoning import ThinkingSplitter
from kvchat.engine.remote_address import (
    describe_remote,
    model_url,
    split_model_url,
)
from kvchat.engine.remote_servers import Identity, RemoteError, ServerMemory

# The servers that continue a conversation's last assistant message rather
# than start a new one after it (vLLM with its own switch, set below).
CONTINUES = frozenset({"kvchat", "llama-server", "vllm"})
SAMPLE_INTERVAL_S = 2.0
CONNECT_TIMEOUT_S = 5.0
# Questions about models and memory get an answer within this, or fail.
READ_TIMEOUT_S = 30.0
# A reply that sends nothing for this long has stopped. Servers send nothing
# while they evaluate the prompt, which takes minutes for a long prompt and
# a large model on a slow machine; Stop ends a wait at any time.
REPLY_TIMEOUT_S = 300.0
# Text deltas go to the window at most this often, as the local host's do.
FLUSH_INTERVAL_S = 0.03
# The servers that take an assistant message's thinking as its `reasoning_content`.
READS_REASONING = frozenset({"kvchat", "llama-server"})
# Tokens per UTF-8 byte before a server has reported a prompt's size: an upper
# bound for the messages' text, since every token of a byte-level or
# SentencePiece vocabulary covers at least a byte of it.
FIRST_TOKENS_PER_BYTE = 1.0
# A ratio learned from one prompt is used with this margin: the next prompt's
# text may tokenize less well than the last one's did on average.
RATIO_MARGIN = 1.25
# Bytes counted for each message beyond its text, for the tokens the server's
# template wraps around it (role markers, separators).
MESSAGE_OVERHEAD_BYTES = 16
# The least a prompt must hold to learn a ratio from; below it the template's
# own text (a default system prompt, a date) would dominate.
LEARN_FROM_BYTES = 256


class PromptSize:
    """An estimate of a prompt's tokens on a server elsewhere, which counts
    them only after it was sent the prompt.

    A prompt is measured in UTF-8 bytes, of the messages' texts as sent plus
    `MESSAGE_OVERHEAD_BYTES` each, and its tokens are taken as those bytes
    times a ratio: `FIRST_TOKENS_PER_BYTE` until the server has reported
    (`usage.prompt_tokens`) what a prompt of enough bytes cost, then the
    last such report's ratio with `RATIO_MARGIN`, never above the first.
    The estimate is meant to err high; where it errs low, the server
    refuses the prompt, and the person reads its reason as for any refusal.
    """

    def __init__(self) -> None:
        self.tokens_per_byte = FIRST_TOKENS_PER_BYTE

    @staticmethod
    def size_bytes(messages: list[dict[str, str]]) -> int:
        """The bytes of messages as the request carries them (`_message`)."""
        return sum(
            MESSAGE_OVERHEAD_BYTES
            + len(message["content"].encode("utf-8"))
            + len(message.get("reasoning_content", "").encode("utf-8"))
            for message in messages
        )

    def learn(self, messages: list[dict[str, str]], prompt_tokens: int) -> None:
        """Takes the server's count of a prompt of these messages."""
        size = self.size_bytes(messages)
        if prompt_tokens > 0 and size >= LEARN_FROM_BYTES:
            ratio = prompt_tokens / size * RATIO_MARGIN
            self.tokens_per_byte = min(ratio, FIRST_TOKENS_PER_BYTE)

    def first_in_view(
        self, messages: list[ChatMessage], with_thinking: bool, n_ctx: int, reply_room: int
    ) -> int:
        """Where the model's view starts (engine.overflow), by this estimate."""
        sent = [_message(m, with_thinking) for m in messages]
        system = [body for m, body in zip(messages, sent, strict=True) if m.role == "system"]
        turns = [body for m, body in zip(messages, sent, strict=True) if m.role != "system"]
        fixed = self.size_bytes(system)
        # The bytes from each turn on, so that each view costs no new count.
        after = [0] * (len(turns) + 1)
        for index in range(len(turns) - 1, -1, -1):
            after[index] = after[index + 1] + self.size_bytes(turns[index : index + 1])
        return overflow.first_in_view(
            lambda index: math.ceil((fixed + after[index]) * self.tokens_per_byte),
            overflow.turn_starts(messages),
            n_ctx,
            reply_room,
        )


def choose_model(base_url: str, model_id: str | None, api_key: str | None) -> str:
    """The URL of `model_id` on the server (None: the first it lists).

    Raises:
        RemoteError: the server cannot be reached, refuses the key, or does
            not have the model (the message names the models it has).
    """
    with httpx.Client(timeout=httpx.Timeout(15.0, connect=CONNECT_TIMEOUT_S)) as client:
        identity = remote_servers.identify(client, base_url, api_key)
    offered = [m.id for m in identity.models]
    if model_id is None:
        if not offered:
            where = remote_servers.where(base_url)
            raise RemoteError(f"{identity.label} at {where} offers no model")
        model_id = offered[0]
    elif identity.model(model_id) is None:
        raise RemoteError(_no_such_model(identity, base_url, model_id))
    return model_url(identity.base_url or base_url, model_id)


def _no_such_model(identity: Identity, base_url: str, model_id: str) -> str:
    names = ", ".join(m.id for m in identity.models) or "none"
    where = remote_servers.where(base_url)
    return f"{identity.label} at {where} has no model {model_id!r} (it offers: {names})"


_T = TypeVar("_T")


def _rebuild(kind: type[_T], data: Any) -> _T:
    """A frozen dataclass of plain values (engine.protocol's), from its JSON form."""
    assert is_dataclass(kind)
    values = {}
    nested: dict[str, type[Any]] = {
        "buffers": DeviceBuffers,
        "kv_caches": KvCache,
        "devices": DeviceSample,
    }
    for name in (f.name for f in fields(kind)):
        if name not in data:
            continue
        value = data[name]
        if name in nested and isinstance(value, list):
            value = tuple(_rebuild(nested[name], item) for item in value)
        values[name] = value
    return kind(**values)


class RemoteHost:
    """One server, for one chosen model, behind the engine host's interface.

    `send` never blocks: commands go to a worker thread, in order, except
    `Cancel`, which closes the stream under way at once. `receive` is for one
    thread only.
    """

    def __init__(self, log_path: Path, api_key: str | None = None) -> None:
        self.log_path, self.log_note = usable_log_path(log_path)
        self.api_key = api_key or None
        self.reply_timeout_s = REPLY_TIMEOUT_S
        self._events = Inbox()
        self._commands: queue.SimpleQueue[Command | None] = queue.SimpleQueue()
        self._client = httpx.Client(
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            follow_redirects=False,
        )
        self._lock = threading.Lock()
        self._response: httpx.Response | None = None
        self._running_request: int | None = None
        self._cancelled: set[int] = set()
        self._identity: Identity | None = None
        self._model_id = ""
        # The chosen model's context as the server says it (0: it does not),
        # and what its prompts are estimated to cost; the worker's alone.
        self._n_ctx = 0
        self._prompt_size = PromptSize()
        self._loaded_at = 0.0
        self._stopping = threading.Event()
        self._events.put(HostStarted(0, "", False))
        self._worker = threading.Thread(target=self._serve, name="kvchat-remote", daemon=True)
        self._worker.start()
        self._sampler = threading.Thread(
            target=self._sample_memory, name="kvchat-remote-memory", daemon=True
        )
        self._sampler.start()

    # The engine host's interface.

    @property
    def pid(self) -> int | None:
        return None

    def is_alive(self) -> bool:
        return self._worker.is_alive()

    def send(self, command: Command) -> bool:
        if self._stopping.is_set():
            return False
        if isinstance(command, Cancel):
            self._cancel(command.request_id)
            return True
        self._commands.put(command)
        return True

    def receive(self, timeout: float | None = None) -> Event | None:
        return self._events.get(timeout)

    def kill(self, reason: str) -> None:
        """Gives up on the server now: the stream under way is closed."""
        self._finish(reason)

    def stop(self, grace: float = 1.0) -> None:
        self._finish("")
        self._worker.join(grace)

    def close(self) -> None:
        self.stop()
        self._sampler.join(1.0)
        self._client.close()

    def _finish(self, reason: str) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._cancel(None)
        self._commands.put(None)
        self._events.put(HostExited(0 if not reason else None, reason or "stopped", ""))

    # The worker.

    def _log(self, line: str) -> None:
        with contextlib.suppress(OSError), self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    def _serve(self) -> None:
        while True:
            command = self._commands.get()
            if command is None or isinstance(command, Shutdown):
                self._finish("")
                return
            if isinstance(command, LoadModel):
                self._load(command.config)
            elif isinstance(command, Chat):
                self._chat(command)
            elif isinstance(command, Complete):
                self._events.put(
                    ChatFailed(
                        command.request_id,
                        "a model on another server takes chat requests only",
                        by_request=True,
                    )
                )
            elif isinstance(command, ClearSavedStates | Prepare):
                pass  # the server keeps its own caches

    def _load(self, config: LoadConfig) -> None:
        base, model_id = split_model_url(config.model_path)
        started = time.perf_counter()
        self._events.put(LoadProgress(0.0))
        try:
            identity = remote_servers.identify(self._client, base, self.api_key)
        except RemoteError as exc:
            self._log(f"load {model_id} from {base}: {exc}")
            self._events.put(LoadFailed(config.model_path, str(exc)))
            return
        model = identity.model(model_id)
        if model is None:
            message = _no_such_model(identity, base, model_id)
            self._events.put(LoadFailed(config.model_path, message))
            return
        self._identity, self._model_id = identity, model_id
        self._n_ctx = model.context_length or 0
        self._prompt_size = PromptSize()  # another model, another tokenizer
        self._loaded_at = time.perf_counter()
        self._log(f"chose {model_id} on {identity.label} at {base}")
        info = ModelInfo(
            path=config.model_path,
            name=describe_remote(config.model_path),
            architecture=model.details,
            n_params=model.n_params or 0,
            size_bytes=model.size_bytes or 0,
            n_ctx=model.context_length or 0,
            n_ctx_train=model.context_length or 0,
            n_threads=0,
            n_gpu_layers=0,
            n_layers=0,
            gpu_offload_supported=False,
            chat_template_source=f"the server's ({identity.label})",
            load_seconds=time.perf_counter() - started,
        )
        memory = LoadMemory((), (), "")
        if identity.kind == "kvchat":
            # Another kvchat reports where its model's memory went, as its panels show it.
            with contextlib.suppress(RemoteError, TypeError, KeyError, ValueError):
                report = remote_servers.sample_memory(self._client, identity, model_id)
                loaded = (report.kvchat_report or {}).get("memory")
                if isinstance(loaded, dict):
                    memory = _rebuild(LoadMemory, loaded)
        self._events.put(LoadProgress(1.0))
        self._events.put(ModelLoaded(info, memory))

    def _cancel(self, request_id: int | None) -> None:
        """Stops a request (None: the one running): a running stream is closed now."""
        with self._lock:
            running = self._running_request
            if request_id is None:
                if running is None:
                    return
                request_id = running
            self._cancelled.add(request_id)
            response = self._response if request_id == running else None
        if response is not None:
            with contextlib.suppress(Exception):
                response.close()

    def _chat(self, command: Chat) -> None:
        request_id = command.request_id
        with self._lock:
            if request_id in self._cancelled:
                self._cancelled.discard(request_id)
                self._events.put(TurnFinished(request_id, "", _empty_stats("cancelled")))
                return
            self._running_request = request_id
        identity = self._identity
        if identity is None:
            self._events.put(ChatFailed(request_id, "no model is chosen on the server"))
            return
        if command.continue_last and identity.kind not in CONTINUES:
            self._events.put(
                ChatFailed(
                    request_id,
                    f"{identity.label} cannot go on with a reply it cut short: regenerate "
                    "it, or ask for the rest in a new message",
                    by_request=True,
                )
            )
            return
        started = time.perf_counter()
        view_start = 0
        if command.drop_oldest and self._n_ctx:
            view_start = self._prompt_size.first_in_view(
                list(command.messages),
                identity.kind in READS_REASONING,
                self._n_ctx,
                command.reply_room,
            )
            seen = overflow.in_view(command.messages, view_start)
            command = replace(command, messages=tuple(seen))
        turn = _Turn(request_id, started, view_start=view_start)
        body = _request_body(identity, self._model_id, command)
        turn.sent = body["messages"]
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            with self._client.stream(
                "POST",
                identity.base_url + "/v1/chat/completions",
                json=body,
                headers=headers,
                timeout=httpx.Timeout(self.reply_timeout_s, connect=CONNECT_TIMEOUT_S),
            ) as response:
                with self._lock:
                    self._response = response
                    stopped_already = request_id in self._cancelled
                if stopped_already:  # Stop came while the request was on its way
                    response.close()
                if not response.is_success:
                    response.read()
                    raise remote_servers.status_error(
                        response, "POST /v1/chat/completions", self.api_key
                    )
                for payload in _events_of(response):
                    self._take(turn, payload)
        except (httpx.TransportError, httpx.StreamError, RemoteError, _BadStreamError) as exc:
            # A stream closed by Cancel ends here too.
            if self._was_cancelled(request_id):
                self._end(turn, "cancelled")
                return
            if isinstance(exc, httpx.TransportError):
                exc = remote_servers.transport_error(exc, identity.base_url, self._client)
            message = str(exc) or type(exc).__name__
            if turn.pieces:
                message = f"the server stopped mid-reply: {message}"
            self._log(f"chat {request_id}: {message}")
            self._drain(turn)
            self._events.put(ChatFailed(request_id, message, by_request=not turn.pieces))
            return
        finally:
            with self._lock:
                self._response = None
                self._running_request = None
        if self._was_cancelled(request_id):
            self._end(turn, "cancelled")
        elif not turn.finish_reason:
            self._drain(turn)
            self._events.put(
                ChatFailed(request_id, "the server ended the reply without finishing it")
            )
        else:
            self._end(turn, turn.finish_reason)

    def _was_cancelled(self, request_id: int) -> bool:
        with self._lock:
            if request_id in self._cancelled:
                self._cancelled.discard(request_id)
                return True
            return False

    def _take(self, turn: _Turn, payload: dict[str, Any]) -> None:
        usage = payload.get("usage")
        if isinstance(usage, dict):
            turn.usage = usage
        timings = payload.get("timings")
        if isinstance(timings, dict):
            turn.timings = timings
        for choice in payload.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                reasoning = _text(delta, "reasoning_content") or _text(delta, "reasoning")
                content = _text(delta, "content")
                if reasoning or content:
                    self._take_text(turn, reasoning, content)
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                turn.finish_reason = reason

    def _take_text(self, turn: _Turn, reasoning: str, content: str) -> None:
        """One delta's text: its reasoning field, then its content, split by the turn's splitter.

        Each delta is a token, near enough (servers send one a delta); it
        counts as thinking when it carries reasoning or the thinking is open
        before or after it.
        """
        now = time.perf_counter()
        if not turn.pieces:
            turn.first_at = now
        turn.pieces += 1
        turn.last_at = now
        splitter = turn.splitter
        was_thinking = splitter.thinking
        if reasoning:
            self._add(turn, True, reasoning)
        for thinking, text in splitter.push(content) if content else ():
            self._add(turn, thinking, text)
        if reasoning or was_thinking or splitter.thinking:
            turn.thinking_pieces += 1
            turn.thinking_ended_at = now
        if now - turn.flushed_at >= FLUSH_INTERVAL_S:
            self._flush(turn)

    def _add(self, turn: _Turn, thinking: bool, text: str) -> None:
        if turn.pending and thinking != turn.pending_thinking:
            self._flush(turn)  # a delta is one side's: the other's text goes first, in order
        turn.pending_thinking = thinking
        turn.pending += text
        if not thinking:
            turn.text += text

    def _flush(self, turn: _Turn) -> None:
        if turn.pending:
            self._events.put(
                TextDelta(turn.request_id, turn.pending, -1, thinking=turn.pending_thinking)
            )
            turn.pending = ""
        turn.flushed_at = time.perf_counter()

    def _drain(self, turn: _Turn) -> None:
        """Sends the rest of the text: the reply has ended, or failed."""
        for thinking, text in turn.splitter.finish():
            self._add(turn, thinking, text)
        self._flush(turn)

    def _end(self, turn: _Turn, reason: str) -> None:
        self._drain(turn)
        stats = turn.stats(reason)
        if stats.prompt_tokens:
            self._prompt_size.learn(turn.sent, stats.prompt_tokens)
            # What the server said of the prompt, for the KV panel: only once it said it.
            self._events.put(
                PromptEvaluated(
                    turn.request_id,
                    stats.prompt_tokens,
                    0,
                    0,
                    stats.reused_tokens,
                    stats.evaluated_tokens,
                    view_start=turn.view_start,
                )
            )
        self._events.put(TurnFinished(turn.request_id, turn.text, stats))

    # Memory figures.

    def _sample_memory(self) -> None:
        while not self._stopping.wait(SAMPLE_INTERVAL_S):
            identity, model_id = self._identity, self._model_id
            if identity is None:
                continue
            try:
                memory = remote_servers.sample_memory(self._client, identity, model_id)
            except RemoteError as exc:
                memory = ServerMemory(identity.kind, note=f"no figures: {exc}")
            self._events.put(self._memory_sample(identity, memory))

    def _memory_sample(self, identity: Identity, memory: ServerMemory) -> MemorySample:
        label = f"{identity.label} at {remote_servers.where(identity.base_url)}"
        seconds = time.perf_counter() - self._loaded_at
        figures = ServerFigures(
            label,
            memory.figures,
            memory.n_ctx,
            memory.kv_used_tokens,
            memory.kv_used_fraction,
            memory.running_requests,
            memory.waiting_requests,
            memory.note,
            memory.unavailable,
        )
        report = memory.kvchat_report
        if report is not None and isinstance(report.get("sample"), dict):
            # Another kvchat: its own panels' figures, devices and all.
            sample = _rebuild(MemorySample, report["sample"])
            return replace(sample, seconds=seconds, note=f"reported by {label}", server=figures)
        return MemorySample(
            seconds,
            (),
            memory.kv_used_tokens if memory.kv_used_tokens is not None else -1,
            False,
            memory.note or f"reported by {label}",
            server=figures,
        )


class _BadStreamError(Exception):
    """The server's answer is not a stream of server-sent events."""


def _events_of(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON payloads of a server-sent event stream, until `[DONE]`."""
    kind = response.headers.get("content-type", "")
    if "text/event-stream" not in kind:
        raise _BadStreamError(
            f"the server did not answer with a stream of events (it sent {kind or 'no type'})"
        )
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue  # comments, event names, keep-alives
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            payload = json.loads(data)
        except json.JSONDecodeError:
            raise _BadStreamError("the server sent an event that is not JSON") from None
        if isinstance(payload, dict):
            error = payload.get("error")
            if error:
                message = error.get("message") if isinstance(error, dict) else str(error)
                raise _BadStreamError(f"the server reported an error: {message}")
            yield payload


@dataclass
class _Turn:
    request_id: int
    started: float
    # Where the model's view started, and the messages sent from there (as the request has them).
    view_start: int = 0
    sent: list[dict[str, str]] = field(default_factory=list)
    text: str = ""  # the answer so far
    # Text not yet sent, all of one side (thinking or answer).
    pending: str = ""
    pending_thinking: bool = False
    splitter: ThinkingSplitter = field(default_factory=ThinkingSplitter)
    pieces: int = 0
    thinking_pieces: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    thinking_ended_at: float = 0.0
    flushed_at: float = 0.0
    finish_reason: str = ""
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None

    def stats(self, reason: str) -> TurnStats:
        usage = self.usage or {}
        prompt = _int(usage.get("prompt_tokens"))
        generated = _int(usage.get("completion_tokens")) or self.pieces
        details = usage.get("prompt_tokens_details")
        cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
        completion = usage.get("completion_tokens_details")
        # OpenAI's count of reasoning tokens, where the server gives one.
        thinking = _int(completion.get("reasoning_tokens")) if isinstance(completion, dict) else 0
        timings = self.timings or {}
        if "cache_n" in timings:
            cached = _int(timings.get("cache_n"))
        prefill_rate = float(timings.get("prompt_per_second") or 0.0)
        decode_seconds = self.last_at - self.first_at
        return TurnStats(
            prompt_tokens=prompt,
            system_tokens=0,
            history_tokens=0,
            reused_tokens=cached,
            evaluated_tokens=max(prompt - cached, 0),
            generated_tokens=generated,
            time_to_first_token_s=(self.first_at - self.started) if self.pieces else 0.0,
            prefill_tokens_per_s=prefill_rate,
            decode_tokens_per_s=(generated - 1) / decode_seconds if decode_seconds > 0 else 0.0,
            stop_reason=_stop_reason(reason),
            thinking_tokens=thinking or self.thinking_pieces,
            thinking_seconds=(
                self.thinking_ended_at - self.first_at if self.thinking_pieces else 0.0
            ),
            view_start=self.view_start,
        )


def _stop_reason(reason: str) -> StopReason:
    """OpenAI's finish_reason as kvchat's: "stop" (and anything else) is the model's own end."""
    return "length" if reason == "length" else "cancelled" if reason == "cancelled" else "eos"


def _empty_stats(reason: StopReason) -> TurnStats:
    return TurnStats(0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0, reason)


def _text(delta: dict[str, Any], name: str) -> str:
    value = delta.get(name)
    return value if isinstance(value, str) else ""


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _message(message: ChatMessage, with_thinking: bool) -> dict[str, str]:
    """A message as OpenAI's API has it; with its thinking, for a server that reads it."""
    body = {"role": message.role, "content": message.content}
    if with_thinking and message.thinking and message.role == "assistant":
        body["reasoning_content"] = message.thinking
    return body


def _request_body(identity: Identity, model_id: str, command: Chat) -> dict[str, Any]:
    """The chat completion request for `command`, in the server's dialect."""
    sampling: Sampling = command.sampling
    messages: list[ChatMessage] = list(command.messages)
    body: dict[str, Any] = {
        "model": model_id,
        "messages": [_message(m, identity.kind in READS_REASONING) for m in messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.presence_penalty:
        body["presence_penalty"] = sampling.presence_penalty
    if sampling.frequency_penalty:
        body["frequency_penalty"] = sampling.frequency_penalty
    # Sampling beyond OpenAI's, where the server is known to take it.
    if identity.kind in ("kvchat", "llama-server", "vllm"):
        body["top_k"] = sampling.top_k
        body["min_p"] = sampling.min_p
    if identity.kind == "llama-server":
        body["repeat_penalty"] = sampling.repeat_penalty
        body["cache_prompt"] = True
    elif identity.kind == "vllm":
        body["repetition_penalty"] = sampling.repeat_penalty
    if command.continue_last and identity.kind == "vllm":
        # vLLM's own switch; llama.cpp's servers continue a last assistant message by themselves.
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    return body
