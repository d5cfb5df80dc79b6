"""`kvchat chat "question"`: one reply streamed to stdout through the engine host.

A reasoning model's thinking goes to stderr, dimmed on a terminal, and its
answer to stdout: on screen the thinking reads before the answer, and
`kvchat chat ... > answer.txt` (or a pipe) gets the answer alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

from kvchat.app.core.formatting import format_stats, model_label
from kvchat.app.core.paths import engine_log_path
from kvchat.app.core.settings import EngineSettings
from kvchat.engine.client import EngineHost, HostProcess
from kvchat.engine.models import bundled_model_path, missing_model_message
from kvchat.engine.protocol import (
    Cancel,
    Chat,
    ChatFailed,
    ChatMessage,
    HostExited,
    LoadFailed,
    LoadModel,
    ModelLoaded,
    TextDelta,
    TurnFinished,
)
from kvchat.engine.remote import RemoteHost
from kvchat.engine.remote_address import is_remote

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
# What a shell reports for a program ended by SIGPIPE: `kvchat chat ... | head`.
EXIT_PIPE_CLOSED = 128 + 13


class OutputClosedError(Exception):
    """Whoever read the reply stopped reading (`| head`): end quietly."""


class OutputFailedError(Exception):
    """The reply could not be written (a full disk, an error of the device)."""


def _write(text: str) -> None:
    """Writes reply text to stdout as UTF-8, whatever the locale says."""
    try:
        sys.stdout.buffer.write(text.encode("utf-8", "replace"))
        sys.stdout.flush()
    except BrokenPipeError:
        raise OutputClosedError from None
    except OSError as exc:
        raise OutputFailedError(exc.strerror or str(exc)) from None


# The terminal's faint style, and back to normal.
DIM = "\x1b[2m"
UNDIM = "\x1b[22m"


class ThinkingOutput:
    """Writes a reply's thinking to stderr, dimmed when stderr is a terminal.

    The thinking ends with a line break of its own, so that the answer,
    which follows on stdout, starts on a fresh line. Thinking that cannot be
    written (stderr closed) is dropped: the answer matters more.
    """

    def __init__(self) -> None:
        self._stream: TextIO | None = sys.stderr
        try:
            self._dim = self._stream is not None and self._stream.isatty()
        except (OSError, ValueError):
            self._stream, self._dim = None, False
        self._open = False

    def write(self, text: str) -> None:
        if not self._open:
            self._open = True
            text = (DIM if self._dim else "") + text
        self._put(text)

    def close(self) -> None:
        """Ends the thinking, if any was written (before the answer, and at the end)."""
        if self._open:
            self._open = False
            self._put((UNDIM if self._dim else "") + "\n")

    def _put(self, text: str) -> None:
        stream = self._stream
        if stream is None:
            return
        try:
            # As UTF-8 whatever the locale says, after what print() left in the text layer.
            stream.flush()
            binary = getattr(stream, "buffer", None)
            if binary is None:
                stream.write(text)
            else:
                binary.write(text.encode("utf-8", "replace"))
            stream.flush()
        except (OSError, ValueError):
            self._stream = None


def _quiet_stdout() -> None:
    """Points stdout at /dev/null, so the interpreter's last flush cannot fail too."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def question_text(argument: str) -> str | None:
    """The question as the person typed it: argv's bytes read as UTF-8, or None.

    Under a C or POSIX locale without UTF-8 mode, Python decodes argv as
    ASCII and keeps other bytes as lone surrogates; the bytes themselves are
    still the person's UTF-8 text.
    """
    try:
        return os.fsencode(argument).decode("utf-8")
    except UnicodeError:
        return None


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"kvchat: {message}", file=sys.stderr)
    return code


def run_chat(
    question: str,
    model_path: str | None,
    settings: EngineSettings,
    data_dir: Path,
    show_stats: bool = False,
    api_key: str | None = None,
) -> int:
    """Streams one reply; `model_path` may be a remote model's URL (engine.remote)."""
    if sys.stdout is None:
        return _fail("standard output is closed: there is nowhere to write the reply")
    if not question.strip():
        return _fail("the question is empty", EXIT_BAD_INPUT)
    decoded = question_text(question)
    if decoded is None:
        # The engine could not tokenize such bytes, and guessing would change the question.
        return _fail(
            "the question holds bytes that are not UTF-8 text: check the terminal's encoding",
            EXIT_BAD_INPUT,
        )
    question = decoded
    if model_path is None:
        bundled = bundled_model_path()
        if bundled is None:
            return _fail(missing_model_message(), EXIT_BAD_INPUT)
        model_path = str(bundled)

    messages = [ChatMessage("user", question)]
    if settings.system_prompt:
        messages.insert(0, ChatMessage("system", settings.system_prompt))
    host: EngineHost
    if is_remote(model_path):
        host = RemoteHost(engine_log_path(data_dir), api_key)
    else:
        host = HostProcess(engine_log_path(data_dir))
    if host.log_note:
        print(f"kvchat: {host.log_note}", file=sys.stderr)
    thinking = ThinkingOutput()
    try:
        host.send(LoadModel(settings.load_config(model_path)))
        while True:
            event = host.receive(timeout=None)
            if isinstance(event, ModelLoaded):
                host.send(Chat(1, tuple(messages), settings.sampling()))
            elif isinstance(event, TextDelta) and event.thinking:
                thinking.write(event.text)
            elif isinstance(event, TextDelta):
                thinking.close()
                _write(event.text)
            elif isinstance(event, TurnFinished):
                thinking.close()
                _write("\n")
                if show_stats:
                    print(format_stats(event.stats), file=sys.stderr)
                return 0
            elif isinstance(event, LoadFailed):
                return _fail(
                    f"could not load {model_label(event.model_path)}: {event.message}",
                    EXIT_BAD_INPUT,
                )
            elif isinstance(event, ChatFailed):
                thinking.close()
                return _fail(event.message)
            elif isinstance(event, HostExited):
                thinking.close()
                return _fail(f"{event.description} (log: {host.log_path})")
    except KeyboardInterrupt:
        host.send(Cancel())
        thinking.close()
        return 130
    except OutputClosedError:
        host.send(Cancel())
        _quiet_stdout()
        return EXIT_PIPE_CLOSED
    except OutputFailedError as exc:
        host.send(Cancel())
        return _fail(f"could not write the reply to standard output: {exc}")
    finally:
        host.close()
