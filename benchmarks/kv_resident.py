"""Keeping conversations resident as llama.cpp sequences, against one sequence and restores.

The alternative to saving a conversation's keys and values (kv_restore.py)
is to leave them in the KV cache as a sequence of their own: a context with
`n_seq_max` sequences in one unified cache, each conversation on its own
sequence id. Switching back then costs no copy at all. This measures what it
costs instead, on the real model, with the plain llama.cpp C API:

- one sequence (what kvchat runs): conversation A alone in a 4,096-cell cache;
- resident: A on sequence 0 and B on sequence 1 of one 8,192-cell unified
  cache (both conversations kept, as a resident design would).

For each, the first token of A's next turn (16 new tokens) and then decode
speed over 32 tokens. Each run alternates the two sides; medians and ranges.

    .venv/bin/python benchmarks/kv_resident.py [--runs 5] [--words 2300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

import llama_cpp

from kvchat.engine.llama import vocab
from kvchat.engine.models import bundled_model_path

NOTES = (
    "The lighthouse stood on a spit of black rock where the estuary met the sea. Its keeper "
    "kept a log of every ship that passed, the height of the tide at dawn and dusk, the colour "
    "of the sky, and the direction of the wind. "
)
OTHER = (
    "A market town grew up around the ford, with a mill, two inns and a church whose bells "
    "could be heard across the marsh on still evenings. "
)


class Context:
    """A llama.cpp context with `n_seq` sequences in one unified cache of `n_ctx` cells."""

    def __init__(self, model: llama_cpp.llama_model_p, n_ctx: int, n_seq: int) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = 512
        params.n_ubatch = 512
        params.n_seq_max = n_seq
        params.kv_unified = True
        # As kvchat loads on the CPU (engine.load_params): flash attention off.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.n_threads = params.n_threads_batch = 2
        params.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(model, params)
        assert self.ctx, "llama.cpp could not make the context"
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(512, 0, 1)
        self.ends = [0] * n_seq

    def decode(self, tokens: Sequence[int], seq: int) -> None:
        for start in range(0, len(tokens), 512):
            chunk = tokens[start : start + 512]
            batch = self.batch
            batch.n_tokens = len(chunk)
            for i, token in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = self.ends[seq] + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = i == len(chunk) - 1
            assert llama_cpp.llama_decode(self.ctx, batch) == 0
            self.ends[seq] += len(chunk)

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)


def _turn(context: Context, new_tokens: list[int], steps: int) -> tuple[float, float]:
    """Seconds to A's first token, and decode tokens/s over `steps` tokens (on sequence 0)."""
    started = time.perf_counter()
    context.decode(new_tokens, 0)
    first = time.perf_counter() - started
    token = new_tokens[-1]
    started = time.perf_counter()
    for _ in range(steps):
        context.decode([token], 0)
    return first, steps / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/kv_resident.py", description=__doc__)
    parser.add_argument("--model", help="a GGUF file (default: bundled)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--words", type=int, default=2300)
    args = parser.parse_args(argv)
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(
        (args.model or str(bundled_model_path())).encode(), params
    )
    voc = llama_cpp.llama_model_get_vocab(model)

    def text(source: str) -> list[int]:
        words = source.split()
        body = " ".join(words[i % len(words)] for i in range(args.words))
        return vocab.tokenize(voc, body, add_special=True, parse_special=False)

    a, b = text(NOTES), text(OTHER)
    new = vocab.tokenize(voc, " Now summarise the notes in one line.", False, False)
    new = (new * 4)[:16]
    figures: dict[str, list[tuple[float, float]]] = {"one": [], "resident": []}
    for run in range(args.runs):
        print(f"run {run + 1} of {args.runs}", file=sys.stderr)
        for side in ("one", "resident") if run % 2 == 0 else ("resident", "one"):
            context = Context(model, 4096 if side == "one" else 8192, 1 if side == "one" else 2)
            context.decode(a, 0)
            if side == "resident":
                context.decode(b, 1)
            figures[side].append(_turn(context, new, 32))
            context.close()
    print(f"A: {len(a)} tokens, B: {len(b)} tokens, {args.runs} runs, alternated")
    for side, name in (("one", "one sequence"), ("resident", "A and B resident")):
        firsts = [f * 1000 for f, _ in figures[side]]
        speeds = [s for _, s in figures[side]]
        print(
            f"{name:18} first token {statistics.median(firsts):.0f} ms "
            f"({min(firsts):.0f}–{max(firsts):.0f}), decode {statistics.median(speeds):.1f} "
            f"tok/s ({min(speeds):.1f}–{max(speeds):.1f})"
        )
    llama_cpp.llama_model_free(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
