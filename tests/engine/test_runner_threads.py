"""The runner's decode loop with real llama.cpp: its greedy pick and its
penalties against llama.cpp's own samplers, and its thread count beside real
busy processes."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from kvchat.app.core.formatting import format_stats
from kvchat.engine.gguf_file import read_gguf
from kvchat.engine.llama.bench_direct import DirectLoop
from kvchat.engine.llama.runner import (
    PENALTY_LAST_N,
    LlamaLog,
    ModelRunner,
    Penalties,
    physical_cores,
)
from kvchat.engine.protocol import ChatMessage, LoadConfig, Sampling
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


@pytest.mark.parametrize(
    "sampling",
    [
        Sampling(repeat_penalty=1.1),
        Sampling(repeat_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.2),
        Sampling(repeat_penalty=1.0, presence_penalty=-0.5),
    ],
)
def test_penalties_match_llama_cpps_penalties_sampler_to_the_bit(sampling: Sampling) -> None:
    vocabulary = 5000
    generator = np.random.default_rng(7)
    reference = llama_cpp.llama_sampler_init_penalties(
        vocabulary,
        PENALTY_LAST_N,
        sampling.repeat_penalty,
        sampling.frequency_penalty,
        sampling.presence_penalty,
    )
    ours = Penalties(sampling)
    try:
        # More tokens than the window, some repeated: the oldest leave it.
        for token in generator.integers(0, 300, size=3 * PENALTY_LAST_N):
            ours.accept(int(token))
            llama_cpp.llama_sampler_accept(reference, int(token))
            logits = (generator.standard_normal(vocabulary) * 4).astype(np.float32)
            buffer = (llama_cpp.llama_token_data * vocabulary)()
            candidates = np.ctypeslib.as_array(buffer)
            candidates["id"] = np.arange(vocabulary, dtype=np.int32)
            candidates["logit"] = logits
            array = llama_cpp.llama_token_data_array(
                data=buffer, size=vocabulary, selected=-1, sorted=False
            )
            llama_cpp.llama_sampler_apply(reference, ctypes.byref(array))
            ours.apply(logits)
            assert np.array_equal(logits, candidates["logit"])
    finally:
        llama_cpp.llama_sampler_free(reference)


def test_greedy_with_penalties_repeats_itself_less(model_path: Path, log: LlamaLog) -> None:
    runner = _load(model_path, log)
    prompt = [ChatMessage("user", "List the days of the week, over and over.")]
    try:
        plain, _ = runner.chat(prompt, PLAIN_GREEDY, lambda: False, lambda _t: None)
        penalised = Sampling(temperature=0.0, repeat_penalty=1.5, max_tokens=64)
        text, _ = runner.chat(prompt, penalised, lambda: False, lambda _t: None)
    finally:
        runner.close()
    assert text != plain
    assert _repeated_words(text) < _repeated_words(plain)


def _repeated_words(text: str) -> int:
    """How many of the text's words are repeats of one before them."""
    words = text.lower().split()
    return len(words) - len(set(words))
