"""Decode speed through the whole kvchat window path against llama-cpp-python's
own streaming loop, on the same model, threads, context and prompt, in one run.

kvchat's side: the real MainWindow (offscreen), the Controller, the engine
host process, the pipe, the reader QThread and the queued Qt signals. Its
decode rate is measured where the person sees it: from the first to the last
text that reached the GUI thread.

llama-cpp-python's side: `Llama.create_chat_completion(stream=True)` in this
process, timed from the first to the last streamed chunk.

Both sample greedily with no repeat penalty, and the runs alternate so that a
drift in the machine's speed falls on both sides alike.

    .venv/bin/python benchmarks/decode_window.py [--runs 5] [--tokens 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."


def _wait_for(signal: object, timeout_s: float = 120.0) -> tuple[object, ...]:
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    received: list[tuple[object, ...]] = []

    def done(*args: object) -> None:
        received.append(args)
        loop.quit()

    signal.connect(done)  # type: ignore[attr-defined]
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    signal.disconnect(done)  # type: ignore[attr-defined]
    if not received:
        raise TimeoutError("no signal in time")
    return received[0]


class WindowSide:
    def __init__(self, model: str, threads: int, tokens: int, data_dir: Path) -> None:
        from app.gui import build_window
        from app.settings import EngineSettings

        settings = EngineSettings(
            n_threads=threads, temperature=0.0, repeat_penalty=1.0, max_tokens=tokens
        )
        self.window, self.controller = build_window(model, settings, data_dir)
        (self.info,) = _wait_for(self.controller.engine.model_loaded)
        self._arrivals: list[float] = []
        self.controller.engine.text_received.connect(
            lambda _id, _text: self._arrivals.append(time.perf_counter())
        )

    def run(self) -> tuple[float, int]:
        self.controller.conversation.clear()
        self._arrivals.clear()
        self.controller.send(PROMPT)
        (stats,) = _wait_for(self.controller.reply_finished)
        seconds = self._arrivals[-1] - self._arrivals[0]
        return (stats.generated_tokens - 1) / seconds, stats.generated_tokens  # type: ignore[attr-defined]

    def close(self) -> None:
        self.window.close()


class LlamaCppPythonSide:
    def __init__(self, model: str, threads: int, n_ctx: int, tokens: int) -> None:
        from llama_cpp import Llama

        self.tokens = tokens
        self.llm = Llama(
            model_path=model,
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=512,
            n_gpu_layers=-1,
            verbose=False,
        )

    def run(self) -> tuple[float, int]:
        self.llm.reset()
        stamps: list[float] = []
        stream = self.llm.create_chat_completion(
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            temperature=0.0,
            repeat_penalty=1.0,
            max_tokens=self.tokens,
        )
        for chunk in stream:
            if chunk["choices"][0]["delta"].get("content"):  # type: ignore[index]
                stamps.append(time.perf_counter())
        return (len(stamps) - 1) / (stamps[-1] - stamps[0]), len(stamps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="GGUF file (default: the bundled model)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    from PySide6.QtWidgets import QApplication

    from engine.models import bundled_model_path

    model = args.model or str(bundled_model_path())
    threads = os.cpu_count() or 1
    import psutil

    threads = psutil.cpu_count(logical=False) or threads
    app = QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory() as data_dir:
        window = WindowSide(model, threads, args.tokens, Path(data_dir))
        baseline = LlamaCppPythonSide(model, threads, window.info.n_ctx, args.tokens)  # type: ignore[attr-defined]
        window.run()  # warm-up, both sides
        baseline.run()
        kvchat_rates, baseline_rates, counts = [], [], []
        for _ in range(args.runs):
            rate, count = window.run()
            kvchat_rates.append(rate)
            base_rate, base_count = baseline.run()
            baseline_rates.append(base_rate)
            counts.append((count, base_count))
        window.close()
    app.processEvents()

    ratios = [k / b for k, b in zip(kvchat_rates, baseline_rates, strict=True)]
    result = {
        "model": Path(model).name,
        "threads": threads,
        "n_ctx": window.info.n_ctx,  # type: ignore[attr-defined]
        "machine": f"{platform.machine()}, {os.cpu_count()} logical cores, {platform.system()}",
        "runs": args.runs,
        "tokens_per_run": counts,
        "kvchat_window_decode_tps": kvchat_rates,
        "llama_cpp_python_decode_tps": baseline_rates,
        "kvchat_median": statistics.median(kvchat_rates),
        "llama_cpp_python_median": statistics.median(baseline_rates),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }
    print(
        f"decode tok/s, {result['model']}, {threads} threads, {args.runs} alternating runs\n"
        f"  kvchat through the window   median {result['kvchat_median']:.1f}  "
        f"(range {min(kvchat_rates):.1f}-{max(kvchat_rates):.1f})\n"
        f"  llama-cpp-python streaming  median {result['llama_cpp_python_median']:.1f}  "
        f"(range {min(baseline_rates):.1f}-{max(baseline_rates):.1f})\n"
        f"  ratio kvchat / llama-cpp-python: median {result['ratio_median']:.3f} "
        f"(range {result['ratio_min']:.3f}-{result['ratio_max']:.3f})"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
