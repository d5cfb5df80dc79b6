"""Streamed text is the reply: the pieces a sampled reply streams join into
the text returned, and the same seed gives the same reply whether it is
watched piece by piece or not (real model, in this process)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from kvchat.engine.gguf_file import read_gguf
from kvchat.engine.llama.runner import LlamaLog, ModelRunner
from kvchat.engine.protocol import ChatMessage, LoadConfig, Sampling

# Sampled, not greedy: the seed decides every token.
SAMPLED = Sampling(temperature=0.9, top_k=60, top_p=0.95, max_tokens=64, seed=1234)
QUESTION = [ChatMessage("user", "Two sentences about a lighthouse in winter. 漢字 👩\u200d💻")]


@pytest.fixture(scope="module")
def runner(model_path: Path) -> Iterator[ModelRunner]:
    loaded = ModelRunner(LoadConfig(str(model_path)), read_gguf(model_path), LlamaLog())
    yield loaded
    loaded.close()


def _run(runner: ModelRunner, sampling: Sampling, pieces: list[str] | None) -> str:
    on_text = pieces.append if pieces is not None else (lambda _text: None)
    text, stats = runner.chat(QUESTION, sampling, lambda: False, on_text)
    assert stats.generated_tokens > 8
    return text


@pytest.mark.parametrize("seed", [1234, 98765])
def test_streamed_pieces_equal_the_reply_and_an_unwatched_run(
    runner: ModelRunner, seed: int
) -> None:
    sampling = replace(SAMPLED, seed=seed)
    # The prompt into the cache first, so that both runs below start from the
    # same keys and values: with flash attention off (kvchat's CPU default),
    # llama.cpp's results depend on how the prompt was batched, so a run on a
    # fresh cache may sample differently from one on a reused cache.
    _run(runner, sampling, None)
    pieces: list[str] = []
    streamed = _run(runner, sampling, pieces)
    assert len(pieces) > 4
    assert "".join(pieces) == streamed
    # Again, nobody watching, from the same cache.
    unwatched = _run(runner, sampling, None)
    assert unwatched == streamed
    # A different seed samples something else, so the equality above is not vacuous.
    other = _run(runner, replace(sampling, seed=seed + 1), None)
    assert other != streamed
