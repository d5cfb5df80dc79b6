"""`kvchat bench`: kvchat's speed against llama.cpp itself, and what the window costs.

One run measures, on one model (default: the bundled one):

1. Decode and prefill tokens/s through the whole kvchat path (engine host,
   pipe, reader QThread, queued Qt signal; timed on the GUI thread when the
   text arrives) against a direct llama.cpp loop in one process
   (`kvchat.engine.llama.bench_direct`: same model, threads, batch and context, the same
   prompt tokens, greedy sampling in C on both sides). The ratio
   kvchat / direct is the figure.
2. Time to first token at turns 1, 5, 10 and 20 of a conversation whose new
   messages all have the same length; whether each turn evaluated only its
   new tokens (the message plus the template's own); and, for reference,
   llama.cpp's own time for the same new tokens on the same cached prefix.
3. The window's cost per streamed token (CPU and wall time in the append
   path) with 10 and with 1,000 messages in view, and the gaps in a 1 ms
   timer meanwhile, fed at 500 tokens/s by a scripted stream (no model), so
   that the figures are the GUI's alone.
4. Time from launching `python -m kvchat.app` to the window shown and to the model
   ready for the first message (the app reports both, see app.gui).
5. Memory: the RSS of the GUI process, and of the engine host beyond what
   the model itself takes (see EngineMemory for how that is measured).

Every figure is a median over runs with its range (min-max). The two sides
of each comparison alternate run by run, in ABBA order, so that a drift in
the machine's speed falls on both alike. The results go to a JSON file and a
PNG chart; the tables go to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil
from PySide6.QtCore import QEventLoop, QObject, Qt, QThread, QTimer, Signal, SignalInstance, Slot
from PySide6.QtWidgets import QApplication

from kvchat.app.bench.busy import Burner, recovery_tokens
from kvchat.app.bench.chart import draw_chart
from kvchat.app.core.paths import engine_log_path
from kvchat.app.core.settings import EngineSettings
from kvchat.app.presenters.engine_client import EngineClient
from kvchat.app.presenters.gui import EXIT_WHEN_READY_ENV, missing_display
from kvchat.engine.children import child_environment, python_command, safe_working_folder
from kvchat.engine.load_params import resolve_load_params
from kvchat.engine.models import bundled_model_path, missing_model_message
from kvchat.engine.protocol import (
    ChatMessage,
    HostExited,
    HostStarted,
    LoadConfig,
    LoadFailed,
    LoadMemory,
    ModelInfo,
    Sampling,
    TurnStats,
)
from kvchat.ui.main_window import MainWindow

GOAL_DECODE_RATIO = 0.97
GOAL_DECODE_OVER_BARE = 0.95
GOAL_BUSY_RATIO = 0.9
GOAL_PREFILL_RATIO = 0.95
GOAL_TTFT_GROWTH = 1.2
TTFT_TURNS = (1, 5, 10, 20)
GUI_RATE = 500.0
GUI_VIEWS = (10, 1000)
HEARTBEAT_MS = 1
TURN_TIMEOUT_S = 300.0
LAUNCH_TIMEOUT_S = 180.0

DECODE_PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."
NOTES = (
    "The lighthouse stood on a spit of black rock where the estuary met the sea. Its keeper "
    "kept a log of every ship that passed, the height of the tide at dawn and dusk, the colour "
    "of the sky, and the direction of the wind. In winter the storms came from the north-west "
    "and lasted three days; the lamp burned paraffin, and the wick had to be trimmed every four "
    "hours. Supplies came by boat once a fortnight when the weather allowed, and sometimes it "
    "did not allow for six weeks. The keeper's daughter learned to read the barometer before she "
    "could read a book, and she could name the ships by the shape of their masts at a distance "
    "of five miles."
)
PARAGRAPH_WORDS = 60


class BenchError(Exception):
    """The benchmark could not run; the message says what failed."""


@dataclass(frozen=True)
class Sizes:
    """How much each section does. `quick` is a smoke test: its figures mean
    nothing, and it runs the engine on one thread (`threads`; None is kvchat's
    default), because on a busy machine a thread per core can crawl."""

    threads: int | None
    runs: int
    decode_tokens: int
    notes_words: int
    question_words: int
    reply_tokens: int
    gui_tokens: int
    # The recovery section's reply, and when into it the burner stops.
    recovery_tokens: int
    recovery_stop_after: int


MAX_RUNS = 1000
MAX_DECODE_TOKENS = 2048

FULL = Sizes(
    threads=None,
    runs=5,
    decode_tokens=200,
    notes_words=340,
    question_words=30,
    reply_tokens=16,
    gui_tokens=1000,
    recovery_tokens=400,
    recovery_stop_after=100,
)
QUICK = Sizes(
    threads=1,
    runs=1,
    decode_tokens=8,
    notes_words=60,
    question_words=8,
    reply_tokens=3,
    gui_tokens=40,
    recovery_tokens=48,
    recovery_stop_after=4,
)


@dataclass(frozen=True)
class Spread:
    """A median over runs, the range around it, and every run's value."""

    median: float
    low: float
    high: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values), tuple(values))

    def text(self, digits: int = 1, scale: float = 1.0) -> str:
        """'12.3 (11.9-12.8)', with an en dash: the median and the range."""
        m, lo, hi = (round(v * scale, digits) for v in (self.median, self.low, self.high))
        return f"{m:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _notes(words: int) -> str:
    """`words` words of the keeper's notes, from the start, over again as needed."""
    source = NOTES.split()
    return " ".join(source[i % len(source)] for i in range(words))


def prefill_messages(words: int, run: int = 0) -> list[ChatMessage]:
    """A long prompt. kvchat's turn before it is always the decode prompt,
    whose system prompt (the template's default) differs from this one's from
    the first word on, so kvchat's cache keeps only the template's opening
    tokens and evaluates the rest. Each run's system prompt differs from the
    first word too (`run`), or kvchat would restore the last run's saved keys
    and values (engine.kv_store) and evaluate one token."""
    return [
        ChatMessage("system", f"Run {run + 1}: you summarise a lighthouse keeper's notes."),
        ChatMessage("user", f"Notes: {_notes(words)}\nSummarise the notes in one sentence."),
    ]


def question(conversation: int, turn: int, words: int) -> str:
    """A new message: all have the same tokens but their numbers (one token a
    digit), and the first differs from the last conversation's, so that the
    cache holds none of a first message."""
    return f"{conversation % 10}{turn:02d}. {_notes(words)}?"


def _wait_until(
    done: Callable[[], bool], wake: Sequence[SignalInstance], timeout_s: float, what: str
) -> None:
    """Runs the event loop until `done()` holds, checking when a `wake` signal fires.

    A nested event loop sleeps between events, so waiting costs no CPU that
    the engine could use.
    """
    loop = QEventLoop()

    def check(*_args: object) -> None:
        if done():
            loop.quit()

    timer = QTimer()
    timer.setSingleShot(True)
    timer.timeout.connect(loop.quit)
    for signal in wake:
        signal.connect(check)
    timer.start(int(timeout_s * 1000))
    try:
        if not done():
            loop.exec()
    finally:
        timer.stop()
        for signal in wake:
            signal.disconnect(check)
    if not done():
        raise BenchError(f"no {what} within {timeout_s:.0f} s")


# kvchat's side and the direct side.


@dataclass(frozen=True)
class KvchatTurn:
    """One reply through the whole path; times are taken on the GUI thread."""

    stats: TurnStats
    text: str
    first_text_s: float
    stream_s: float
    # (seconds, tokens in the cache) as each piece of text arrived.
    fills: tuple[tuple[float, int], ...] = ()


class KvchatPath(QObject):
    """kvchat's engine as the window uses it: an EngineClient, its reader
    QThread and the engine host process behind the pipe."""

    def __init__(self, model_path: str, settings: EngineSettings, data_dir: Path) -> None:
        super().__init__()
        self.model_path = model_path
        self.settings = settings
        self.engine_log = engine_log_path(data_dir)
        self.engine = EngineClient(self.engine_log, self)
        self.host_pid: int | None = None
        self.info: ModelInfo | None = None
        self.memory: LoadMemory | None = None
        self._failure: str | None = None
        self._request_id = -1
        self._arrivals: list[float] = []
        self._fills: list[tuple[float, int]] = []
        self._on_fill: Callable[[int], None] = lambda _tokens: None
        self._finished: tuple[float, str, TurnStats] | None = None
        self.engine.host_started.connect(self._on_host_started)
        self.engine.memory_reported.connect(self._on_memory)
        self.engine.model_loaded.connect(self._on_model_loaded)
        self.engine.load_failed.connect(self._on_load_failed)
        self.engine.text_received.connect(self._on_text)
        self.engine.cache_filled.connect(self._on_cache_filled)
        self.engine.turn_finished.connect(self._on_turn_finished)
        self.engine.chat_failed.connect(self._on_chat_failed)
        self.engine.host_exited.connect(self._on_host_exited)

    def _on_host_started(self, event: HostStarted) -> None:
        self.host_pid = event.pid

    def _on_memory(self, memory: LoadMemory) -> None:
        self.memory = memory

    def _on_model_loaded(self, info: ModelInfo) -> None:
        self.info = info

    def _on_load_failed(self, failure: LoadFailed) -> None:
        self._failure = f"could not load {Path(failure.model_path).name}: {failure.message}"

    def _on_text(self, request_id: int, _text: str) -> None:
        if request_id == self._request_id:
            self._arrivals.append(time.perf_counter())

    def _on_cache_filled(self, tokens: int) -> None:
        if self._finished is None:
            self._fills.append((time.perf_counter(), tokens))
            self._on_fill(tokens)

    def _on_turn_finished(self, request_id: int, text: str, stats: TurnStats) -> None:
        if request_id == self._request_id:
            self._finished = (time.perf_counter(), text, stats)

    def _on_chat_failed(self, request_id: int, message: str) -> None:
        if request_id == self._request_id:
            self._failure = message

    def _on_host_exited(self, event: HostExited) -> None:
        self._failure = f"{event.description} (log: {self.engine_log})"

    def _check(self) -> None:
        if self._failure is not None:
            raise BenchError(f"kvchat's engine: {self._failure}")

    def load(self) -> ModelInfo:
        self.engine.load(self.settings.load_config(self.model_path))
        engine = self.engine
        _wait_until(
            lambda: self.info is not None or self._failure is not None,
            [engine.model_loaded, engine.load_failed, engine.host_exited],
            TURN_TIMEOUT_S,
            "loaded model",
        )
        self._check()
        assert self.info is not None
        return self.info

    def turn(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        on_fill: Callable[[int], None] = lambda _tokens: None,
    ) -> KvchatTurn:
        """One greedy reply; `on_fill` hears the cache's token count as text arrives."""
        self._arrivals.clear()
        self._fills.clear()
        self._on_fill = on_fill
        self._finished = None
        sampling = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=max_tokens)
        sent = time.perf_counter()
        self._request_id = self.engine.chat(messages, sampling)
        engine = self.engine
        _wait_until(
            lambda: self._finished is not None or self._failure is not None,
            [engine.turn_finished, engine.chat_failed, engine.host_exited],
            TURN_TIMEOUT_S,
            "reply",
        )
        self._check()
        assert self._finished is not None
        finished_at, text, stats = self._finished
        first = self._arrivals[0] if self._arrivals else finished_at
        last = self._arrivals[-1] if self._arrivals else finished_at
        return KvchatTurn(stats, text, first - sent, last - first, tuple(self._fills))

    def close(self) -> None:
        self.engine.shutdown()


@dataclass(frozen=True)
class DirectTurn:
    prompt_tokens: int
    evaluated_tokens: int
    prefill_s: float
    decode_s: float
    generated_tokens: int
    text: str
    tokens: tuple[int, ...]


class DirectProcess:
    """The direct llama.cpp loop, `kvchat.engine.llama.bench_direct`, in a process of its own
    (the GUI process never imports llama_cpp), loaded as kvchat's engine was."""

    def __init__(self, info: ModelInfo, n_batch: int, log_path: Path) -> None:
        command = python_command(
            "kvchat.engine.llama.bench_direct",
            "--model",
            info.path,
            "--n-ctx",
            str(info.n_ctx),
            "--n-batch",
            str(n_batch),
            "--threads",
            str(info.n_threads),
            "--gpu-layers",
            str(info.n_gpu_layers),
        )
        self.log_path = log_path
        self._log = log_path.open("w", encoding="utf-8")
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            encoding="utf-8",
            env=child_environment(),
            cwd=safe_working_folder(),
        )
        self.rss_before_model = int(self._receive()["rss_before_model_bytes"])

    @property
    def pid(self) -> int:
        return self._process.pid

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self._process.stdin is not None and self._process.stdout is not None
        return self._process.stdin, self._process.stdout

    def _receive(self) -> dict[str, Any]:
        line = self._pipes()[1].readline()
        if not line:
            raise BenchError(f"the direct llama.cpp loop ended (log: {self.log_path})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise BenchError(f"the direct llama.cpp loop: {reply['error']}")
        return reply

    def _ask(self, **request: object) -> dict[str, Any]:
        requests = self._pipes()[0]
        requests.write(json.dumps(request) + "\n")
        requests.flush()
        return self._receive()

    def run(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        cached: int = 0,
        threads: int | None = None,
    ) -> DirectTurn:
        """A turn whose first `cached` prompt tokens are in the cache already,
        on `threads` (None: kvchat's count at load)."""
        pairs = [[m.role, m.content] for m in messages]
        reply = self._ask(
            op="run", messages=pairs, max_tokens=max_tokens, cached=cached, threads=threads
        )
        return DirectTurn(
            reply["prompt_tokens"],
            reply["evaluated_tokens"],
            reply["prefill_s"],
            reply["decode_s"],
            reply["generated_tokens"],
            reply["text"],
            tuple(reply["tokens"]),
        )

    def bare(self, messages: Sequence[ChatMessage], tokens: Sequence[int]) -> float:
        """llama.cpp's bare decode of a reply's tokens after its prompt: tokens/s."""
        pairs = [[m.role, m.content] for m in messages]
        reply = self._ask(op="bare", messages=pairs, tokens=list(tokens))
        seconds = float(reply["decode_s"])
        return int(reply["decoded_tokens"]) / seconds if seconds > 0 else 0.0

    def count(self, text: str) -> int:
        return int(self._ask(op="count", text=text)["tokens"])

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._log.close()


# 1. Decode and prefill speed.


@dataclass(frozen=True)
class SideBySide:
    """One speed through kvchat and directly; `kvchat_engine` is what the host
    itself measured, before the pipe, for telling where a gap comes from."""

    kvchat: Spread
    direct: Spread
    ratio: Spread
    kvchat_engine: Spread


@dataclass(frozen=True)
class SpeedResult:
    """Decode and prefill, kvchat against direct.

    `decode_tokens` is what each decode run generated, both sides in run
    order; `prefill_evaluated_tokens` is what kvchat evaluated of the
    `prefill_prompt_tokens` (its cache held the template's first tokens), and
    `same_reply` whether every decode run on both sides wrote the same text,
    as greedy sampling on the same tokens should. `bare_decode` is llama.cpp
    evaluating the direct reply's tokens with nothing around it (no sampling,
    no text: `DirectProcess.bare`), the floor of any loop; `decode_over_bare`
    is kvchat's whole path against it, run by run.
    """

    decode: SideBySide
    prefill: SideBySide
    bare_decode: Spread
    decode_over_bare: Spread
    decode_tokens: tuple[int, ...]
    prefill_prompt_tokens: int
    prefill_evaluated_tokens: tuple[int, ...]
    same_reply: bool


def _decode_rate(generated: int, seconds: float) -> float:
    return (generated - 1) / seconds if seconds > 0 and generated > 1 else 0.0


def measure_speed(
    kvchat: KvchatPath, direct: DirectProcess, sizes: Sizes, say: Callable[[str], None]
) -> SpeedResult:
    """Each run is a decode turn and a prefill turn on each side, the sides
    in turn first, after one untimed decode turn each to warm both up."""
    decode_prompt = [ChatMessage("user", DECODE_PROMPT)]
    rates: dict[str, list[float]] = {
        key: []
        for key in (
            "kv_decode",
            "kv_decode_engine",
            "direct_decode",
            "kv_prefill",
            "kv_prefill_engine",
            "direct_prefill",
            "bare_decode",
        )
    }
    decode_tokens: list[int] = []
    evaluated: list[int] = []
    prompt_tokens = 0
    replies: set[str] = set()

    def kvchat_side(run: int) -> None:
        turn = kvchat.turn(decode_prompt, sizes.decode_tokens)
        rates["kv_decode"].append(_decode_rate(turn.stats.generated_tokens, turn.stream_s))
        rates["kv_decode_engine"].append(turn.stats.decode_tokens_per_s)
        decode_tokens.append(turn.stats.generated_tokens)
        replies.add(turn.text)
        turn = kvchat.turn(prefill_messages(sizes.notes_words, run), 1)
        rates["kv_prefill"].append(turn.stats.evaluated_tokens / turn.first_text_s)
        rates["kv_prefill_engine"].append(turn.stats.prefill_tokens_per_s)
        evaluated.append(turn.stats.evaluated_tokens)

    def direct_side(run: int) -> None:
        nonlocal prompt_tokens
        turn = direct.run(decode_prompt, sizes.decode_tokens)
        rates["direct_decode"].append(_decode_rate(turn.generated_tokens, turn.decode_s))
        decode_tokens.append(turn.generated_tokens)
        replies.add(turn.text)
        rates["bare_decode"].append(direct.bare(decode_prompt, turn.tokens))
        turn = direct.run(prefill_messages(sizes.notes_words, run), 1)
        rates["direct_prefill"].append(turn.prompt_tokens / turn.prefill_s)
        prompt_tokens = turn.prompt_tokens

    say("decode and prefill: warming up both sides")
    kvchat.turn(decode_prompt, sizes.decode_tokens)
    direct.run(decode_prompt, sizes.decode_tokens)
    for run in range(sizes.runs):
        say(f"decode and prefill: run {run + 1} of {sizes.runs}")
        first, second = (kvchat_side, direct_side) if run % 2 == 0 else (direct_side, kvchat_side)
        first(run)
        second(run)

    def side_by_side(kind: str) -> SideBySide:
        kv, dr = rates[f"kv_{kind}"], rates[f"direct_{kind}"]
        return SideBySide(
            kvchat=Spread.of(kv),
            direct=Spread.of(dr),
            ratio=Spread.of([k / d for k, d in zip(kv, dr, strict=True)]),
            kvchat_engine=Spread.of(rates[f"kv_{kind}_engine"]),
        )

    return SpeedResult(
        decode=side_by_side("decode"),
        prefill=side_by_side("prefill"),
        bare_decode=Spread.of(rates["bare_decode"]),
        decode_over_bare=Spread.of(
            [k / b for k, b in zip(rates["kv_decode"], rates["bare_decode"], strict=True)]
        ),
        decode_tokens=tuple(decode_tokens),
        prefill_prompt_tokens=prompt_tokens,
        prefill_evaluated_tokens=tuple(evaluated),
        same_reply=len(replies) == 1,
    )


DEFAULT_LLAMA_BENCH = Path("build/llama.cpp/bin/llama-bench")


def measure_llama_bench(
    program: Path | None,
    info: ModelInfo,
    depth: int,
    sizes: Sizes,
    say: Callable[[str], None],
) -> Spread | None:
    """llama.cpp's own llama-bench `tg` (decode from a cache of `depth`
    tokens), on the same model, threads and flash-attention choice; None
    when there is no llama-bench to run. Its repetitions are its runs."""
    program = program or (DEFAULT_LLAMA_BENCH if DEFAULT_LLAMA_BENCH.exists() else None)
    if program is None:
        return None
    flash = resolve_load_params(
        LoadConfig(info.path, n_ctx=info.n_ctx, n_gpu_layers=info.n_gpu_layers),
        None,
        info.n_gpu_layers > 0,
    ).flash_attention
    command = [
        str(program),
        "-m", info.path,
        "-t", str(info.n_threads),
        "-ngl", str(info.n_gpu_layers),
        "-fa", flash,
        "-p", "0",
        "-n", str(sizes.decode_tokens),
        "-d", str(depth),
        "-r", str(sizes.runs),
        "-o", "json",
    ]  # fmt: skip
    say(f"llama-bench: {sizes.runs} runs of {sizes.decode_tokens} tokens")
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=TURN_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"llama-bench ({program}) did not run: {exc}") from exc
    if done.returncode != 0:
        raise BenchError(f"llama-bench ({program}) failed: {done.stderr.strip()[-500:]}")
    try:
        (test,) = json.loads(done.stdout)
        return Spread.of([float(rate) for rate in test["samples_ts"]])
    except (ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"llama-bench ({program}) wrote what kvchat cannot read: {exc}") from exc


# 1b. Decode beside a busy process, and recovering once it stops.


@dataclass(frozen=True)
class BusyResult:
    """Decode with one core taken by another process (`Burner`).

    `fixed` holds llama.cpp's direct loop at each fixed thread count tried,
    `best_fixed` the best of them in each run, and `ratio` kvchat's whole
    path (its threads its own to choose) against that best, run by run.
    `threads` is the count kvchat ended each reply with; `note` why the
    last reply's count differed from the default (None: it did not).
    """

    kvchat: Spread
    fixed: dict[int, Spread]
    best_fixed: Spread
    ratio: Spread
    threads: tuple[int, ...]
    note: str | None


def _fixed_counts(most: int) -> list[int]:
    """The fixed thread counts to hold kvchat against: one, every core, and one fewer."""
    return sorted({1, max(most - 1, 1), most})


def measure_busy(
    kvchat: KvchatPath,
    direct: DirectProcess,
    most: int,
    sizes: Sizes,
    say: Callable[[str], None],
) -> BusyResult:
    """Each run: kvchat's reply and the direct loop's at each fixed count,
    the two sides in turn first, all beside one burner."""
    prompt = [ChatMessage("user", DECODE_PROMPT)]
    counts = _fixed_counts(most)
    kv: list[float] = []
    fixed: dict[int, list[float]] = {count: [] for count in counts}
    threads: list[int] = []
    notes: list[str] = []

    def kvchat_side() -> None:
        turn = kvchat.turn(prompt, sizes.decode_tokens)
        kv.append(_decode_rate(turn.stats.generated_tokens, turn.stream_s))
        threads.append(turn.stats.decode_threads)
        notes.append(turn.stats.threads_note)

    def direct_side() -> None:
        for count in counts:
            turn = direct.run(prompt, sizes.decode_tokens, threads=count)
            fixed[count].append(_decode_rate(turn.generated_tokens, turn.decode_s))

    with Burner():
        for run in range(sizes.runs):
            say(f"decode beside a busy process: run {run + 1} of {sizes.runs}")
            first, second = (
                (kvchat_side, direct_side) if run % 2 == 0 else (direct_side, kvchat_side)
            )
            first()
            second()
    best = [max(fixed[count][run] for count in counts) for run in range(sizes.runs)]
    return BusyResult(
        kvchat=Spread.of(kv),
        fixed={count: Spread.of(rates) for count, rates in fixed.items()},
        best_fixed=Spread.of(best),
        ratio=Spread.of([k / b for k, b in zip(kv, best, strict=True)]),
        threads=tuple(threads),
        note=notes[-1] or None,
    )


@dataclass(frozen=True)
class RecoveryResult:
    """Tokens from a neighbour's stop until kvchat decodes within 5% of its
    idle speed again (`app.bench_busy.recovery_tokens`), over the runs that
    recovered before the reply ended; `unrecovered` counts the others."""

    tokens: Spread | None
    unrecovered: int
    stopped_after_tokens: int


class _StopAfter:
    """Stops a burner once a reply's cache holds `after` tokens more than at
    its first text (the prompt is in the cache by then)."""

    def __init__(self, burner: Burner, after: int) -> None:
        self._burner = burner
        self._after = after
        self._first: int | None = None
        self.stopped_at = 0  # tokens in the cache when it stopped

    def __call__(self, tokens: int) -> None:
        if self._first is None:
            self._first = tokens
        if not self.stopped_at and tokens >= self._first + self._after:
            self._burner.stop()
            self.stopped_at = tokens


def measure_recovery(
    kvchat: KvchatPath, sizes: Sizes, say: Callable[[str], None]
) -> RecoveryResult:
    """Each run: the same long reply on an idle machine, then with a burner
    that the bench stops `recovery_stop_after` tokens into the reply."""
    prompt = [ChatMessage("user", DECODE_PROMPT)]
    recovered: list[float] = []
    unrecovered = 0
    for run in range(sizes.runs):
        say(f"recovery after a busy process stops: run {run + 1} of {sizes.runs}")
        idle = kvchat.turn(prompt, sizes.recovery_tokens)
        with Burner() as burner:
            stop = _StopAfter(burner, sizes.recovery_stop_after)
            busy = kvchat.turn(prompt, sizes.recovery_tokens, on_fill=stop)
        tokens = (
            recovery_tokens(busy.fills, idle.fills, stop.stopped_at) if stop.stopped_at else None
        )
        if tokens is None:
            unrecovered += 1
        else:
            recovered.append(float(tokens))
    return RecoveryResult(
        tokens=Spread.of(recovered) if recovered else None,
        unrecovered=unrecovered,
        stopped_after_tokens=sizes.recovery_stop_after,
    )


# 2. Time to first token as the conversation grows.


@dataclass(frozen=True)
class TurnFigures:
    """One turn of the conversation (token counts from the last run).

    Times to first token: `time_to_first_token_s` on the GUI thread, from
    sending to the first text; `engine_time_to_first_token_s` as the engine
    host measured it; `direct_time_to_first_token_s` for llama.cpp itself
    evaluating the same new tokens on a cache holding the same prefix (from
    its first llama_decode to the first token sampled), measured right after.
    `template_tokens` are those evaluated beyond the message itself: the
    template's own, less the reply's last token when the previous reply
    stopped at the token limit (sampled, never evaluated).
    """

    turn: int
    time_to_first_token_s: Spread
    engine_time_to_first_token_s: Spread
    direct_time_to_first_token_s: Spread
    prompt_tokens: int
    reused_tokens: int
    evaluated_tokens: int
    message_tokens: int
    template_tokens: int


@dataclass(frozen=True)
class TtftResult:
    """`last_over_first` is turn 20's time to first token over turn 1's, per
    conversation; `direct_last_over_first` the same for llama.cpp itself,
    whose attention over a longer context costs more per new token."""

    turns: tuple[TurnFigures, ...]
    last_over_first: Spread
    direct_last_over_first: Spread
    only_new_tokens_evaluated: bool


def _cached_after(stats: TurnStats) -> int:
    """Tokens the cache holds after a turn: the prompt and every reply token
    evaluated (the last one is not when the reply stopped at the limit)."""
    return stats.prompt_tokens + stats.generated_tokens - (stats.stop_reason == "length")


def measure_ttft(
    kvchat: KvchatPath, direct: DirectProcess, sizes: Sizes, say: Callable[[str], None]
) -> TtftResult:
    """One conversation of TTFT_TURNS[-1] turns a run, each with short
    replies so that the context stays well inside its size."""
    last_turn = max(TTFT_TURNS)
    gui: dict[int, list[float]] = {turn: [] for turn in TTFT_TURNS}
    engine: dict[int, list[float]] = {turn: [] for turn in TTFT_TURNS}
    reference: dict[int, list[float]] = {turn: [] for turn in TTFT_TURNS}
    figures: dict[int, tuple[TurnStats, int, int]] = {}
    only_new = True
    # Conversation 0 warms up and leaves the template's system prompt in the
    # cache, where every later first turn finds it, as in a running app.
    for conversation in range(sizes.runs + 1):
        if conversation:
            say(f"time to first token: conversation {conversation} of {sizes.runs}")
        messages: list[ChatMessage] = []
        previous: TurnStats | None = None
        for turn in range(1, last_turn + 1):
            text = question(conversation, turn, sizes.question_words)
            messages.append(ChatMessage("user", text))
            reply = kvchat.turn(messages, sizes.reply_tokens)
            stats = reply.stats
            if previous is not None:
                only_new &= stats.reused_tokens == _cached_after(previous)
            if conversation and turn in gui:
                gui[turn].append(reply.first_text_s)
                engine[turn].append(stats.time_to_first_token_s)
                direct_turn = direct.run(messages, 1, cached=stats.reused_tokens)
                reference[turn].append(direct_turn.prefill_s)
                tail = int(previous is not None and previous.stop_reason == "length")
                message = direct.count(text)
                figures[turn] = (stats, message, stats.evaluated_tokens - message - tail)
            if reply.text:
                messages.append(ChatMessage("assistant", reply.text))
            previous = stats
        if conversation == 0:
            say("time to first token: warmed up")

    turns = tuple(
        TurnFigures(
            turn=turn,
            time_to_first_token_s=Spread.of(gui[turn]),
            engine_time_to_first_token_s=Spread.of(engine[turn]),
            direct_time_to_first_token_s=Spread.of(reference[turn]),
            prompt_tokens=figures[turn][0].prompt_tokens,
            reused_tokens=figures[turn][0].reused_tokens,
            evaluated_tokens=figures[turn][0].evaluated_tokens,
            message_tokens=figures[turn][1],
            template_tokens=figures[turn][2],
        )
        for turn in TTFT_TURNS
    )

    def growth(times: dict[int, list[float]]) -> Spread:
        first, last = times[TTFT_TURNS[0]], times[TTFT_TURNS[-1]]
        return Spread.of([b / a for a, b in zip(first, last, strict=True)])

    return TtftResult(turns, growth(gui), growth(reference), only_new)


# 3. What the window costs per streamed token.


def stream_token(index: int) -> str:
    """The scripted stream's tokens: the keeper's notes a word a token, in
    paragraphs of PARAGRAPH_WORDS words, as a model's reply comes."""
    words = NOTES.split()
    end = "\n\n" if (index + 1) % PARAGRAPH_WORDS == 0 else " "
    return words[index % len(words)] + end


class ScriptedStream(QThread):
    """Plays the engine for the GUI measurement: `count` tokens at `rate` a
    second, emitted from its own thread as the engine's reader thread emits.

    Signals:
        token_ready(str): the text of one token.
    """

    token_ready = Signal(str)

    def __init__(self, count: int, rate: float) -> None:
        super().__init__()
        self._count = count
        self._rate = rate

    def run(self) -> None:
        started = time.perf_counter()
        for index in range(self._count):
            delay = started + index / self._rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.token_ready.emit(stream_token(index))


class AppendProbe(QObject):
    """Receives the stream on the GUI thread, hands each token to the view as
    the controller does, and counts the CPU time the append call takes."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__()
        self._window = window
        self.count = 0
        self.cpu_s = 0.0

    @Slot(str)
    def append(self, text: str) -> None:
        started = time.thread_time()
        self._window.chat_view.append_reply(text)
        self.cpu_s += time.thread_time() - started
        self.count += 1


@dataclass(frozen=True)
class StreamRun:
    """One scripted reply into a window.

    `gui_cpu_us_per_token` is all the GUI thread's CPU time from the first
    token to the reply closed (event dispatch, the append, the view's
    rendering and painting), less what the heartbeat timer costs on its own
    (None when that cost, measured apart, came out larger: the run is too
    short to tell the two apart, as a --quick run can be);
    `append_cpu_us_per_token` is the append call's share of it. The stalls
    are the gaps between the heartbeat's ticks, in ms; the rate is the one
    the tokens reached the view at.
    """

    gui_cpu_us_per_token: float | None
    append_cpu_us_per_token: float
    stall_p50_ms: float
    stall_p99_ms: float
    stall_max_ms: float
    delivered_tokens_per_s: float


@dataclass(frozen=True)
class GuiView:
    """Streaming into a window that holds `messages` messages already; each
    figure is a StreamRun's, over the runs."""

    messages: int
    gui_cpu_us_per_token: Spread | None  # None: no run could measure it
    append_cpu_us_per_token: Spread
    stall_p50_ms: Spread
    stall_p99_ms: Spread
    stall_max_ms: Spread
    delivered_tokens_per_s: Spread


@dataclass(frozen=True)
class GuiResult:
    """`heartbeat_cpu_us_per_s` is the heartbeat timer's own cost, measured
    alone and taken off each run's GUI CPU time."""

    rate_tokens_per_s: float
    tokens_per_run: int
    heartbeat_ms: int
    heartbeat_cpu_us_per_s: float
    views: tuple[GuiView, ...]


def _heartbeat(beats: list[float]) -> QTimer:
    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(HEARTBEAT_MS)
    timer.timeout.connect(lambda: beats.append(time.perf_counter()))
    return timer


def _heartbeat_cpu_per_s(seconds: float) -> float:
    """The GUI thread's CPU time a second with the heartbeat running alone."""
    heartbeat = _heartbeat([])
    loop = QEventLoop()
    started = time.thread_time()
    heartbeat.start()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()
    heartbeat.stop()
    return (time.thread_time() - started) / seconds


def _filled_window(messages: int) -> MainWindow:
    window = MainWindow()
    window.show_model("scripted", "a scripted stream, no model", "")
    for index in range(messages):
        from_person = index % 2 == 0
        window.chat_view.add_message(
            "You" if from_person else "scripted", _notes(60), from_person=from_person
        )
    window.show()
    return window


def _stream_once(window: MainWindow, tokens: int, heartbeat_cpu_per_s: float) -> StreamRun:
    probe = AppendProbe(window)
    stream = ScriptedStream(tokens, GUI_RATE)
    stream.token_ready.connect(probe.append, Qt.ConnectionType.QueuedConnection)
    beats: list[float] = []
    heartbeat = _heartbeat(beats)
    window.chat_view.begin_reply("scripted")
    QApplication.processEvents()
    heartbeat.start()
    started, cpu = time.perf_counter(), time.thread_time()
    stream.start()
    try:
        _wait_until(lambda: probe.count >= tokens, [stream.finished], TURN_TIMEOUT_S, "stream end")
    finally:
        stream.wait()
    delivered = tokens / (time.perf_counter() - started)
    window.chat_view.end_reply("")
    cpu = time.thread_time() - cpu
    elapsed = time.perf_counter() - started
    heartbeat.stop()
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(beats)] or [0.0]
    own = cpu - heartbeat_cpu_per_s * elapsed
    return StreamRun(
        gui_cpu_us_per_token=own / tokens * 1e6 if own >= 0 else None,
        append_cpu_us_per_token=probe.cpu_s / tokens * 1e6,
        stall_p50_ms=_percentile(gaps, 0.50),
        stall_p99_ms=_percentile(gaps, 0.99),
        stall_max_ms=max(gaps),
        delivered_tokens_per_s=delivered,
    )


def measure_gui(sizes: Sizes, say: Callable[[str], None]) -> GuiResult:
    say(f"window: filling views of {' and '.join(map(str, GUI_VIEWS))} messages")
    windows = [_filled_window(count) for count in GUI_VIEWS]
    runs: dict[int, list[StreamRun]] = {count: [] for count in GUI_VIEWS}
    try:
        QApplication.processEvents()
        heartbeat_cpu = _heartbeat_cpu_per_s(sizes.gui_tokens / GUI_RATE)
        for run in range(sizes.runs):
            say(f"window: run {run + 1} of {sizes.runs}")
            pairs = list(zip(GUI_VIEWS, windows, strict=True))
            if run % 2:
                pairs.reverse()
            for count, window in pairs:
                runs[count].append(_stream_once(window, sizes.gui_tokens, heartbeat_cpu))
    finally:
        for window in windows:
            window.close()
            window.deleteLater()
        QApplication.processEvents()

    def view(count: int) -> GuiView:
        figures: dict[str, Spread | None] = {}
        for field in dataclasses.fields(StreamRun):
            measured = [v for r in runs[count] if (v := getattr(r, field.name)) is not None]
            figures[field.name] = Spread.of(measured) if measured else None
        return GuiView(messages=count, **figures)  # type: ignore[arg-type]

    return GuiResult(
        rate_tokens_per_s=GUI_RATE,
        tokens_per_run=sizes.gui_tokens,
        heartbeat_ms=HEARTBEAT_MS,
        heartbeat_cpu_us_per_s=heartbeat_cpu * 1e6,
        views=tuple(view(count) for count in GUI_VIEWS),
    )


# 4. Launch, and the GUI process's memory.


@dataclass(frozen=True)
class StartupResult:
    """Seconds from starting `python -m kvchat.app` to the window shown (its
    first paint ended: MainWindow.first_painted) and to the model ready for
    the first message."""

    window_shown_s: Spread
    ready_s: Spread
    gui_rss_bytes: Spread


def measure_startup(model_path: str, runs: int, say: Callable[[str], None]) -> StartupResult:
    shown: list[float] = []
    ready: list[float] = []
    rss: list[float] = []
    for run in range(runs):
        say(f"launch: run {run + 1} of {runs}")
        with tempfile.TemporaryDirectory(prefix="kvchat-bench-launch-") as data_dir:
            command = python_command("kvchat.app", "--model", model_path, "--data-dir", data_dir)
            launched = time.time()
            done = subprocess.run(
                command,
                env=child_environment({EXIT_WHEN_READY_ENV: "1"}),
                cwd=safe_working_folder(),
                capture_output=True,
                text=True,
                timeout=LAUNCH_TIMEOUT_S,
            )
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise BenchError(
                f"the launched app exited with {done.returncode}: {done.stderr.strip()[-500:]}"
            )
        report = json.loads(lines[-1])
        if "error" in report:
            raise BenchError(f"the launched app could not load the model: {report['error']}")
        shown.append(report["window_shown"] - launched)
        ready.append(report["ready"] - launched)
        rss.append(report["rss_bytes"])
    return StartupResult(Spread.of(shown), Spread.of(ready), Spread.of(rss))


# 5. The engine's memory beyond the model's own.


@dataclass(frozen=True)
class EngineMemory:
    """The engine host's RSS beyond what the model itself takes there.

    What the model takes is measured rather than assumed: it is what the
    direct loop's RSS grew by from before the model was loaded (llama.cpp
    imported) to after the same speed runs as kvchat's engine, with the same
    model and settings: the weights, the KV cache and compute buffers as far
    as they are resident, and llama.cpp's own structures for the model. Both
    processes are measured right after the speed runs, having evaluated the
    same prompts. `buffers_allocated` is what llama.cpp reported allocating in
    host memory (weights; kv; compute with output), for comparison: those are
    not subtracted, because pages of them that were never touched (KV cells
    past the longest prompt, most of the compute buffer) are not resident.
    """

    engine_rss_bytes: int
    direct_rss_bytes: int
    direct_rss_before_model_bytes: int
    model_resident_bytes: int
    engine_beyond_model_bytes: int
    buffers_allocated: dict[str, int]
    model_size_bytes: int


def measure_engine_memory(
    kvchat: KvchatPath, direct: DirectProcess, info: ModelInfo, memory: LoadMemory
) -> EngineMemory:
    assert kvchat.host_pid is not None
    host = [b for b in memory.buffers if b.device == "CPU"]
    engine_rss = psutil.Process(kvchat.host_pid).memory_info().rss
    direct_rss = psutil.Process(direct.pid).memory_info().rss
    model_resident = direct_rss - direct.rss_before_model
    return EngineMemory(
        engine_rss_bytes=engine_rss,
        direct_rss_bytes=direct_rss,
        direct_rss_before_model_bytes=direct.rss_before_model,
        model_resident_bytes=model_resident,
        engine_beyond_model_bytes=engine_rss - model_resident,
        buffers_allocated={
            "weights": sum(b.weights_bytes for b in host),
            "kv": sum(b.kv_bytes for b in host),
            "compute": sum(b.compute_bytes for b in host),
        },
        model_size_bytes=info.size_bytes,
    )


# The whole run.


@dataclass(frozen=True)
class Goal:
    target: str
    value: float
    met: bool


@dataclass(frozen=True)
class BenchResult:
    """Everything one run measured; `decode_ratio` and `prefill_ratio` are the
    medians of kvchat / direct over the runs."""

    decode_ratio: float
    prefill_ratio: float
    created: str
    quick: bool
    machine: dict[str, object]
    model: dict[str, object]
    speed: SpeedResult
    llama_bench_decode: Spread | None
    busy: BusyResult
    recovery: RecoveryResult
    time_to_first_token: TtftResult
    gui: GuiResult
    startup: StartupResult
    memory: EngineMemory
    goals: dict[str, Goal]

    def setup(self) -> str:
        """What was measured: 'model, N threads, context C'."""
        threads = self.model["n_threads"]
        return (
            f"{self.model['name']}, {threads} thread{'' if threads == 1 else 's'}, "
            f"context {self.model['n_ctx']}"
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


class OtherWork:
    """How busy the machine was with work other than the benchmark's.

    On a shared machine the figures are only as good as the quiet they had.
    This is the CPU time the whole machine was busy, less this process's and
    its children's (each one waited for, which is when the system counts it),
    as a share of every core's time since it was made.
    """

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._machine = self._machine_busy()
        self._own = self._own_busy()

    @staticmethod
    def _machine_busy() -> float:
        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    @staticmethod
    def _own_busy() -> float:
        times = psutil.Process().cpu_times()
        return times.user + times.system + times.children_user + times.children_system

    def cpu_share(self) -> float:
        elapsed = (time.monotonic() - self._started) * (psutil.cpu_count() or 1)
        other = (self._machine_busy() - self._machine) - (self._own_busy() - self._own)
        return max(0.0, other / elapsed) if elapsed > 0 else 0.0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine(info: ModelInfo) -> dict[str, object]:
    app = QApplication.instance()
    return {
        "cpu": _cpu_name(),
        "physical_cores": psutil.cpu_count(logical=False) or "unknown",
        "logical_cores": psutil.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "qt_platform": app.platformName() if isinstance(app, QApplication) else "",
        "gpu_offload_supported": info.gpu_offload_supported,
    }


def _goals(speed: SpeedResult, ttft: TtftResult, busy: BusyResult) -> dict[str, Goal]:
    return {
        "decode_over_bare": Goal(
            f">= {GOAL_DECODE_OVER_BARE}",
            speed.decode_over_bare.median,
            speed.decode_over_bare.median >= GOAL_DECODE_OVER_BARE,
        ),
        "busy_decode_ratio": Goal(
            f">= {GOAL_BUSY_RATIO}",
            busy.ratio.median,
            busy.ratio.median >= GOAL_BUSY_RATIO,
        ),
        "decode_ratio": Goal(
            f">= {GOAL_DECODE_RATIO}",
            speed.decode.ratio.median,
            speed.decode.ratio.median >= GOAL_DECODE_RATIO,
        ),
        "prefill_ratio": Goal(
            f">= {GOAL_PREFILL_RATIO}",
            speed.prefill.ratio.median,
            speed.prefill.ratio.median >= GOAL_PREFILL_RATIO,
        ),
        "ttft_turn20_over_turn1": Goal(
            f"<= {GOAL_TTFT_GROWTH}",
            ttft.last_over_first.median,
            ttft.last_over_first.median <= GOAL_TTFT_GROWTH,
        ),
        "only_new_tokens_evaluated": Goal(
            "every turn", float(ttft.only_new_tokens_evaluated), ttft.only_new_tokens_evaluated
        ),
    }


def run_bench(
    model_path: str,
    sizes: Sizes,
    quick: bool,
    say: Callable[[str], None],
    llama_bench: Path | None = None,
) -> BenchResult:
    """Runs every section; the engine and the direct loop are stopped before
    the window and launch sections, so that they do not share the CPU."""
    settings = EngineSettings(n_threads=sizes.threads)
    watch = OtherWork()
    with tempfile.TemporaryDirectory(prefix="kvchat-bench-") as temp:
        data_dir = Path(temp)
        say("loading the model in kvchat's engine")
        kvchat = KvchatPath(model_path, settings, data_dir)
        direct: DirectProcess | None = None
        try:
            info = kvchat.load()
            say("loading the model in the direct llama.cpp loop")
            direct = DirectProcess(info, settings.n_batch, data_dir / "logs" / "direct.log")
            speed = measure_speed(kvchat, direct, sizes, say)
            assert kvchat.memory is not None
            memory = measure_engine_memory(kvchat, direct, info, kvchat.memory)
            ttft = measure_ttft(kvchat, direct, sizes, say)
            busy = measure_busy(kvchat, direct, info.n_threads, sizes, say)
            recovery = measure_recovery(kvchat, sizes, say)
            depth = direct.run([ChatMessage("user", DECODE_PROMPT)], 1).prompt_tokens
        finally:
            kvchat.close()
            if direct is not None:
                direct.close()
        llama_bench_decode = measure_llama_bench(llama_bench, info, depth, sizes, say)
        gui = measure_gui(sizes, say)
        startup = measure_startup(model_path, sizes.runs, say)
    return BenchResult(
        decode_ratio=speed.decode.ratio.median,
        prefill_ratio=speed.prefill.ratio.median,
        created=time.strftime("%Y-%m-%d %H:%M:%S %z"),
        quick=quick,
        machine={**_machine(info), "other_work_cpu_share": watch.cpu_share()},
        model={
            "name": info.name,
            "path": info.path,
            "size_bytes": info.size_bytes,
            "n_params": info.n_params,
            "n_ctx": info.n_ctx,
            "n_batch": settings.n_batch,
            "n_threads": info.n_threads,
            "n_gpu_layers": info.n_gpu_layers,
        },
        speed=speed,
        llama_bench_decode=llama_bench_decode,
        busy=busy,
        recovery=recovery,
        time_to_first_token=ttft,
        gui=gui,
        startup=startup,
        memory=memory,
        goals=_goals(speed, ttft, busy),
    )


def _mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def _recovery_text(recovery: RecoveryResult) -> str:
    stopped = f"Once it stopped, {recovery.stopped_after_tokens} tokens into a reply, "
    if recovery.tokens is None:
        return stopped + "decode did not come within 5% of idle speed before the reply ended."
    runs = len(recovery.tokens.values)
    also = (
        f" ({recovery.unrecovered} more run{'' if recovery.unrecovered == 1 else 's'} ended first)"
        if recovery.unrecovered
        else ""
    )
    return (
        stopped + f"decode was within 5% of idle speed again after "
        f"{recovery.tokens.text(0)} tokens ({runs} runs){also}."
    )


def format_tables(result: BenchResult) -> str:
    """The results as Markdown tables, for a terminal or the README."""
    speed, ttft, gui, startup, memory = (
        result.speed,
        result.time_to_first_token,
        result.gui,
        result.startup,
        result.memory,
    )
    runs = len(speed.decode.ratio.values)
    other = result.machine["other_work_cpu_share"]
    lines = [
        f"{result.setup()}, {result.machine['cpu']}, {runs} runs: median (range); "
        f"other work took {other:.0%} of the machine's CPU meanwhile",
        "",
        "| tokens/s | kvchat, whole path | llama.cpp direct | ratio | goal |",
        "| --- | --- | --- | --- | --- |",
        f"| decode, {statistics.median(speed.decode_tokens):.0f} tokens | "
        f"{speed.decode.kvchat.text()} | {speed.decode.direct.text()} | "
        f"{speed.decode.ratio.text(3)} | {result.goals['decode_ratio'].target} |",
        f"| prefill, {speed.prefill_prompt_tokens} tokens | {speed.prefill.kvchat.text(0)} | "
        f"{speed.prefill.direct.text(0)} | {speed.prefill.ratio.text(3)} | "
        f"{result.goals['prefill_ratio'].target} |",
        "",
        "| decode, tokens/s | kvchat, whole path | llama.cpp | ratio | goal |",
        "| --- | --- | --- | --- | --- |",
        f"| idle, against llama.cpp's bare decode of the same tokens (no sampling) | "
        f"{speed.decode.kvchat.text()} | {speed.bare_decode.text()} | "
        f"{speed.decode_over_bare.text(3)} | {result.goals['decode_over_bare'].target} |",
    ]
    if result.llama_bench_decode is not None:
        bench = result.llama_bench_decode
        lines.append(
            f"| idle, against llama-bench's tg{statistics.median(speed.decode_tokens):.0f} | "
            f"{speed.decode.kvchat.text()} | {bench.text()} | "
            f"{speed.decode.kvchat.median / bench.median:.3f} | |"
        )
    busy = result.busy
    fixed = "; ".join(
        f"{count} thread{'' if count == 1 else 's'}: {spread.text()}"
        for count, spread in sorted(busy.fixed.items())
    )
    lines += [
        f"| one core taken by another process, against the best fixed thread count "
        f"({fixed}) | {busy.kvchat.text()} | {busy.best_fixed.text()} | "
        f"{busy.ratio.text(3)} | {result.goals['busy_decode_ratio'].target} |",
        "",
        f"Beside the busy process kvchat ended its replies on "
        f"{', '.join(str(t) for t in busy.threads)} "
        f"thread{'' if set(busy.threads) == {1} else 's'}"
        + (f" ({busy.note})" if busy.note else "")
        + ". "
        + _recovery_text(result.recovery),
        "",
        "| turn | cached tokens | evaluated: message + template | first token, kvchat, ms "
        "| llama.cpp direct, ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {t.turn} | {t.reused_tokens} | {t.evaluated_tokens}: {t.message_tokens} + "
        f"{t.template_tokens} | {t.time_to_first_token_s.text(0, 1000)} | "
        f"{t.direct_time_to_first_token_s.text(0, 1000)} |"
        for t in ttft.turns
    ]
    lines += [
        "",
        f"Turn {TTFT_TURNS[-1]} / turn {TTFT_TURNS[0]}: kvchat {ttft.last_over_first.text(2)} "
        f"(goal {result.goals['ttft_turn20_over_turn1'].target}), llama.cpp direct "
        f"{ttft.direct_last_over_first.text(2)}; only new tokens evaluated: "
        f"{'yes' if ttft.only_new_tokens_evaluated else 'no'}",
        "",
        f"| messages in view | GUI CPU µs per token | of which the append call | "
        f"stall p50, ms | stall p99, ms | delivered tok/s (of {gui.rate_tokens_per_s:.0f}) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {v.messages} | "
        f"{v.gui_cpu_us_per_token.text(1) if v.gui_cpu_us_per_token else 'not measurable'} | "
        f"{v.append_cpu_us_per_token.text(1)} | {v.stall_p50_ms.text(2)} | "
        f"{v.stall_p99_ms.text(2)} | {v.delivered_tokens_per_s.text(0)} |"
        for v in gui.views
    ]
    lines += [
        "",
        "| launch to | seconds |",
        "| --- | --- |",
        f"| window shown | {startup.window_shown_s.text(2)} |",
        f"| ready for the first message | {startup.ready_s.text(2)} |",
        "",
        "| memory | MiB |",
        "| --- | --- |",
        f"| GUI process, RSS when ready | {startup.gui_rss_bytes.text(1, 2**-20)} |",
        f"| engine host, RSS | {_mib(memory.engine_rss_bytes)} |",
        f"| the model's own: the direct loop's growth from loading and running it "
        f"| {_mib(memory.model_resident_bytes)} |",
        f"| engine host beyond the model's own | {_mib(memory.engine_beyond_model_bytes)} |",
        f"| direct loop before the model (Python and llama.cpp) "
        f"| {_mib(memory.direct_rss_before_model_bytes)} |",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """`kvchat bench`, with the arguments main.build_parser parsed."""
    sizes = QUICK if args.quick else FULL
    # Bounds that keep a run finite: a decode stops at the context anyway.
    for name, low, high in (("runs", 1, MAX_RUNS), ("tokens", 2, MAX_DECODE_TOKENS)):
        value = getattr(args, name)
        if value is not None and not low <= value <= high:
            print(
                f"kvchat bench: --{name} {value} is out of range: it must be from {low} to "
                f"{high:,} (see kvchat bench --help)",
                file=sys.stderr,
            )
            return 2
    sizes = dataclasses.replace(
        sizes,
        runs=args.runs or sizes.runs,
        decode_tokens=args.tokens or sizes.decode_tokens,
    )
    model_path = args.model or bundled_model_path()
    if model_path is None:
        print(f"kvchat: {missing_model_message()}", file=sys.stderr)
        return 2
    chart = args.chart or args.json.with_suffix(".png")

    if missing_display():
        # The benchmark draws into windows no one needs to see: run headless.
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)

    def say(text: str) -> None:
        print(f"kvchat bench: {text}", file=sys.stderr, flush=True)

    try:
        result = run_bench(str(model_path), sizes, args.quick, say, args.llama_bench)
    except BenchError as exc:
        print(f"kvchat bench: {exc}", file=sys.stderr)
        return 1
    args.json.write_text(result.to_json() + "\n", encoding="utf-8")
    draw_chart(result, chart)
    print(format_tables(result))
    say(f"wrote {args.json} and {chart}")
    return 0
