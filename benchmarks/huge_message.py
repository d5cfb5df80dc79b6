"""What a 1 MB message costs the window: pasting it, sending it, the engine's
refusal (it cannot fit the context), and it coming back to the composer.

The whole window path runs (MainWindow offscreen, the Controller, the store
on a real SQLite file, the chat view); the engine is scripted
(tests/scripted_engine.py), which refuses a prompt that does not fit the
context as the real runner does, so the figures are the GUI thread's alone.
Tokenizing happens in the engine host in the real app, never here.

Each phase is timed as the wall time of the call on the GUI thread plus the
longest gap of a 1 ms timer while the event loop then runs for a while (the
layout and painting that Qt defers). Three kinds of text: one line of 1 MB,
lines of 100 characters, and prose with markdown.

    .venv/bin/python benchmarks/huge_message.py [--size 1000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def texts(size: int) -> dict[str, str]:
    line = "word " * 19 + "last\n"
    prose = "Some *emphasis*, a `span` and a [link](https://example.org).\n\n"
    return {
        "one line": ("x" * 9 + " ") * (size // 10),
        "100-char lines": (line * (size // len(line) + 1))[:size],
        "markdown prose": (prose * (size // len(prose) + 1))[:size],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="characters (ASCII: bytes)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from tests.scripted_engine import ScriptedEngine, open_window, wait_for_model

    app = QApplication(sys.argv[:1])
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(1)
    timer.timeout.connect(tick)
    timer.start()

    def run_loop(ms: int) -> None:
        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    def phase(action: Callable[[], object], settle_ms: int = 300) -> tuple[float, float]:
        """Wall seconds of `action`, and the longest event-loop gap after it."""
        run_loop(20)
        started = time.perf_counter()
        action()
        call = time.perf_counter() - started
        gaps.clear()
        last[0] = time.perf_counter()
        run_loop(settle_ms)
        return call, max(gaps, default=0.0)

    def measure(text: str) -> dict[str, tuple[float, float]]:
        with tempfile.TemporaryDirectory() as folder:
            engine = ScriptedEngine(lambda _m: ["ok"], n_ctx=4096)
            window, controller = open_window(Path(folder), engine)
            window.resize(1280, 800)
            wait_for_model(controller)
            run_loop(50)
            refused: list[str] = []
            controller.engine.chat_failed.connect(lambda _id, message: refused.append(message))
            figures = {
                "paste into the composer": phase(lambda: window.composer.setPlainText(text)),
                # The refusal arrives on the next turn of the loop, and the
                # message goes back to the composer: the stall after the call.
                "send, refused, back to the composer": phase(
                    window.send_button.click, settle_ms=1500
                ),
            }
            assert refused, "the engine did not refuse the message"
            assert window.composer.toPlainText() == text, "the message was not given back"
            window.close()
            window.deleteLater()
            run_loop(10)
            return figures

    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for name, text in texts(args.size).items():
        for _ in range(args.runs):
            for what, figure in measure(text).items():
                results.setdefault(name, {}).setdefault(what, []).append(figure)
    del app
    print(f"{args.size:,} characters, median of {args.runs} runs; call / longest stall after it")
    for name, figures in results.items():
        print(f"\n{name}")
        for what, runs in figures.items():
            call = statistics.median(r[0] for r in runs)
            stall = statistics.median(r[1] for r in runs)
            print(f"  {what:36} {call * 1000:8.0f} ms  {stall * 1000:8.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
