"""The engine host: a child process that owns llama.cpp.

It is the only process that imports `llama_cpp`, so an abort inside ggml or
a segfault on a bad file ends this process and not the window. Its standard
output and error go to a log file (llama.cpp logs a great deal).

Two threads: a reader that receives commands from the pipe, and the main
thread that runs them one at a time. Cancel and Shutdown take effect at once:
the reader sets a flag that generation polls between tokens and between
prefill batches, and that the load's progress callback polls too.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import sys
import threading
import time
import traceback
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, TextIO

from kvchat.engine import faults
from kvchat.engine.protocol import (
    Cancel,
    Chat,
    ChatFailed,
    ClearSavedStates,
    Command,
    Complete,
    Event,
    HostStarted,
    LoadFailed,
    LoadModel,
    LoadProgress,
    MemorySample,
    ModelLoaded,
    Prepare,
    PromptEvaluated,
    Shutdown,
    TextDelta,
    TurnFinished,
)

if TYPE_CHECKING:
    from kvchat.engine.llama.runner import LlamaLog, ModelRunner

# Text deltas are coalesced so that a fast GPU does not flood the pipe and the
# GUI's event loop with one message per token; 10 ms is below what an eye sees.
TEXT_FLUSH_INTERVAL_S = 0.010
PROGRESS_STEP = 0.01
MEMORY_SAMPLE_INTERVAL_S = 1.0


class _Inbox:
    """Commands for the main thread, plus the cancel state the reader sets."""

    def __init__(self) -> None:
        self.commands: queue.Queue[Command] = queue.Queue()
        self._lock = threading.Lock()
        self._cancelled: set[int] = set()
        self._cancel_all = False
        self.shutting_down = False

    def cancel(self, request_id: int | None) -> None:
        with self._lock:
            if request_id is None:
                self._cancel_all = True
            else:
                self._cancelled.add(request_id)

    def is_cancelled(self, request_id: int | None) -> bool:
        with self._lock:
            return self.shutting_down or self._cancel_all or request_id in self._cancelled

    def begin(self) -> None:
        """Called before each command: a bare Cancel applies to what runs now only."""
        with self._lock:
            self._cancel_all = False


def _read_commands(connection: Connection, inbox: _Inbox) -> None:
    while True:
        try:
            command = connection.recv()
        except (EOFError, OSError):
            command = Shutdown()
        if isinstance(command, Cancel):
            inbox.cancel(command.request_id)
            continue
        if isinstance(command, Shutdown):
            inbox.shutting_down = True
            inbox.commands.put(command)
            return
        inbox.commands.put(command)


class _Host:
    def __init__(self, connection: Connection, log: LlamaLog, fault: faults.Fault | None) -> None:
        self._connection = connection
        self._send_lock = threading.Lock()
        self._log = log
        self._runner: ModelRunner | None = None
        self._loaded_at = 0.0
        self.inbox = _Inbox()
        self._sampling_stopped = threading.Event()
        # Armed only by tests, to crash or hang this process on purpose.
        self._fault = fault

    def _strike(self, point: faults.Point) -> None:
        if self._fault is not None:
            self._fault.strike(point)

    def send(self, event: Event) -> None:
        """Sends an event; the main thread and the memory sampler both send."""
        try:
            with self._send_lock:
                self._connection.send(event)
        except (BrokenPipeError, OSError):
            self.inbox.shutting_down = True

    def send_memory_sample(self) -> None:
        from kvchat.engine.llama.devices import probe_devices
        from kvchat.engine.llama.runner import gpu_offload_supported

        runner = self._runner
        if runner is None:
            return
        devices, note = probe_devices()
        self.send(
            MemorySample(
                seconds=time.monotonic() - self._loaded_at,
                devices=tuple(devices),
                tokens_in_cache=runner.cached_tokens,
                gpu_offload_supported=gpu_offload_supported(),
                note=note,
                saved_states=len(runner.saved_states),
                saved_state_bytes=runner.saved_states.size_bytes,
                disk_states=len(runner.disk_states) if runner.disk_states else 0,
                disk_state_bytes=runner.disk_states.size_bytes if runner.disk_states else 0,
            )
        )

    def sample_memory_until_shutdown(self) -> None:
        """Runs on its own thread: device polling never waits for generation."""
        while not self._sampling_stopped.wait(MEMORY_SAMPLE_INTERVAL_S):
            if self.inbox.shutting_down:
                return
            self.send_memory_sample()

    def serve(self) -> None:
        while True:
            command = self.inbox.commands.get()
            self.inbox.begin()
            if isinstance(command, Shutdown):
                break
            try:
                if isinstance(command, LoadModel):
                    self._load(command)
                elif isinstance(command, Chat | Complete):
                    self._chat(command)
                elif isinstance(command, ClearSavedStates) and self._runner is not None:
                    self._runner.clear_saved_states()
                    self.send_memory_sample()
                elif isinstance(command, Prepare) and self._runner is not None:
                    self._runner.prepare(command.messages)
                    self.send_memory_sample()
            except Exception as exc:  # one bad command must not end the engine
                traceback.print_exc()
                self._report_failure(command, exc)
        self._sampling_stopped.set()
        if self._runner is not None:
            self._runner.close()

    def _report_failure(self, command: Command, exc: Exception) -> None:
        """Answers a command that failed in a way nobody foresaw (a bug, or input
        that slipped past every check), so the window hears why and the engine
        goes on serving."""
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(command, LoadModel):
            loaded = self._runner.info if self._runner is not None else None
            self.send(
                LoadFailed(command.config.model_path, f"the engine failed ({reason})", loaded)
            )
        elif isinstance(command, Chat | Complete):
            self.send(ChatFailed(command.request_id, f"the engine failed ({reason})"))

    def _load(self, command: LoadModel) -> None:
        from kvchat.engine.gguf_file import ModelFileError, read_model
        from kvchat.engine.llama.runner import Error, ModelRunner

        path = command.config.model_path
        try:
            gguf = read_model(path)
        except ModelFileError as exc:
            # The file never reaches llama.cpp, and the current model stays.
            loaded = self._runner.info if self._runner is not None else None
            self.send(LoadFailed(path, str(exc), loaded))
            return
        if self._runner is not None:
            self._runner.close()
            self._runner = None
        last_sent = -1.0

        def on_progress(fraction: float) -> bool:
            nonlocal last_sent
            if fraction - last_sent >= PROGRESS_STEP or fraction >= 1.0:
                last_sent = fraction
                self.send(LoadProgress(fraction))
            if fraction >= 0.5:
                self._strike("load")
            return not self.inbox.is_cancelled(None)

        try:
            self._runner = ModelRunner(command.config, gguf, self._log, on_progress)
            self._runner.before_restore = lambda: self._strike("restore")
        except Error as exc:
            self.send(LoadFailed(path, str(exc)))
            return
        self._loaded_at = time.monotonic()
        self.send(ModelLoaded(self._runner.info, self._runner.memory))
        self.send_memory_sample()

    def _chat(self, command: Chat | Complete) -> None:
        from kvchat.engine.llama.runner import ChatError, Error

        request_id = command.request_id
        runner = self._runner
        if runner is None:
            self.send(ChatFailed(request_id, "no model is loaded"))
            return
        # Text waiting to be sent, all of one side: thinking, or the answer.
        pending: list[str] = []
        pending_thinking = False
        last_flush = 0.0
        prompt_evaluated = False
        pieces = 0

        def flush() -> None:
            nonlocal last_flush
            if pending:
                text = "".join(pending)
                self.send(TextDelta(request_id, text, runner.cached_tokens, pending_thinking))
                pending.clear()
            last_flush = time.perf_counter()

        def on_piece(text: str, thinking: bool) -> None:
            nonlocal pieces, pending_thinking
            if thinking != pending_thinking:
                flush()  # a delta is one side's: the other's text goes first, in order
                pending_thinking = thinking
            pending.append(text)
            if time.perf_counter() - last_flush >= TEXT_FLUSH_INTERVAL_S:
                flush()
            if self._fault is not None:
                pieces += 1
                if pieces == faults.DECODE_PIECES:
                    flush()  # the text a crash interrupts has reached the window
                    self._strike("decode")

        def on_prompt(prompt: PromptEvaluated) -> None:
            nonlocal prompt_evaluated
            prompt_evaluated = True
            self.send(replace(prompt, request_id=request_id))

        def should_stop() -> bool:
            if not prompt_evaluated:
                self._strike("prefill")
            return self.inbox.is_cancelled(request_id)

        try:
            if isinstance(command, Complete):
                text, stats = runner.complete(
                    command.prompt,
                    command.sampling,
                    should_stop=should_stop,
                    on_text=lambda text: on_piece(text, False),
                    on_prompt=on_prompt,
                )
            else:
                text, stats = runner.chat(
                    command.messages,
                    command.sampling,
                    should_stop=should_stop,
                    on_text=lambda text: on_piece(text, False),
                    on_prompt=on_prompt,
                    continue_last=command.continue_last,
                    on_thinking=lambda text: on_piece(text, True),
                    reply_room=command.reply_room,
                    drop_oldest=command.drop_oldest,
                )
        except Error as exc:
            flush()
            by_request = isinstance(exc, ChatError) and exc.by_request
            self.send(ChatFailed(request_id, str(exc), by_request))
            return
        flush()
        self.send(TurnFinished(request_id, text, stats))
        self.send_memory_sample()


class _ForgivingLog(io.TextIOBase):
    """The host's log, which never fails the host: on a full disk the lines
    are lost and the engine goes on (it used to exit with code 120, and the
    model was blamed)."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def write(self, text: str) -> int:
        with contextlib.suppress(OSError):
            self._file.write(text)
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError):
            self._file.flush()

    def fileno(self) -> int:
        return self._file.fileno()

    def writable(self) -> bool:
        return True


def main(connection: Connection, log_path: str, fault: faults.Fault | None = None) -> None:
    """The host process's entry point (a `multiprocessing` spawn target).

    Args:
        connection: the pipe to the client.
        log_path: where llama.cpp's log and the host's own lines go.
        fault: a fault to inject, armed by a test in the parent; None in use.
    """
    try:
        log_file = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError:
        # The disk filled since the client checked: the chat matters more than the log.
        log_file = open(os.devnull, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    # Native code writes to file descriptors 1 and 2 directly, not to sys.stderr.
    os.dup2(log_file.fileno(), 1)
    os.dup2(log_file.fileno(), 2)
    sys.stdout = sys.stderr = _ForgivingLog(log_file)
    print(f"--- engine host {os.getpid()} started {time.strftime('%Y-%m-%d %H:%M:%S')}")
    # Read by ggml as its library loads. Without it, an abort runs gdb to print
    # a backtrace: seconds of a dying process, and the assertion that says
    # why scrolls out of the log tail the person is shown.
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")

    from kvchat.engine.llama.build_probe import engine_build
    from kvchat.engine.llama.runner import LlamaLog, gpu_offload_supported, llama_cpp_version

    host = _Host(connection, LlamaLog(), fault)
    reader = threading.Thread(
        target=_read_commands, args=(connection, host.inbox), name="commands", daemon=True
    )
    reader.start()
    sampler = threading.Thread(target=host.sample_memory_until_shutdown, name="memory", daemon=True)
    sampler.start()
    build = engine_build()
    print(f"--- llama.cpp {build.llama_cpp}, commit {build.commit}; {build.system_info}")
    host.send(HostStarted(os.getpid(), llama_cpp_version(), gpu_offload_supported(), build))
    host.serve()
    print(f"--- engine host {os.getpid()} stopped")
    connection.close()
