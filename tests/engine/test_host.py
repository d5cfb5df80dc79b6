"""The engine host as a real child process, over the real pipe."""

from __future__ import annotations

import os
import signal
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvchat.engine.client import HostProcess, describe_exit
from kvchat.engine.protocol import (
    Cancel,
    Chat,
    ChatFailed,
    ChatMessage,
    Event,
    HostExited,
    HostStarted,
    LoadConfig,
    LoadFailed,
    LoadModel,
    LoadProgress,
    MemorySample,
    ModelLoaded,
    PromptEvaluated,
    Sampling,
    TextDelta,
    TurnFinished,
)
from tests.model_factory import TINY_THINKING, ModelFactory, model_factory
from tests.read_only import read_only

__all__ = ["model_factory"]  # a fixture, imported so that pytest finds it

TIMEOUT_S = 60.0
STORY = (ChatMessage("user", "Write a long story about a lighthouse keeper."),)


@pytest.fixture
def host(data_dir: Path) -> Iterator[HostProcess]:
    process = HostProcess(data_dir / "logs" / "engine.log")
    yield process
    process.close()


def _next(host: HostProcess) -> Event:
    event = host.receive(TIMEOUT_S)
    assert event is not None, "the host sent nothing in time"
    return event


def _until(host: HostProcess, kind: type) -> list[Event]:
    """Events up to and including the first of `kind`."""
    events = []
    while True:
        event = _next(host)
        events.append(event)
        if isinstance(event, kind):
            return events
        assert not isinstance(event, HostExited), event


def _load(host: HostProcess, path: Path) -> ModelLoaded:
    host.send(LoadModel(LoadConfig(str(path))))
    event = _until(host, ModelLoaded | LoadFailed)[-1]  # type: ignore[arg-type]
    assert isinstance(event, ModelLoaded), event
    return event


def test_load_reports_progress_then_the_model(host: HostProcess, model_path: Path) -> None:
    host.send(LoadModel(LoadConfig(str(model_path))))
    events = _until(host, ModelLoaded)
    assert isinstance(events[0], HostStarted)
    assert events[0].pid == host.pid
    fractions = [e.fraction for e in events if isinstance(e, LoadProgress)]
    assert len(fractions) > 2 and fractions == sorted(fractions) and fractions[-1] == 1.0
    info = events[-1].info  # type: ignore[union-attr]
    assert info.name == "SmolLM2-135M-Instruct.Q4_1"
    assert info.n_ctx == 4096
    memory = events[-1].memory  # type: ignore[union-attr]
    assert memory.kv_bytes == 4096 * memory.kv_bytes_per_token
    # A first memory sample follows at once, then about one a second.
    sample = _until(host, MemorySample)[-1]
    assert isinstance(sample, MemorySample)
    assert sample.tokens_in_cache == 0
    assert sample.devices[0].name == "CPU"


def test_reply_streams_as_text_deltas(host: HostProcess, model_path: Path) -> None:
    _load(host, model_path)
    host.send(Chat(7, (ChatMessage("user", "Name three rivers."),), Sampling(max_tokens=40)))
    events = _until(host, TurnFinished)
    deltas = [e for e in events if isinstance(e, TextDelta)]
    finished = events[-1]
    assert isinstance(finished, TurnFinished)
    assert len(deltas) > 3
    # The prompt is reported before the first text, and the cache grows with the text.
    (prompt,) = [e for e in events if isinstance(e, PromptEvaluated)]
    assert events.index(prompt) < events.index(deltas[0])
    assert prompt.request_id == 7
    assert prompt.evaluated_tokens == finished.stats.evaluated_tokens
    fills = [d.tokens_in_cache for d in deltas]
    assert fills == sorted(fills) and fills[0] >= prompt.prompt_tokens
    assert {d.request_id for d in deltas} == {7}
    assert finished.request_id == 7
    assert "".join(d.text for d in deltas) == finished.text
    assert finished.stats.generated_tokens > 3


def test_thinking_streams_apart_from_the_answer(
    host: HostProcess, model_factory: ModelFactory
) -> None:
    _load(host, model_factory.path(TINY_THINKING))
    host.send(Chat(3, (ChatMessage("user", "Hi"),), Sampling(temperature=0.0)))
    events = _until(host, TurnFinished)
    deltas = [e for e in events if isinstance(e, TextDelta)]
    finished = events[-1]
    assert isinstance(finished, TurnFinished)
    sides = [d.thinking for d in deltas]
    assert sides == sorted(sides, reverse=True)  # all of the thinking, then the answer
    assert "".join(d.text for d in deltas if d.thinking) == " Hmm so"
    assert "".join(d.text for d in deltas if not d.thinking) == finished.text == "Yes indeed"
    assert finished.stats.thinking_tokens == 3 and finished.stats.generated_tokens == 5


def test_cancel_stops_generation_at_once(host: HostProcess, model_path: Path) -> None:
    _load(host, model_path)
    host.send(Chat(1, STORY, Sampling(max_tokens=1000)))
    _until(host, TextDelta)
    host.send(Cancel(1))
    events = _until(host, TurnFinished)
    finished = events[-1]
    assert isinstance(finished, TurnFinished)
    assert finished.stats.stop_reason == "cancelled"
    assert finished.stats.generated_tokens < 100
    # A cancel for a finished request does not touch the next one.
    host.send(Cancel(1))
    host.send(Chat(2, STORY, Sampling(max_tokens=10)))
    assert _until(host, TurnFinished)[-1].stats.stop_reason == "length"  # type: ignore[union-attr]


def test_a_command_that_fails_unforeseen_is_answered_and_the_engine_goes_on(
    host: HostProcess, model_path: Path
) -> None:
    loaded = _load(host, model_path)
    # A lone surrogate cannot become UTF-8 for the tokenizer: the window and
    # the store never send one, but nothing past them may end the engine.
    host.send(Chat(4, (ChatMessage("user", "half a pair \ud800"),), Sampling(max_tokens=4)))
    failed = _until(host, ChatFailed)[-1]
    assert isinstance(failed, ChatFailed) and failed.request_id == 4
    assert failed.message.startswith("the engine failed (UnicodeEncodeError")
    host.send(LoadModel(LoadConfig("/models/\udcff.gguf")))
    refused = _until(host, LoadFailed)[-1]
    assert isinstance(refused, LoadFailed) and refused.loaded == loaded.info
    host.send(Chat(5, STORY, Sampling(max_tokens=4)))
    assert isinstance(_until(host, TurnFinished)[-1], TurnFinished)


def test_chat_before_any_model_fails_politely(host: HostProcess) -> None:
    host.send(Chat(3, STORY))
    failed = _until(host, ChatFailed)[-1]
    assert failed == ChatFailed(3, "no model is loaded")


def test_bad_file_never_reaches_llama_cpp_and_keeps_the_model(
    host: HostProcess, model_path: Path, tmp_path: Path
) -> None:
    loaded = _load(host, model_path)
    archive = tmp_path / "model.gguf"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("x", "y")
    host.send(LoadModel(LoadConfig(str(archive))))
    failed = _until(host, LoadFailed)[-1]
    assert isinstance(failed, LoadFailed)
    assert failed.message == "not a GGUF file: it starts with PK, a zip archive?"
    assert failed.loaded == loaded.info
    # The old model still answers.
    host.send(Chat(4, STORY, Sampling(max_tokens=5)))
    assert isinstance(_until(host, TurnFinished)[-1], TurnFinished)
    log = (host.log_path).read_text()
    assert "model.gguf" not in log  # llama.cpp never saw the file


def test_file_llama_cpp_rejects_gets_its_reason(host: HostProcess, tmp_path: Path) -> None:
    import gguf
    import numpy as np

    path = tmp_path / "alien.gguf"
    writer = gguf.GGUFWriter(str(path), "no-such-architecture")
    writer.add_tensor("w", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    host.send(LoadModel(LoadConfig(str(path))))
    failed = _until(host, LoadFailed)[-1]
    assert isinstance(failed, LoadFailed)
    assert "llama.cpp could not load alien.gguf" in failed.message
    assert "no-such-architecture" in failed.message
    assert failed.loaded is None


def test_host_killed_is_reported_with_its_signal(host: HostProcess, model_path: Path) -> None:
    _load(host, model_path)
    assert host.pid is not None
    os.kill(host.pid, signal.SIGKILL)
    exited = _until(host, HostExited)[-1]
    assert isinstance(exited, HostExited)
    assert exited.exit_code == -signal.SIGKILL
    assert "SIGKILL" in exited.description
    # The last lines llama.cpp logged come along, for the person to see.
    assert exited.log_tail.strip()
    assert host.log_path.read_text().endswith(exited.log_tail)
    assert not host.is_alive()


def test_stop_during_generation_ends_the_process(host: HostProcess, model_path: Path) -> None:
    _load(host, model_path)
    host.send(Chat(5, STORY, Sampling(max_tokens=2000)))
    _until(host, TextDelta)
    host.stop()
    assert not host.is_alive()


def test_stop_during_load_ends_the_process(host: HostProcess, model_path: Path) -> None:
    host.send(LoadModel(LoadConfig(str(model_path))))
    host.stop()
    assert not host.is_alive()


def test_describe_exit() -> None:
    assert describe_exit(0) == "the engine stopped"
    assert describe_exit(-signal.SIGSEGV) == "the engine crashed with SIGSEGV"
    assert "lack of memory" in describe_exit(-signal.SIGKILL)
    assert "truncated while it was loaded" in describe_exit(-signal.SIGBUS)
    assert describe_exit(3) == "the engine exited with code 3"


def test_a_read_only_data_folder_does_not_stop_the_engine(data_dir: Path, model_path: Path) -> None:
    """No logs/ folder yet, and none can be made: the log goes elsewhere, and says where."""
    with read_only(data_dir):
        host = HostProcess(data_dir / "logs" / "engine.log")
        try:
            # Where the log goes is decided as the process starts.
            assert isinstance(_next(host), HostStarted)
            assert host.log_path.parent != data_dir / "logs"
            assert host.log_note.startswith(
                f"The engine's log cannot be written to {data_dir / 'logs' / 'engine.log'}"
            )
            assert stat.S_IMODE(host.log_path.parent.stat().st_mode) == 0o700
            host.send(LoadModel(LoadConfig(str(model_path), n_ctx=512)))
            assert isinstance(_until(host, ModelLoaded)[-1], ModelLoaded)
        finally:
            host.close()
    assert "load_tensors" in host.log_path.read_text()
    assert not (data_dir / "logs").exists()
