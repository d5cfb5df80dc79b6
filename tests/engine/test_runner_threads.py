"""The runner's decode loop with the real model: its greedy pick against
llama.cpp's greedy sampler, and its thread count beside real busy processes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvchat.app.formatting import format_stats
from kvchat.engine.bench_direct import DirectLoop
from kvchat.engine.gguf_file import read_gguf
from kvchat.engine.protocol import ChatMessage, LoadConfig, Sampling
from kvchat.engine.runner import LlamaLog, ModelRunner, physical_cores
from kvchat.engine.threads import CpuLoad

# Temperature 0 and no penalties: the most likely token each time.
PLAIN_GREEDY = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=64)
LONG_ANSWER = [ChatMessage("user", "Tell me a long story about a lighthouse keeper.")]


@pytest.fixture(scope="module")
def log() -> LlamaLog:
    return LlamaLog()


def _load(model_path: Path, log: LlamaLog, threads: int | None = None) -> ModelRunner:
    return ModelRunner(LoadConfig(str(model_path), n_threads=threads), read_gguf(model_path), log)


@pytest.fixture
def burners() -> Iterator[None]:
    """Other processes busy on all CPUs but one, for as long as the test runs."""
    count = max((CpuLoad().cpus or 1) - 1, 1)
    started = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    time.sleep(0.5)  # long enough for the kernel's counters to show them
    yield
    for burner in started:
        burner.kill()
        burner.wait()


def test_plain_greedy_picks_what_llama_cpps_greedy_sampler_picks(
    model_path: Path, log: LlamaLog
) -> None:
    runner = _load(model_path, log)
    try:
        info = runner.info
        text, stats = runner.chat(LONG_ANSWER, PLAIN_GREEDY, lambda: False, lambda _t: None)
    finally:
        runner.close()
    direct = DirectLoop(str(model_path), info.n_ctx, runner.n_batch, info.n_threads, 0)
    try:
        reference = direct.run(LONG_ANSWER, PLAIN_GREEDY.max_tokens, cached=0)
    finally:
        direct.close()
    assert stats.generated_tokens == reference["generated_tokens"] > 10
    assert text == reference["text"]


@pytest.mark.skipif(physical_cores() < 2, reason="one core has no thread to spare")
@pytest.mark.usefixtures("burners")
def test_decode_gives_up_a_thread_to_a_busy_neighbour(model_path: Path, log: LlamaLog) -> None:
    runner = _load(model_path, log)
    try:
        sampling = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=96)
        _text, stats = runner.chat(LONG_ANSWER, sampling, lambda: False, lambda _t: None)
    finally:
        runner.close()
    assert stats.generated_tokens > 40
    assert stats.decode_threads < physical_cores()
    assert stats.threads_note.startswith(f"{physical_cores()} → ")
    assert "using" in stats.threads_note
    assert f"threads {stats.threads_note}" in format_stats(stats)


@pytest.mark.usefixtures("burners")
def test_a_thread_count_the_person_chose_is_kept(model_path: Path, log: LlamaLog) -> None:
    chosen = max(physical_cores(), 2)
    runner = _load(model_path, log, threads=chosen)
    try:
        _text, stats = runner.chat(LONG_ANSWER, PLAIN_GREEDY, lambda: False, lambda _t: None)
    finally:
        runner.close()
    assert stats.decode_threads == chosen
    assert stats.threads_note == ""
