"""Flash attention on and off on the CPU: decode speed as the conversation grows.

kvchat turns llama.cpp's "auto" flash attention off on a load that runs
wholly on the CPU (engine.load_params); this is the measurement behind it.
Two contexts of the real model, same threads and batch, one with flash
attention and one without; at each depth the cache is filled to that many
tokens and single tokens are decoded, as a reply does. The two sides
alternate within each run; medians and ranges over runs.

    .venv/bin/python benchmarks/flash_attention.py [--runs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

import llama_cpp

from kvchat.engine.models import bundled_model_path

DEPTHS = (0, 512, 1024, 2048, 3072)
STEPS = 16


def _decode(ctx: llama_cpp.llama_context_p, tokens: Sequence[int]) -> None:
    array = (llama_cpp.llama_token * len(tokens))(*tokens)
    if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(array, len(tokens))) != 0:
        raise SystemExit("llama_decode failed")


def _speed_at(ctx: llama_cpp.llama_context_p, depth: int) -> float:
    """Decode tokens/s (median of STEPS single tokens) with `depth` tokens cached."""
    memory = llama_cpp.llama_get_memory(ctx)
    llama_cpp.llama_memory_clear(memory, True)
    for start in range(0, depth, 512):
        _decode(ctx, [100 + (i * 37) % 40000 for i in range(start, min(start + 512, depth))])
    steps = []
    for i in range(STEPS):
        started = time.perf_counter()
        _decode(ctx, [300 + i])
        steps.append(time.perf_counter() - started)
    return 1 / statistics.median(steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/flash_attention.py", description=__doc__)
    parser.add_argument("--model", help="a GGUF file (default: bundled)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    quiet = llama_cpp.llama_log_callback(lambda *_args: None)
    llama_cpp.llama_log_set(quiet, None)
    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(
        (args.model or str(bundled_model_path())).encode(), llama_cpp.llama_model_default_params()
    )
    contexts = {}
    for name, kind in (
        ("on", llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED),
        ("off", llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED),
    ):
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = 4096
        params.n_batch = params.n_ubatch = 512
        params.n_threads = params.n_threads_batch = args.threads
        params.flash_attn_type = kind
        params.no_perf = True
        contexts[name] = llama_cpp.llama_init_from_model(model, params)
    speeds: dict[tuple[str, int], list[float]] = {}
    for run in range(args.runs):
        print(f"run {run + 1} of {args.runs}", file=sys.stderr)
        order = ("on", "off") if run % 2 == 0 else ("off", "on")
        for depth in DEPTHS:
            for name in order:
                speeds.setdefault((name, depth), []).append(_speed_at(contexts[name], depth))
    print(f"decode tokens/s, {args.threads} threads, median (range) of {args.runs} runs")
    print(f"{'cached tokens':>14}  {'flash attention on':>22}  {'off':>22}")
    for depth in DEPTHS:
        cells = []
        for name in ("on", "off"):
            values = speeds[(name, depth)]
            cells.append(
                f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})".rjust(22)
            )
        print(f"{depth:>14}  {cells[0]}  {cells[1]}")
    for ctx in contexts.values():
        llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
