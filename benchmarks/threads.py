"""Threads on a busy machine: OpenMP's wait policy and thread counts, idle and busy.

The measurement behind engine/threads.py. llama.cpp's own llama-bench (built
from the vendored llama.cpp by `make llama-bench`) decodes on the bundled
model at each thread count, with OpenMP's default wait policy (spin for a
while at each barrier, then sleep), with OMP_WAIT_POLICY=PASSIVE (sleep at
once) and ACTIVE (spin only), on an idle machine and beside one burner
(`kvchat.app.bench.busy.Burner`: another process busy on one core). The
configurations alternate within each run; medians and ranges over runs.

    .venv/bin/python benchmarks/threads.py [--runs 5] [--tokens 64]

ggml's own threadpool (its polling threads, llama-bench's --poll) replaces
OpenMP's only in a build without OpenMP; llama-cpp-python's wheel is built
with it (llama_print_system_info says OPENMP = 1), so there is no such
choice to measure here, and the script says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import psutil

from kvchat.app.bench.busy import Burner
from kvchat.engine.models import bundled_model_path

LLAMA_BENCH = Path("build/llama.cpp/bin/llama-bench")
POLICIES = ("default", "PASSIVE", "ACTIVE")


def _tg(model: Path, threads: int, policy: str, tokens: int) -> float:
    """One llama-bench tg run: decode tokens/s."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    done = subprocess.run(
        [str(LLAMA_BENCH), "-m", str(model), "-t", str(threads), "-fa", "off",
         "-p", "0", "-n", str(tokens), "-r", "1", "-o", "json"],
        capture_output=True, text=True, env=env, check=True, timeout=600,
    )  # fmt: skip
    (test,) = json.loads(done.stdout)
    return float(test["avg_ts"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    if not LLAMA_BENCH.exists():
        print(f"{LLAMA_BENCH} is missing: run `make llama-bench` first", file=sys.stderr)
        return 2
    model = bundled_model_path()
    assert model is not None
    counts = list(range(1, (psutil.cpu_count(logical=False) or 1) + 1))
    configs = [(threads, policy) for threads in counts for policy in POLICIES]
    rates: dict[tuple[str, int, str], list[float]] = {}
    for run in range(args.runs):
        for condition in ("idle", "busy"):
            order = configs if run % 2 == 0 else configs[::-1]
            print(f"run {run + 1} of {args.runs}, {condition}", file=sys.stderr, flush=True)
            burner = Burner() if condition == "busy" else None
            if burner is not None:
                burner.start()
            try:
                for threads, policy in order:
                    rate = _tg(model, threads, policy, args.tokens)
                    rates.setdefault((condition, threads, policy), []).append(rate)
            finally:
                if burner is not None:
                    burner.stop()

    print(f"llama-bench tg{args.tokens}, bundled model, flash attention off, {args.runs} runs: "
          "median (range) tokens/s")  # fmt: skip
    print()
    print("| condition | threads | " + " | ".join(f"OMP_WAIT_POLICY {p}" for p in POLICIES) + " |")
    print("| --- | --- |" + " --- |" * len(POLICIES))
    for condition in ("idle", "busy"):
        for threads in counts:
            cells = []
            for policy in POLICIES:
                values = rates[(condition, threads, policy)]
                cells.append(
                    f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"
                )
            print(f"| {condition} | {threads} | " + " | ".join(cells) + " |")
    print()
    print("ggml's own threadpool: not offered, this llama.cpp is built with OpenMP.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
