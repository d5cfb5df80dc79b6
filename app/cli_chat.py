"""`kvchat chat "question"`: one reply streamed to stdout through the engine host."""

from __future__ import annotations

import sys
from pathlib import Path

from kvchat.app.formatting import format_stats
from kvchat.app.paths import engine_log_path
from kvchat.app.settings import EngineSettings
from kvchat.engine.client import HostProcess
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

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"kvchat: {message}", file=sys.stderr)
    return code


def run_chat(
    question: str,
    model_path: str | None,
    settings: EngineSettings,
    data_dir: Path,
    show_stats: bool = False,
) -> int:
    if not question.strip():
        return _fail("the question is empty", EXIT_BAD_INPUT)
    try:
        question.encode("utf-8")
    except UnicodeEncodeError:
        # Bytes that are not UTF-8 reach argv as lone surrogates (surrogateescape):
        # the engine could not tokenize them, and guessing would change the question.
        return _fail(
            "the question holds bytes that are not UTF-8 text: check the terminal's encoding",
            EXIT_BAD_INPUT,
        )
    if model_path is None:
        bundled = bundled_model_path()
        if bundled is None:
            return _fail(missing_model_message(), EXIT_BAD_INPUT)
        model_path = str(bundled)

    messages = [ChatMessage("user", question)]
    if settings.system_prompt:
        messages.insert(0, ChatMessage("system", settings.system_prompt))
    host = HostProcess(engine_log_path(data_dir))
    try:
        host.send(LoadModel(settings.load_config(model_path)))
        while True:
            event = host.receive(timeout=None)
            if isinstance(event, ModelLoaded):
                host.send(Chat(1, tuple(messages), settings.sampling()))
            elif isinstance(event, TextDelta):
                sys.stdout.write(event.text)
                sys.stdout.flush()
            elif isinstance(event, TurnFinished):
                sys.stdout.write("\n")
                if show_stats:
                    print(format_stats(event.stats), file=sys.stderr)
                return 0
            elif isinstance(event, LoadFailed):
                return _fail(
                    f"could not load {Path(event.model_path).name}: {event.message}",
                    EXIT_BAD_INPUT,
                )
            elif isinstance(event, ChatFailed):
                return _fail(event.message)
            elif isinstance(event, HostExited):
                return _fail(f"{event.description} (log: {host.log_path})")
    except KeyboardInterrupt:
        host.send(Cancel())
        return 130
    finally:
        host.close()
