"""Returning to a conversation of about 3,000 tokens: restored against evaluated again.

The engine's ModelRunner on the real model, in this process (a benchmark may
import llama.cpp; the app's GUI process may not). Each run builds the same
conversation A, then times the first token of A's next turn four ways:

- never left: A's next turn right after A's last one (the live cache);
- restored from RAM: after another conversation B took the cache;
- evaluated again: after B, with every saved state forgotten;
- restored from disk: in a new runner (as after a restart), from the file
  the first one wrote as it closed;
- and both restores again as the window does them: when A is opened
  (`ModelRunner.prepare`), before the person's turn, which then finds A live.

Each run is one sequence of the four; the medians and ranges over runs are
printed, with the bytes per token on disk against the KV bytes per token the
panel shows.

    .venv/bin/python benchmarks/kv_restore.py [--runs 5] [--words 2300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kvchat.engine.gguf_file import read_gguf
from kvchat.engine.llama.runner import LlamaLog, ModelRunner
from kvchat.engine.models import bundled_model_path
from kvchat.engine.protocol import ChatMessage, LoadConfig, Sampling

SAMPLING = Sampling(temperature=0.0, max_tokens=8, repeat_penalty=1.0)
NOTES = (
    "The lighthouse stood on a spit of black rock where the estuary met the sea. Its keeper "
    "kept a log of every ship that passed, the height of the tide at dawn and dusk, the colour "
    "of the sky, and the direction of the wind. "
)


RESTORE_SECONDS: dict[str, list[float]] = {"RAM": [], "disk": []}
# How long `prepare` took as A was opened: while the person reads, before the turn.
PREPARE_SECONDS: dict[str, list[float]] = {"RAM": [], "disk": []}


def _ttft(runner: ModelRunner, messages: list[ChatMessage]) -> tuple[float, int, int, str]:
    _, stats = runner.chat(messages, SAMPLING, lambda: False, lambda _t: None)
    if stats.restored_from:
        RESTORE_SECONDS[stats.restored_from].append(stats.restore_seconds)
    return (
        stats.time_to_first_token_s,
        stats.evaluated_tokens,
        stats.restored_tokens,
        stats.restored_from,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/kv_restore.py", description=__doc__)
    parser.add_argument("--model", help="a GGUF file (default: bundled)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--words", type=int, default=2300, help="words in conversation A")
    args = parser.parse_args(argv)
    model = args.model or str(bundled_model_path())
    log = LlamaLog()
    words = NOTES.split()
    text = " ".join(words[i % len(words)] for i in range(args.words))
    figures: dict[str, list[float]] = {
        k: [] for k in ("never", "ram", "ram_opened", "again", "disk", "disk_opened")
    }
    evaluated: dict[str, list[int]] = {k: [] for k in figures}
    prompt_tokens = 0
    disk_bytes_per_token = 0.0
    kv_bytes_per_token = 0
    for run in range(args.runs):
        print(f"run {run + 1} of {args.runs}", file=sys.stderr)
        with tempfile.TemporaryDirectory() as folder:
            config = LoadConfig(model, n_ctx=4096, kv_cache_dir=folder)
            runner = ModelRunner(config, read_gguf(model), log)
            a = [ChatMessage("user", f"Read these notes. {text}")]
            reply, stats = runner.chat(a, SAMPLING, lambda: False, lambda _t: None)
            prompt_tokens = stats.prompt_tokens
            kv_bytes_per_token = runner.memory.kv_bytes_per_token
            a_opened = [*a, ChatMessage("assistant", reply)]
            a_next = [*a_opened, ChatMessage("user", "Summarise.")]
            b = [ChatMessage("user", "Something else: name three rivers.")]

            seconds, count, _, _ = _ttft(runner, a_next)
            figures["never"].append(seconds)
            evaluated["never"].append(count)
            # Back to A's state before its next turn, for the same measurement again.
            runner.saved_states.clear()
            runner.chat(a, SAMPLING, lambda: False, lambda _t: None)

            _ttft(runner, b)
            seconds, count, restored, where = _ttft(runner, a_next)
            assert where == "RAM" and restored, (where, restored)
            figures["ram"].append(seconds)
            evaluated["ram"].append(count)

            # The same, with the restore done as A is opened (the window's way).
            runner.saved_states.clear()
            runner.chat(a, SAMPLING, lambda: False, lambda _t: None)
            _ttft(runner, b)
            started = time.perf_counter()
            runner.prepare(a_opened)
            PREPARE_SECONDS["RAM"].append(time.perf_counter() - started)
            seconds, count, restored, where = _ttft(runner, a_next)
            assert where == "RAM" and restored, (where, restored)
            figures["ram_opened"].append(seconds)
            evaluated["ram_opened"].append(count)

            runner.saved_states.clear()
            _ttft(runner, b)
            runner.saved_states.clear()
            seconds, count, restored, _ = _ttft(runner, a_next)
            assert not restored
            figures["again"].append(seconds)
            evaluated["again"].append(count)

            for opened in (False, True):
                # A's state at its length before the next turn, written as the runner closes.
                runner.saved_states.clear()
                runner.chat(a, SAMPLING, lambda: False, lambda _t: None)
                runner.close()
                files = list(Path(folder).glob("*.kvstate"))
                size = max(f.stat().st_size for f in files)
                disk_bytes_per_token = size / prompt_tokens
                runner = ModelRunner(config, read_gguf(model), log)
                if opened:
                    started = time.perf_counter()
                    runner.prepare(a_opened)
                    PREPARE_SECONDS["disk"].append(time.perf_counter() - started)
                seconds, count, restored, where = _ttft(runner, a_next)
                assert where == "disk" and restored, (where, restored)
                key = "disk_opened" if opened else "disk"
                figures[key].append(seconds)
                evaluated[key].append(count)
            runner.close()

    def spread(values: list[float]) -> str:
        ms = [v * 1000 for v in values]
        return f"{statistics.median(ms):.0f} ms ({min(ms):.0f}–{max(ms):.0f})"

    print(f"conversation A: {prompt_tokens} tokens; {args.runs} runs; first token of its next turn")
    names = {
        "never": "never left (live cache)",
        "ram": "restored from RAM at the turn",
        "ram_opened": "restored from RAM as A opened",
        "again": "evaluated again",
        "disk": "restored from disk at the turn",
        "disk_opened": "restored from disk as A opened",
    }
    for key, name in names.items():
        print(f"{name:32} {spread(figures[key])}, evaluated {evaluated[key][-1]} tokens")
    again = statistics.median(figures["again"])
    never = statistics.median(figures["never"])
    for key in ("ram", "ram_opened", "disk", "disk_opened"):
        value = statistics.median(figures[key])
        print(
            f"{names[key]}: {value / again:.1%} of evaluating again, "
            f"{value / never:.2f}x never left"
        )
    for where, values in RESTORE_SECONDS.items():
        print(f"bringing the state back from {where}: {spread(values)}")
    for where, values in PREPARE_SECONDS.items():
        print(f"opening A, its state in {where}: {spread(values)}, before the person's turn")
    print(
        f"on disk {disk_bytes_per_token / 1024:.1f} KiB per token; the KV panel's figure "
        f"{kv_bytes_per_token / 1024:.1f} KiB per token"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
