"""ModelRunner: one model and one context in llama.cpp, driven through its C API.

Only the engine host imports this module. It talks to llama.cpp through
llama-cpp-python's low-level bindings rather than the high-level `Llama`
class, for three reasons: the model-loading progress callback is reachable
only there, sampling stays in C (the high-level class samples in Python,
which costs decode speed on small models), and the KV cache is trimmed to
exactly the shared prefix of the previous turn.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import llama_cpp
import numpy as np
import psutil

from kvchat.engine import overflow
from kvchat.engine.accounting import load_memory
from kvchat.engine.buffer_report import parse_buffer_report
from kvchat.engine.chat_template import ChatTemplate, PromptTemplate, TemplateError
from kvchat.engine.gguf_file import GgufInfo
from kvchat.engine.kv_store import (
    MIN_SAVED_TOKENS,
    DiskStates,
    KvStateStore,
    SavedState,
    cache_key,
    disk_budget,
    ram_budget,
    shared_prefix,
)
from kvchat.engine.llama import vocab
from kvchat.engine.llama.builtin_template import BuiltinTemplate
from kvchat.engine.llama.devices import probe_devices
from kvchat.engine.load_params import LoadParams, resolve_load_params
from kvchat.engine.protocol import (
    ChatMessage,
    LoadConfig,
    ModelInfo,
    PromptEvaluated,
    Sampling,
    StopReason,
    TurnStats,
)
from kvchat.engine.reasoning import (
    HARMONY_CHANNEL,
    HARMONY_MARKERS,
    HARMONY_MESSAGE,
    MARKERS,
    Part,
    ThinkingSplitter,
    ends_inside_thinking,
)
from kvchat.engine.template_names import BUILTIN_PREFIX
from kvchat.engine.template_worker import IsolatedTemplate, TemplateWorker
from kvchat.engine.text_stream import StopWords, Utf8Stream
from kvchat.engine.threads import CpuLoad, ThreadTuner

PENALTY_LAST_N = 64
# llama_decode's status when the abort callback stopped it.
DECODE_ABORTED = 2
# Tokens the tokenizer recognises by their text when asked to parse special
# tokens, as the rendered prompt must be (its turn markers are such tokens).
PARSED_AS_SPECIAL = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
# Put after the first character of a control token's text inside a message:
# it reads the same, and the tokenizer no longer takes it for the token.
ZERO_WIDTH_SPACE = "\u200b"
# A template's error can quote much of itself; the notice under a reply stays short.
MAX_NOTICE_REASON_CHARS = 300


class Error(Exception):
    """Base class of this module's errors; messages are meant for a person."""


class LoadError(Error):
    """llama.cpp could not load the model or create its context."""


class ChatError(Error):
    """A turn could not run: a prompt that does not fit, or llama.cpp failed on it.

    `by_request` is True when the request itself is at fault (too long for
    the context, a JSON schema llama.cpp cannot follow), not the engine.
    """

    def __init__(self, message: str, by_request: bool = False) -> None:
        super().__init__(message)
        self.by_request = by_request


class LlamaLog:
    """Receives llama.cpp's log, writes it to stderr (the host's log file) and
    keeps the last lines, so an error can say what llama.cpp complained of.

    Debug lines (thousands per load) are dropped. `capture` collects every
    line of a stretch of work, such as the buffer report of a load.
    """

    _DEBUG = 1
    _CONTINUE = 5

    def __init__(self, keep: int = 40) -> None:
        self._lines: deque[str] = deque(maxlen=keep)
        self._partial = ""
        self._level = 2
        self._captures: list[list[str]] = []
        self._callback = llama_cpp.llama_log_callback(self._on_log)
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def _on_log(self, level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if level != self._CONTINUE:
            self._level = level
        decoded = text.decode("utf-8", errors="replace")
        if self._level == self._DEBUG and not self._captures:
            return
        self._partial += decoded
        *complete, self._partial = self._partial.split("\n")
        for captured in self._captures:
            captured.extend(complete)
        if self._level != self._DEBUG:
            sys.stderr.write(decoded)
            self._lines.extend(line for line in complete if line.strip())

    @contextmanager
    def capture(self) -> Iterator[list[str]]:
        """Collects the complete lines logged inside the `with` block (nestable)."""
        lines: list[str] = []
        self._captures.append(lines)
        try:
            yield lines
        finally:
            self._captures.remove(lines)

    def last_errors(self, count: int = 3) -> str:
        """The last few lines that look like errors, or the last lines at all."""
        lines = list(self._lines)
        errors = [line for line in lines if "error" in line.lower() or "failed" in line.lower()]
        chosen = (errors or lines)[-count:]
        return "; ".join(line.strip() for line in chosen)


def _free_bytes(folder: str) -> int:
    """Free space where `folder` is, or will be (its nearest existing parent)."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def llama_cpp_version() -> str:
    return str(llama_cpp.__version__)


def gpu_offload_supported() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload())


class Penalties:
    """The repeat, frequency and presence penalties over the reply's last
    `PENALTY_LAST_N` tokens, applied to the logits before the sampler chain.

    The arithmetic is llama.cpp's penalties sampler's, in float32, so the
    logits come out the same to the bit; but that sampler looks every token
    of the vocabulary up in its table of counts (0.2 ms a token for 49k
    tokens), where this touches only the few tokens that have appeared.
    """

    def __init__(self, sampling: Sampling) -> None:
        self.active = (
            sampling.repeat_penalty != 1.0
            or sampling.frequency_penalty != 0.0
            or sampling.presence_penalty != 0.0
        )
        self._repeat = np.float32(sampling.repeat_penalty)
        self._frequency = np.float32(sampling.frequency_penalty)
        self._presence = np.float32(sampling.presence_penalty)
        self._recent: deque[int] = deque(maxlen=PENALTY_LAST_N)
        self._counts: Counter[int] = Counter()

    def accept(self, token: int) -> None:
        if not self.active:
            return
        if len(self._recent) == self._recent.maxlen:
            gone = self._recent[0]
            self._counts[gone] -= 1
            if not self._counts[gone]:
                del self._counts[gone]
        self._recent.append(token)
        self._counts[token] += 1

    def apply(self, logits: np.ndarray) -> None:
        """Penalises, in place, the logits of the tokens that appeared."""
        if not self._counts:
            return
        tokens = np.fromiter(self._counts.keys(), dtype=np.int64, count=len(self._counts))
        counts = np.fromiter(self._counts.values(), dtype=np.float32, count=len(self._counts))
        chosen = logits[tokens]
        chosen = np.where(chosen <= 0, chosen * self._repeat, chosen / self._repeat)
        logits[tokens] = chosen - (counts * self._frequency + self._presence)


def _message_starts(text: str, messages: Sequence[ChatMessage]) -> list[int]:
    """Where each message's text starts in the rendered prompt, in order.

    A message the template changed (trimmed, say) is taken to start where
    the one before it ended.
    """
    starts = []
    position = 0
    for message in messages:
        found = text.find(message.content, position)
        starts.append(found if found >= 0 else position)
        position = max(position, starts[-1] + len(message.content))
    return starts


class _Reuse(NamedTuple):
    """What a prompt found in the cache: the tokens kept, and of those the ones
    restored from a saved state, from where ("RAM", "disk") and how fast."""

    kept: int
    restored: int = 0
    source: str = ""
    seconds: float = 0.0


class _Prompt(NamedTuple):
    """A conversation rendered for the model (see `ModelRunner._render`)."""

    tokens: list[int]
    system_tokens: int
    history_tokens: int
    template_notice: str
    # The prompt leaves the reply inside its thinking (engine.reasoning).
    opens_thinking: bool


class _Text(NamedTuple):
    """A conversation's prompt as text, before the tokenizer (`ModelRunner._prompt_text`)."""

    messages: list[ChatMessage]  # as rendered, defused (`ModelRunner._defuse`)
    text: str
    notice: str  # why ChatML stood in for the model's template ("" if it did not)
    # The tokenizer adds the BOS token (the template did not write it).
    add_bos: bool
    continue_last: bool


class _ReplyText:
    """Where each sampled token's text goes: thinking to `on_thinking`, the
    answer through the stop words to `on_text`.

    The answer is kept, since it is what a turn returns; stop words apply
    to it alone, so a stop word the model thinks about does not end its
    reply. Without a splitter (raw completions) all of the text is answer.
    """

    def __init__(
        self,
        splitter: ThinkingSplitter | None,
        stop: tuple[str, ...],
        on_text: Callable[[str], None],
        on_thinking: Callable[[str], None],
    ) -> None:
        self._bytes = Utf8Stream()
        self._splitter = splitter
        self._stops = StopWords(stop)
        self._on_text = on_text
        self._on_thinking = on_thinking
        self._answer: list[str] = []
        self.thinking_tokens = 0
        self.thinking_ended_at = 0.0  # when the last token inside the thinking came

    @property
    def stopped(self) -> bool:
        """The answer reached a stop string."""
        return self._stops.stopped

    @property
    def splits(self) -> bool:
        """Whether thinking is told apart (a chat's reply, not a raw completion's)."""
        return self._splitter is not None

    def add(self, piece: bytes, now: float) -> None:
        """One sampled token's bytes, sampled at `now`.

        A token counts as thinking when the thinking is open before or after
        it: the words inside and both of its markers.
        """
        text = self._bytes.push(piece)
        splitter = self._splitter
        if splitter is None:
            self._show(text)
            return
        was_thinking = splitter.thinking
        if text:
            self._route(splitter.push(text))
        if was_thinking or splitter.thinking:
            self.thinking_tokens += 1
            self.thinking_ended_at = now

    def finish(self) -> str:
        """Passes on what was held back, now that the reply has ended; returns the answer."""
        self._show(self._bytes.finish())
        if self._splitter is not None:
            self._route(self._splitter.finish())
        rest = self._stops.finish()
        if rest:
            self._answer.append(rest)
            self._on_text(rest)
        return "".join(self._answer)

    def _route(self, parts: list[Part]) -> None:
        for thinking, text in parts:
            if self._stops.stopped:
                return
            if thinking:
                self._on_thinking(text)
            else:
                self._show(text)

    def _show(self, text: str) -> None:
        if not text:
            return
        shown = self._stops.push(text)
        if shown:
            self._answer.append(shown)
            self._on_text(shown)


class ModelRunner:
    """A loaded model with one context, whose KV cache carries over between turns.

    All methods must be called from one thread.
    """

    def __init__(
        self,
        config: LoadConfig,
        gguf: GgufInfo,
        log: LlamaLog,
        on_progress: Callable[[float], bool] = lambda _fraction: True,
    ) -> None:
        """Loads the model and creates its context.

        Args:
            config: what to load and how; None fields take the defaults.
            gguf: the file's header, already checked by `read_gguf`.
            log: llama.cpp's log, for error messages.
            on_progress: called with the fraction loaded; returning False
                aborts the load.

        Raises:
            LoadError: llama.cpp refused the model or the context.
        """
        started = time.perf_counter()
        self._log = log
        self.path = Path(config.model_path)
        llama_cpp.llama_backend_init()

        offload = gpu_offload_supported()
        model_params = llama_cpp.llama_model_default_params()
        # The same numbers the memory estimate's dry run passes (engine.load_params).
        params = resolve_load_params(config, gguf.context_length, offload)
        model_params.n_gpu_layers = params.n_gpu_layers
        self._aborted = False

        def progress(fraction: float, _user_data: ctypes.c_void_p) -> bool:
            keep_going = on_progress(fraction)
            self._aborted = not keep_going
            return keep_going

        # Held on self: ctypes callbacks must outlive the call that uses them.
        self._progress_callback = llama_cpp.llama_progress_callback(progress)
        model_params.progress_callback = self._progress_callback
        with log.capture() as report_lines:
            self._load(config, params, model_params, gguf, log)
        devices, self.device_note = probe_devices()
        self.devices = devices
        self.memory = load_memory(
            parse_buffer_report(report_lines), gguf, [d.name for d in devices]
        )
        self.info = ModelInfo(
            path=str(self.path),
            name=gguf.name,
            architecture=gguf.architecture,
            n_params=int(llama_cpp.llama_model_n_params(self._model)),
            size_bytes=int(llama_cpp.llama_model_size(self._model)),
            n_ctx=self.n_ctx,
            n_ctx_train=self.n_ctx_train,
            n_threads=self.n_threads,
            n_gpu_layers=min(params.n_gpu_layers, self.n_layers + 1),
            n_layers=self.n_layers,
            gpu_offload_supported=offload,
            chat_template_source=self._template.source,
            load_seconds=time.perf_counter() - started,
        )

    def _load(
        self,
        config: LoadConfig,
        params: LoadParams,
        model_params: llama_cpp.llama_model_params,
        gguf: GgufInfo,
        log: LlamaLog,
    ) -> None:
        """Loads the model and creates the context, as llama.cpp logs its buffers."""
        model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), model_params)
        if not model:
            if self._aborted:
                raise LoadError("loading was cancelled")
            raise LoadError(f"llama.cpp could not load {self.path.name}: {log.last_errors()}")
        self._model = model
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(model))
        self.n_layers = int(llama_cpp.llama_model_n_layer(model))

        self.n_threads = config.n_threads or physical_cores()
        # With no thread count of the person's, decode and prefill take fewer
        # threads while other processes hold cores (engine.threads).
        self.cpu_load = None if config.n_threads else CpuLoad()
        self.tuner = ThreadTuner(self.n_threads, self.cpu_load)
        self._threads_set = (self.n_threads, self.n_threads)
        self.n_batch = params.n_batch
        context_params = llama_cpp.llama_context_default_params()
        for name, value in params.context_fields().items():
            setattr(context_params, name, value)
        context_params.n_threads = self.n_threads
        context_params.n_threads_batch = self.n_threads
        context_params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(model, context_params)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise LoadError(
                f"llama.cpp could not create a context of {params.n_ctx} tokens for "
                f"{self.path.name}: {log.last_errors()}"
            )
        self._ctx = ctx
        self._memory = llama_cpp.llama_get_memory(ctx)
        self.n_ctx = int(llama_cpp.llama_n_ctx(ctx))
        # llama.cpp caps the batch at a small requested context (and pads the
        # context itself); a larger batch than it kept aborts the process.
        self.n_batch = min(self.n_batch, int(llama_cpp.llama_n_batch(ctx)))
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self._pieces: dict[int, bytes] = {}
        self._one_token = (llama_cpp.llama_token * 1)()
        self._cached: list[int] = []
        # Conversations moved out of the live cache, to be restored on return:
        # in RAM, and on disk (where they outlive the engine) when RAM is full
        # and as the model unloads.
        self.disk_states: DiskStates | None = None
        if config.kv_cache_dir and config.kv_disk_budget_bytes != 0:
            shape = {
                **params.context_fields(),
                "n_gpu_layers": params.n_gpu_layers,
                "llama_cpp": llama_cpp_version(),
            }
            self.disk_states = DiskStates(
                Path(config.kv_cache_dir),
                cache_key(str(self.path), shape),
                str(self.path),
                budget_bytes=config.kv_disk_budget_bytes
                if config.kv_disk_budget_bytes is not None
                else disk_budget(_free_bytes(config.kv_cache_dir)),
                log=lambda line: print(line, file=sys.stderr),
            )
        self.saved_states = KvStateStore(
            config.kv_ram_budget_bytes
            if config.kv_ram_budget_bytes is not None
            else ram_budget(psutil.virtual_memory().total),
            on_evict=self._to_disk,
        )
        # Set only while a prompt is evaluated: ggml calls it after every node
        # of the graph, so Stop ends a long prefill batch within milliseconds
        # instead of when the batch is done (seconds for a large model on a
        # CPU). During decode one token's graph is short, and a Python call
        # per node would cost more than it saves.
        self._abort_check: Callable[[], bool] = lambda: False
        # Called just before a saved state goes back into the cache; the
        # host's fault injection (engine.faults) strikes there in tests.
        self.before_restore: Callable[[], None] = lambda: None
        self._prepared: _Reuse | None = None  # what `prepare` restored for the next turn
        self._abort_callback = llama_cpp.ggml_abort_callback(lambda _data: self._abort_check())

        # The model's own template runs in a worker process that can be stopped.
        self._template_worker = TemplateWorker()
        control_texts = self._control_token_texts()
        self._template: PromptTemplate = BuiltinTemplate.for_model(gguf.architecture, control_texts)
        chosen = config.chat_template
        if chosen.startswith(BUILTIN_PREFIX):
            name = chosen.removeprefix(BUILTIN_PREFIX)
            self._template = BuiltinTemplate(name, f"llama.cpp's {name} (chosen in settings)")
        elif chosen or gguf.chat_template:
            text = chosen or gguf.chat_template or ""
            try:
                self._template = IsolatedTemplate.compile(
                    text, self._template_worker, "yours (from settings)" if chosen else "model"
                )
            except TemplateError as exc:
                self._template = ChatTemplate.chatml(f"ChatML ({exc})")
        self._fallback_template = ChatTemplate.chatml("ChatML")
        self._bos_text = vocab.special_text(self._vocab, llama_cpp.llama_vocab_bos(self._vocab))
        self._eos_text = vocab.special_text(self._vocab, llama_cpp.llama_vocab_eos(self._vocab))
        self._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self._marker_pieces, self._harmony = self._reasoning_markers()
        # llama.cpp makes gpt-oss's markers text tokens, which the tokenizer
        # still takes for themselves: typed in a message, they are defused too.
        defused = control_texts | (set(HARMONY_MARKERS) if self._harmony else set())
        self._control_texts = (
            re.compile("|".join(re.escape(t) for t in sorted(defused, key=len, reverse=True)))
            if defused
            else None
        )
        # What opens the thinking of a reply that is continued inside it.
        self._thinking_opening = (
            HARMONY_CHANNEL + "analysis" + HARMONY_MESSAGE if self._harmony else "<think>\n"
        )
        self._warm_up()
        if self.cpu_load is not None:
            # The first turn's reading starts here: the load's own work (the
            # template worker starting) is no neighbour's.
            self.cpu_load.restart()

    def _warm_up(self) -> None:
        """Evaluates one token and forgets it, as llama.cpp's own tools do at load.

        The first evaluation in a new context maps the weights into this
        process, touches the compute buffers and starts the threads: tens of
        milliseconds here, seconds for a large model, which would otherwise
        land on the person's first turn (or on the first turn restored from
        disk after a restart).
        """
        token = int(llama_cpp.llama_vocab_bos(self._vocab))
        if token < 0:
            token = int(llama_cpp.llama_vocab_eos(self._vocab))
        array = (llama_cpp.llama_token * 1)(max(token, 0))
        llama_cpp.llama_decode(self._ctx, llama_cpp.llama_batch_get_one(array, 1))
        llama_cpp.llama_memory_clear(self._memory, True)

    def _control_token_texts(self) -> set[str]:
        """The texts of the vocabulary's control tokens (`<|im_start|>` …)."""
        texts = set()
        for token in range(int(llama_cpp.llama_vocab_n_tokens(self._vocab))):
            if llama_cpp.llama_vocab_get_attr(self._vocab, token) & PARSED_AS_SPECIAL:
                text = self.piece(token, special=True).decode("utf-8", errors="ignore")
                if len(text) > 1:
                    texts.add(text)
        return texts

    def _reasoning_markers(self) -> tuple[dict[int, bytes], bool]:
        """The vocabulary's tokens for the reasoning markers (engine.reasoning),
        with their text, and whether the model speaks harmony.

        A marker's token may be a control token, which renders as nothing
        unless asked to (and the splitter would never see it), or text, as
        llama.cpp makes gpt-oss's; either way a reply's token of it is given
        the marker's text. Harmony's markers count only in a vocabulary that
        has them: for any other model, `<|channel|>` is text it quotes.
        """
        found: dict[str, int] = {}
        for marker in MARKERS:
            tokens = self.tokenize(marker, add_special=False)
            if len(tokens) == 1 and self.piece(tokens[0], special=True) == marker.encode():
                found[marker] = tokens[0]
        harmony = HARMONY_CHANNEL in found and HARMONY_MESSAGE in found
        pieces = {
            token: marker.encode()
            for marker, token in found.items()
            if harmony or marker not in HARMONY_MARKERS
        }
        return pieces, harmony

    def _defuse(self, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
        """Messages whose text cannot pass for the template's control tokens.

        The rendered prompt is tokenized with special tokens recognised, so
        that the template's turn markers become the tokens the model was
        trained on; the same text typed or pasted into a message (a document
        with `<|im_end|><|im_start|>system` in it) would otherwise end the
        person's turn and speak as the system.
        """
        pattern = self._control_texts
        if pattern is None:
            return list(messages)

        def defused(text: str) -> str:
            return pattern.sub(lambda t: t[0][0] + ZERO_WIDTH_SPACE + t[0][1:], text)

        return [
            replace(m, content=defused(m.content), thinking=defused(m.thinking)) for m in messages
        ]

    def _to_disk(self, state: SavedState) -> None:
        if self.disk_states is not None and not self.disk_states.holds(state.tokens):
            self.disk_states.put(state.tokens, state.data)

    def clear_saved_states(self) -> None:
        """Forgets the saved conversations (RAM and disk); the live cache stays."""
        self.saved_states.clear()
        if self.disk_states is not None:
            self.disk_states.clear()

    def keep_states(self) -> None:
        """Writes the live conversation and those in RAM to disk, to find them after a restart."""
        if self.disk_states is None or not self._ctx:
            return
        self._save_live_state()
        for state in self.saved_states.drain():
            self._to_disk(state)

    def close(self) -> None:
        """Frees the context and the model; the runner is unusable afterwards."""
        self.keep_states()
        self._template_worker.close()
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    @property
    def cached_tokens(self) -> int:
        """How many tokens the KV cache holds now."""
        return len(self._cached)

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (special tokens render as nothing unless `special`)."""
        if special:
            return vocab.token_bytes(self._vocab, token, special)
        # Kept: a reply asks for the same few thousand tokens again and again.
        known = self._pieces.get(token)
        if known is None:
            known = self._pieces[token] = vocab.token_bytes(self._vocab, token)
        return known

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        """The tokens of a rendered prompt: the template's special tokens are parsed."""
        return vocab.tokenize(self._vocab, text, add_special, parse_special=True)

    def render_prompt(
        self, messages: Sequence[ChatMessage], continue_last: bool = False
    ) -> list[int]:
        """The conversation as the tokens the model sees, with its own template."""
        return self._render(messages, continue_last).tokens

    def _render_text(self, messages: Sequence[ChatMessage], continue_last: bool) -> tuple[str, str]:
        """The prompt's text, and why ChatML stood in for the model's template ("" if not).

        A template that fails on this conversation (an error in it, a reach
        for Python's internals, a runaway render) or refuses it on purpose
        (its `raise_exception`, "roles must alternate") would otherwise stop
        the person from chatting at all; a generic prompt the model may
        follow less well is the better outcome, as long as they are told.
        """

        def render(template: PromptTemplate) -> str:
            return template.render(
                messages,
                bos_token=self._bos_text,
                eos_token=self._eos_text,
                add_generation_prompt=not continue_last,
            )

        try:
            return render(self._template), ""
        except TemplateError as exc:
            reason = str(exc)
        if len(reason) > MAX_NOTICE_REASON_CHARS:
            reason = reason[: MAX_NOTICE_REASON_CHARS - 3] + "..."
        try:
            text = render(self._fallback_template)
        except TemplateError as exc:  # pragma: no cover - ChatML renders any conversation
            raise ChatError(str(exc)) from exc
        return text, f"{reason}; a generic ChatML template was used for this reply"

    def _render(self, messages: Sequence[ChatMessage], continue_last: bool = False) -> _Prompt:
        """The prompt's tokens, where the system part and the earlier turns end,
        the template notice (see `_render_text`), and whether the prompt opens
        the reply's thinking (see `_prompt_text` and `_parts`)."""
        text = self._prompt_text(self._defuse(messages), continue_last)
        return self._parts(text, self.tokenize(text.text, add_special=text.add_bos))

    def _prompt_text(self, messages: Sequence[ChatMessage], continue_last: bool) -> _Text:
        """The prompt's text for messages already defused (`_defuse`).

        With `continue_last`, the prompt ends with the last message's text,
        left open: what the template closes a message with (its end-of-turn
        marker) is cut, and no new turn begins; a reply cut inside its
        thinking is continued there (`_resume_thinking`).
        """
        reply = messages[-1] if continue_last and messages else None
        if reply is not None and reply.thinking and not reply.content.strip():
            text, notice = self._resume_thinking(messages)
        else:
            text, notice = self._render_text(messages, continue_last)
            if continue_last:
                # Templates may trim a message; the reply goes on from its last visible character.
                kept = reply.content.rstrip() if reply is not None else ""
                end = text.rfind(kept) if kept else -1
                if end < 0:
                    raise ChatError("the reply to continue is not in the prompt the template made")
                text = text[: end + len(kept)]
        add_bos = self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        return _Text(list(messages), text, notice, add_bos, continue_last)

    def _parts(self, text: _Text, tokens: list[int]) -> _Prompt:
        """The prompt of `text` (whose tokens are `tokens`), told into its parts.

        The boundaries are found where each message's text starts in the
        rendered prompt, so the template's own wrapping around a message
        counts with the part before it. This costs two more tokenizations
        (of the text before each boundary), which is why choosing a view
        (`_view`) counts tokens without it.

        Whether the reply starts inside its thinking is read from the prompt
        after the last message before the reply: the template's generation
        prompt, and the continued reply's own words. A `<think>` a person
        typed is never taken for the template's.
        """
        messages, prompt = text.messages, text.text
        reply = messages[-1] if text.continue_last and messages else None
        starts = _message_starts(prompt, messages)
        first_turn = next(
            (start for start, m in zip(starts, messages, strict=True) if m.role != "system"),
            len(prompt),
        )
        last_turn = starts[-1] if messages and messages[-1].role != "system" else len(prompt)
        before_reply = len(messages) - (reply is not None)
        reply_from = (
            starts[before_reply - 1] + len(messages[before_reply - 1].content)
            if before_reply
            else 0
        )

        def tokens_before(offset: int) -> int:
            return len(self.tokenize(prompt[:offset], add_special=text.add_bos)) if offset else 0

        system = tokens_before(first_turn)
        history = max(tokens_before(last_turn) - system, 0)
        return _Prompt(
            tokens,
            min(system, len(tokens)),
            min(history, len(tokens) - system),
            text.notice,
            ends_inside_thinking(prompt[reply_from:], harmony=self._harmony),
        )

    def _view(
        self, text: _Text, tokens: list[int], reply_room: int
    ) -> tuple[int, _Text, list[int]]:
        """Where the model's view starts (engine.overflow), and that view's
        text and tokens, for a conversation whose whole prompt (`text`, of
        `tokens`) leaves less than `reply_room` free in the context.

        Each view the policy asks about costs one render and one
        tokenization, and it asks about O(log n) of n turns; the chosen
        view's prompt is kept, so it is not rendered again.
        """
        messages = text.messages
        tried: dict[int, tuple[_Text, list[int]]] = {0: (text, tokens)}

        def prompt_from(index: int) -> tuple[_Text, list[int]]:
            if index not in tried:
                view = self._prompt_text(overflow.in_view(messages, index), text.continue_last)
                tried[index] = (view, self.tokenize(view.text, add_special=view.add_bos))
            return tried[index]

        start = overflow.first_in_view(
            lambda index: len(prompt_from(index)[1]),
            overflow.turn_starts(messages),
            self.n_ctx,
            reply_room,
        )
        return (start, *prompt_from(start))

    def _resume_thinking(self, messages: Sequence[ChatMessage]) -> tuple[str, str]:
        """The prompt's text for a reply cut inside its thinking, and the template notice.

        A template renders a reply's thinking closed (`<think>…</think>`
        before the answer) or drops it, so the cut reply cannot be rendered
        and cut open as an answer is. Instead the conversation before it is
        rendered with the generation prompt, as for a new reply; the thinking
        is opened, unless that prompt opens it itself (DeepSeek-R1's ends with
        `<think>\n`), with `<think>\n` or, for a harmony model, its analysis
        header; and the thinking so far follows, as the model wrote it. The
        model sees what it saw while it was thinking, and goes on from there.
        """
        earlier = messages[:-1]
        text, notice = self._render_text(earlier, continue_last=False)
        starts = _message_starts(text, earlier)
        prompt_from = starts[-1] + len(earlier[-1].content) if earlier else 0
        if not ends_inside_thinking(text[prompt_from:], harmony=self._harmony):
            text += self._thinking_opening
        return text + messages[-1].thinking, notice

    def _decode(self, tokens: Sequence[int]) -> bool:
        """Evaluates `tokens`; False when the abort callback stopped it."""
        if len(tokens) == 1:
            array = self._one_token  # decode's one token a step: no new array each time
            array[0] = tokens[0]
        else:
            array = (llama_cpp.llama_token * len(tokens))(*tokens)
        status = llama_cpp.llama_decode(
            self._ctx, llama_cpp.llama_batch_get_one(array, len(tokens))
        )
        if status == DECODE_ABORTED:
            # The micro-batches evaluated before the abort stay in the cache.
            self._cached.extend(tokens[: max(self._memory_end() - len(self._cached), 0)])
            return False
        if status != 0:
            self._cached = self._cached[: self._memory_end()]
            raise ChatError(f"llama.cpp failed to evaluate the prompt (status {status})")
        self._cached.extend(tokens)
        return True

    def _prefill(self, tokens: Sequence[int], should_stop: Callable[[], bool]) -> bool:
        """Evaluates the prompt's new tokens in batches; False when stopped."""
        self._abort_check = should_stop
        llama_cpp.llama_set_abort_callback(self._ctx, self._abort_callback, None)
        try:
            for start in range(0, len(tokens), self.n_batch):
                if should_stop() or not self._decode(tokens[start : start + self.n_batch]):
                    return False
            return True
        finally:
            llama_cpp.llama_set_abort_callback(self._ctx, llama_cpp.ggml_abort_callback(), None)
            self._abort_check = lambda: False

    def _set_threads(self, decode: int, batch: int) -> None:
        if (decode, batch) != self._threads_set:
            llama_cpp.llama_set_n_threads(self._ctx, decode, batch)
            self._threads_set = (decode, batch)

    def _memory_end(self) -> int:
        return int(llama_cpp.llama_memory_seq_pos_max(self._memory, 0)) + 1

    def _reuse_prefix(self, prompt: Sequence[int]) -> _Reuse:
        """Makes the cache hold the longest prefix of the prompt it can.

        That prefix comes from the live cache or from a saved state of an
        earlier conversation (engine.kv_store), whichever shares more. Before
        the live cache loses more than a few tokens, its state is saved. At
        least one token is always left to evaluate, since sampling needs the
        logits of the prompt's last token.

        Returns:
            The tokens kept, and those of them restored from a saved state.
        """
        limit = len(prompt) - 1
        live = min(shared_prefix(self._cached, prompt), limit)
        saved, from_saved = self.saved_states.best_match(prompt)
        from_saved = min(from_saved, limit)
        on_disk, from_disk = self.disk_states.best_match(prompt) if self.disk_states else (None, 0)
        from_disk = min(from_disk, limit)
        restored = 0
        source = ""
        started = time.perf_counter()
        if saved is not None and from_saved >= max(live + MIN_SAVED_TOKENS, from_disk):
            self._save_live_state()
            # A state used whole moves to the live cache; one used in part (a
            # shared system prompt) stays, for its own conversation's return.
            whole = from_saved == len(saved.tokens)
            self.before_restore()
            if self._restore(self.saved_states.take(saved) if whole else saved):
                live, restored, source = from_saved, from_saved, "RAM"
            else:
                live = 0
        elif on_disk is not None and from_disk >= live + MIN_SAVED_TOKENS:
            assert self.disk_states is not None
            self._save_live_state()
            with self.disk_states.opened(on_disk, keep=from_disk < len(on_disk.tokens)) as state:
                if state is not None:
                    self.before_restore()
                loaded = state is not None and self._restore(state)
            if loaded:
                live, restored, source = from_disk, from_disk, "disk"
            else:
                # A file that failed its check is gone; the prompt is evaluated.
                live = min(shared_prefix(self._cached, prompt), limit)
        elif len(self._cached) - live >= MIN_SAVED_TOKENS:
            self._save_live_state()
        seconds = time.perf_counter() - started
        if not llama_cpp.llama_memory_seq_rm(self._memory, 0, live, -1):
            llama_cpp.llama_memory_clear(self._memory, True)
            live = restored = 0
        del self._cached[live:]
        if not restored:
            return _Reuse(live)
        return _Reuse(live, restored, source, seconds)

    def _save_live_state(self) -> None:
        """Copies the live sequence's keys and values into the saved states
        (RAM, or straight to disk when RAM has no room for it)."""
        tokens = self._cached
        disk = self.disk_states
        if len(tokens) < MIN_SAVED_TOKENS or self.saved_states.holds(tokens):
            return
        if disk is not None and disk.holds(tokens):
            return
        size = int(llama_cpp.llama_state_seq_get_size(self._ctx, 0))
        fits_ram = 0 < size <= self.saved_states.budget_bytes
        if not fits_ram and (disk is None or size <= 0 or size > disk.budget_bytes):
            return
        data = bytearray(size)
        view = (ctypes.c_uint8 * size).from_buffer(data)
        written = int(llama_cpp.llama_state_seq_get_data(self._ctx, view, size, 0))
        del view  # releases the bytearray, which can then be cut to length
        if not written:
            return
        del data[written:]
        if fits_ram:
            self.saved_states.put(tokens, data)
        elif disk is not None:
            disk.put(tokens, data)

    def _restore(self, state: SavedState) -> bool:
        """Puts a saved state in the live sequence; False (and an empty cache) on failure."""
        llama_cpp.llama_memory_seq_rm(self._memory, 0, -1, -1)
        self._cached = []
        buffer = (ctypes.c_uint8 * state.size).from_buffer(state.data)
        restored = llama_cpp.llama_state_seq_set_data(self._ctx, buffer, state.size, 0)
        del buffer  # the bytearray may be resized or freed again
        if not restored:
            llama_cpp.llama_memory_clear(self._memory, True)
            self._cached = []
            return False
        self._cached = list(state.tokens)
        return True

    def _logits(self) -> np.ndarray:
        """The last token's logits, in llama.cpp's buffer (written in place by `Penalties`)."""
        logits = llama_cpp.llama_get_logits_ith(self._ctx, -1)
        if not logits:
            raise ChatError("llama.cpp gave no logits for the last token")
        return np.ctypeslib.as_array(logits, shape=(self._n_vocab,))

    def _make_sampler(self, sampling: Sampling) -> llama_cpp.llama_sampler_p:
        params = llama_cpp.llama_sampler_chain_default_params()
        chain: llama_cpp.llama_sampler_p = llama_cpp.llama_sampler_chain_init(params)
        add = llama_cpp.llama_sampler_chain_add
        if sampling.json_mode:
            # First in the chain: tokens that break the grammar never reach the others.
            add(chain, self._grammar_sampler(sampling))
        # Penalties come before the rest, applied to the logits (`Penalties`).
        if sampling.temperature <= 0:  # with a grammar; else `_generate` picks alone
            add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        seed = sampling.seed if sampling.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
        add(chain, llama_cpp.llama_sampler_init_top_k(sampling.top_k))
        add(chain, llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
        add(chain, llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
        add(chain, llama_cpp.llama_sampler_init_temp(sampling.temperature))
        add(chain, llama_cpp.llama_sampler_init_dist(seed))
        return chain

    def _grammar_sampler(self, sampling: Sampling) -> llama_cpp.llama_sampler_p:
        """A sampler that allows only JSON (of the request's schema, if it has one)."""
        from llama_cpp import llama_grammar

        if sampling.json_mode == "schema":
            try:
                grammar = llama_grammar.json_schema_to_gbnf(sampling.json_schema)
            except Exception as exc:  # the converter raises whatever it meets
                raise ChatError(
                    f"the JSON schema cannot be followed: {exc}", by_request=True
                ) from exc
        else:
            grammar = llama_grammar.JSON_GBNF
        sampler: llama_cpp.llama_sampler_p = llama_cpp.llama_sampler_init_grammar(
            self._vocab, grammar.encode("utf-8"), b"root"
        )
        if not sampler:
            raise ChatError(
                "llama.cpp could not use the grammar of this JSON schema: "
                + self._log.last_errors(),
                by_request=True,
            )
        return sampler

    def chat(
        self,
        messages: Sequence[ChatMessage],
        sampling: Sampling,
        should_stop: Callable[[], bool],
        on_text: Callable[[str], None],
        on_prompt: Callable[[PromptEvaluated], None] = lambda _prompt: None,
        continue_last: bool = False,
        on_thinking: Callable[[str], None] = lambda _text: None,
        reply_room: int = 0,
        drop_oldest: bool = False,
    ) -> tuple[str, TurnStats]:
        """Generates the assistant's reply to the conversation.

        Only the tokens that are new since the previous turn are evaluated
        (or since a saved state of this conversation, when another ran in
        between). `should_stop` is polled between tokens, and while the
        prompt is evaluated after every step of llama.cpp's graph.
        The answer reaches `on_text` and the reasoning before it reaches
        `on_thinking` (engine.reasoning; the markers reach neither), in
        pieces that are always whole characters; `on_prompt` hears once the
        prompt is in the cache. With `continue_last`, the last message is a
        reply to go on with, in its thinking when it was cut there.

        With `drop_oldest`, a conversation that leaves less than `reply_room`
        of the context free loses its oldest turns from the model's view
        (engine.overflow, with exact counts: `_view`), and the view's start
        is reported as `view_start`; without it, the whole conversation is
        the prompt. A conversation that fits costs what it always did: one
        render and three tokenizations (the prompt, and the text before each
        boundary between its parts).

        Returns:
            The reply's answer (its thinking only went to `on_thinking`) and
            the turn's statistics.

        Raises:
            ChatError: the prompt does not fit the context, or llama.cpp
                failed to evaluate. (A template that fails gives way to ChatML,
                and `TurnStats.template_notice` says why.)
        """
        started = time.perf_counter()
        text = self._prompt_text(self._defuse(messages), continue_last)
        tokens = self.tokenize(text.text, add_special=text.add_bos)
        view_start = 0
        if drop_oldest and len(tokens) + reply_room > self.n_ctx:
            view_start, text, tokens = self._view(text, tokens, reply_room)
        if len(tokens) >= self.n_ctx:
            raise ChatError(
                f"the conversation is {len(tokens)} tokens long, and the context holds "
                f"{self.n_ctx}: start a new conversation or raise the context size",
                by_request=True,
            )
        prompt = self._parts(text, tokens)
        splitter = ThinkingSplitter(prompt.opens_thinking, harmony=self._harmony)
        reply = _ReplyText(splitter, sampling.stop, on_text, on_thinking)
        return self._generate(
            prompt.tokens,
            sampling,
            should_stop,
            reply,
            on_prompt,
            started,
            (prompt.system_tokens, prompt.history_tokens),
            prompt.template_notice,
            view_start,
        )

    def prepare(self, messages: Sequence[ChatMessage]) -> None:
        """Brings the best saved state for this conversation into the live cache.

        Called as a conversation is opened, so that the restore (tens of
        milliseconds from disk for a long conversation) happens while the
        person reads, and their next turn starts as if the cache had never
        left. The live conversation's state is saved first, as a turn would.
        What was restored is reported with that next turn.
        """
        try:
            prompt = self._render(messages).tokens
        except ChatError:
            return
        if len(prompt) < 2 or len(prompt) >= self.n_ctx:
            return
        reuse = self._reuse_prefix(prompt)
        self._prepared = reuse if reuse.restored else None

    def complete(
        self,
        prompt_text: str,
        sampling: Sampling,
        should_stop: Callable[[], bool],
        on_text: Callable[[str], None],
        on_prompt: Callable[[PromptEvaluated], None] = lambda _prompt: None,
    ) -> tuple[str, TurnStats]:
        """Continues raw text, with no chat template and no thinking told
        apart (all of it reaches `on_text`); otherwise as `chat`."""
        started = time.perf_counter()
        prompt = self.tokenize(prompt_text, add_special=self._add_bos)
        if not prompt:
            raise ChatError("the prompt is empty", by_request=True)
        if len(prompt) >= self.n_ctx:
            raise ChatError(
                f"the prompt is {len(prompt)} tokens long, and the context holds {self.n_ctx}",
                by_request=True,
            )
        reply = _ReplyText(None, sampling.stop, on_text, lambda _text: None)
        return self._generate(prompt, sampling, should_stop, reply, on_prompt, started, (0, 0), "")

    def _generate(
        self,
        prompt: list[int],
        sampling: Sampling,
        should_stop: Callable[[], bool],
        reply: _ReplyText,
        on_prompt: Callable[[PromptEvaluated], None],
        started: float,
        parts_before: tuple[int, int],
        template_notice: str,
        view_start: int = 0,
    ) -> tuple[str, TurnStats]:
        """Evaluates the prompt's new tokens and samples the reply into `reply`.

        `view_start` is only reported: where a chat's view started (`chat`).

        A chat's reasoning markers are rendered even where they are control
        tokens, for the splitter to see (`_reasoning_markers`); a raw
        completion's control tokens render as nothing, as a chat's others do.
        """
        system_tokens, history_tokens = parts_before
        # Greedy is the highest logit, the first of equals, as llama.cpp's greedy
        # sampler picks it but without its copy of every logit into
        # candidates (0.1 ms a token for a 49k vocabulary).
        greedy = sampling.temperature <= 0 and not sampling.json_mode
        sampler = None if greedy else self._make_sampler(sampling)
        penalties = Penalties(sampling)
        tuner = self.tuner
        try:
            reuse = self._reuse_prefix(prompt)
            prepared, self._prepared = self._prepared, None
            if not reuse.restored and prepared is not None:
                # Restored as the conversation opened (`prepare`), and still live.
                reuse = reuse._replace(
                    restored=min(prepared.restored, reuse.kept),
                    source=prepared.source,
                    seconds=prepared.seconds,
                )
            reused = reuse.kept
            pending = prompt[reused:]
            stop_reason: StopReason | None = None

            self._set_threads(tuner.threads, tuner.start_turn())
            prefill_started = time.perf_counter()
            if not self._prefill(pending, should_stop):
                stop_reason = "cancelled"
            prefill_seconds = time.perf_counter() - prefill_started
            evaluated = len(self._cached) - reused
            on_prompt(
                PromptEvaluated(
                    0,
                    len(prompt),
                    system_tokens,
                    history_tokens,
                    reused,
                    evaluated,
                    reuse.restored,
                    reuse.source,
                    reuse.seconds,
                    view_start,
                )
            )

            markers = self._marker_pieces if reply.splits else {}
            generated = 0
            first_token_at = last_token_at = 0.0
            while stop_reason is None:
                if should_stop():
                    stop_reason = "cancelled"
                    break
                logits = self._logits()
                penalties.apply(logits)
                if sampler is None:
                    token = int(logits.argmax())
                else:
                    token = llama_cpp.llama_sampler_sample(sampler, self._ctx, -1)
                penalties.accept(token)
                now = time.perf_counter()
                if generated:
                    threads = tuner.after_token(now - last_token_at)
                    if threads is not None:
                        self._set_threads(threads, self._threads_set[1])
                else:
                    first_token_at = now
                last_token_at = now
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    stop_reason = "eos"
                    break
                generated += 1
                reply.add(markers.get(token) or self.piece(token), now)
                if reply.stopped:
                    stop_reason = "stop"
                elif generated >= sampling.max_tokens:
                    stop_reason = "length"
                elif len(self._cached) + 1 >= self.n_ctx:
                    stop_reason = "context_full"
                else:
                    self._decode([token])
        finally:
            if sampler is not None:
                llama_cpp.llama_sampler_free(sampler)
        answer = reply.finish()

        decode_seconds = last_token_at - first_token_at
        stats = TurnStats(
            prompt_tokens=len(prompt),
            system_tokens=system_tokens,
            history_tokens=history_tokens,
            reused_tokens=reused,
            evaluated_tokens=evaluated,
            generated_tokens=generated,
            time_to_first_token_s=(first_token_at - started) if first_token_at else 0.0,
            prefill_tokens_per_s=evaluated / prefill_seconds if prefill_seconds > 0 else 0.0,
            decode_tokens_per_s=(generated - 1) / decode_seconds if decode_seconds > 0 else 0.0,
            stop_reason=stop_reason,
            template_notice=template_notice,
            restored_tokens=reuse.restored,
            restored_from=reuse.source,
            restore_seconds=reuse.seconds,
            decode_threads=tuner.threads,
            threads_note=tuner.note,
            thinking_tokens=reply.thinking_tokens,
            thinking_seconds=(
                reply.thinking_ended_at - first_token_at if reply.thinking_tokens else 0.0
            ),
            view_start=view_start,
        )
        return answer, stats
