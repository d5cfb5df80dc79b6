"""Live memory accounting against llama.cpp's own figures, on the real bundled model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest

from kvchat.engine.buffer_report import MIB, parse_buffer_report
from kvchat.engine.gguf_file import read_gguf
from kvchat.engine.llama.runner import LlamaLog, ModelRunner
from kvchat.engine.protocol import ChatMessage, LoadConfig, Sampling

# llama.cpp serialises each cell of a sequence with its position, its
# sequence count and one sequence id (4 bytes each) besides the K and V rows.
STATE_BYTES_PER_CELL = 12


@pytest.fixture(scope="module")
def log() -> LlamaLog:
    return LlamaLog()


def _load(model_path: Path, log: LlamaLog, **config: object) -> tuple[ModelRunner, list[str]]:
    """A runner, and every line llama.cpp logged while it loaded (the reference)."""
    with log.capture() as lines:
        runner = ModelRunner(LoadConfig(str(model_path), **config), read_gguf(model_path), log)  # type: ignore[arg-type]
    return runner, lines


@pytest.fixture(scope="module")
def loaded(model_path: Path, log: LlamaLog) -> Iterator[tuple[ModelRunner, list[str]]]:
    runner, lines = _load(model_path, log)
    yield runner, lines
    runner.close()


def test_weights_match_the_files_tensors_and_llamas_report(
    loaded: tuple[ModelRunner, list[str]], model_path: Path
) -> None:
    runner, lines = loaded
    reference = parse_buffer_report(lines)
    (cpu,) = runner.memory.buffers
    assert cpu.device == "CPU"
    tensor_bytes = sum(t.n_bytes for t in read_gguf(model_path).tensors)
    assert cpu.weights_bytes == pytest.approx(tensor_bytes, rel=0.01)
    assert cpu.weights_bytes == reference.total("weights")
    assert cpu.weights_bytes == pytest.approx(llama_cpp.llama_model_size(runner._model), rel=0.01)


def test_kv_cache_is_what_the_model_shape_says(loaded: tuple[ModelRunner, list[str]]) -> None:
    runner, lines = loaded
    memory = runner.memory
    (cache,) = memory.kv_caches
    # SmolLM2-135M: 30 layers, 3 KV heads of 64, f16 K and V.
    assert cache.bytes_per_cell == 30 * 2 * (3 * 64 * 2)
    assert cache.cells == runner.n_ctx == 4096
    assert memory.kv_bytes == cache.cells * cache.bytes_per_cell
    reference = parse_buffer_report(lines).total("kv")
    assert abs(memory.kv_bytes - reference) <= 0.006 * MIB
    (cpu,) = memory.buffers
    assert cpu.kv_bytes == reference


def test_compute_buffers_are_llamas(loaded: tuple[ModelRunner, list[str]]) -> None:
    runner, lines = loaded
    reference = parse_buffer_report(lines)
    (cpu,) = runner.memory.buffers
    assert cpu.compute_bytes == reference.total("compute") + reference.total("output")
    assert cpu.compute_bytes > 50 * MIB


def _state_bytes(runner: ModelRunner) -> int:
    return int(llama_cpp.llama_state_seq_get_size(runner._ctx, 0))


def test_bytes_used_track_tokens_exactly(loaded: tuple[ModelRunner, list[str]]) -> None:
    """As the cache fills, after a turn reuses its prefix, after it is trimmed."""
    runner, _ = loaded
    memory = runner.memory
    per_cell = memory.kv_bytes_per_token + STATE_BYTES_PER_CELL
    greedy = Sampling(temperature=0.0, max_tokens=20)
    conversation = [ChatMessage("user", "Name a planet.")]

    text, _ = runner.chat(conversation, greedy, lambda: False, lambda _t: None)
    first = runner.cached_tokens
    first_state = _state_bytes(runner)
    assert memory.kv_bytes_used(first) == first * memory.kv_bytes_per_token

    # Fill: a second turn reuses the first and adds to it.
    conversation += [ChatMessage("assistant", text), ChatMessage("user", "And a star?")]
    runner.chat(conversation, greedy, lambda: False, lambda _t: None)
    second = runner.cached_tokens
    assert second > first
    assert _state_bytes(runner) - first_state == (second - first) * per_cell

    # Trim: a different, shorter conversation keeps only the shared prefix.
    seen: list[int] = []
    runner.chat(
        [ChatMessage("user", "Name")],
        Sampling(temperature=0.0, max_tokens=1),
        lambda: False,
        lambda _t: None,
        on_prompt=lambda prompt: seen.append(prompt.reused_tokens + prompt.evaluated_tokens),
    )
    third = runner.cached_tokens
    assert third < second
    assert seen == [third]
    assert _state_bytes(runner) - first_state == (third - first) * per_cell


@pytest.mark.parametrize("kv_type", ["q8_0", "q4_0"])
def test_quantized_kv_types(model_path: Path, log: LlamaLog, kv_type: str) -> None:
    runner, lines = _load(
        model_path, log, n_ctx=1024, type_k=kv_type, type_v=kv_type, flash_attention="on"
    )
    try:
        (cache,) = runner.memory.kv_caches
        assert (cache.type_k, cache.type_v) == (kv_type, kv_type)
        block_bytes = {"q8_0": 34, "q4_0": 18}[kv_type]  # per 32 values
        assert cache.bytes_per_cell == 30 * 2 * (3 * 64 // 32 * block_bytes)
        reference = parse_buffer_report(lines).total("kv")
        assert abs(runner.memory.kv_bytes - reference) <= 0.006 * MIB
    finally:
        runner.close()


def test_prompt_parts_add_up(loaded: tuple[ModelRunner, list[str]]) -> None:
    runner, _ = loaded
    parts = []
    conversation = [
        ChatMessage("system", "You are terse."),
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Hello."),
        ChatMessage("user", "What is 2+2?"),
    ]
    _, stats = runner.chat(
        conversation,
        Sampling(temperature=0.0, max_tokens=2),
        lambda: False,
        lambda _t: None,
        on_prompt=parts.append,
    )
    (prompt,) = parts
    system_only = len(runner.render_prompt(conversation[:1]))
    assert 0 < prompt.system_tokens <= system_only + 3
    assert prompt.history_tokens > 0
    assert prompt.system_tokens + prompt.history_tokens < prompt.prompt_tokens
    assert (stats.system_tokens, stats.history_tokens) == (
        prompt.system_tokens,
        prompt.history_tokens,
    )
