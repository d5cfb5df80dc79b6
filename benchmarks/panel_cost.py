"""What the memory panels cost: decode speed through the window with the panels
shown against the same runs with them hidden.

One window, one engine; runs alternate between shown and hidden so that a
drift in the machine's speed falls on both alike. Decode speed is measured on
the GUI thread, from the first to the last streamed text of each reply.

    .venv/bin/python benchmarks/panel_cost.py [--runs 6] [--tokens 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."


def _wait(signal: object, timeout_s: float = 180.0) -> tuple[object, ...]:
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    got: list[tuple[object, ...]] = []

    def done(*args: object) -> None:
        got.append(args)
        loop.quit()

    signal.connect(done)  # type: ignore[attr-defined]
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    signal.disconnect(done)  # type: ignore[attr-defined]
    if not got:
        raise TimeoutError("no signal in time")
    return got[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6, help="runs per side")
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()

    from PySide6.QtWidgets import QApplication

    from kvchat.app.core.settings import EngineSettings
    from kvchat.app.presenters.gui import build_window

    app = QApplication(sys.argv[:1])
    settings = EngineSettings(temperature=0.0, repeat_penalty=1.0, max_tokens=args.tokens)
    with tempfile.TemporaryDirectory() as data_dir:
        window, controller = build_window(None, settings, Path(data_dir))
        _wait(controller.engine.model_loaded)
        arrivals: list[float] = []
        controller.engine.text_received.connect(
            lambda _id, _text: arrivals.append(time.perf_counter())
        )
        rates: dict[bool, list[float]] = {True: [], False: []}
        for run in range(2 * args.runs + 1):
            shown = run % 2 == 1
            window.memory_dock.setVisible(shown)
            controller.new_conversation()
            arrivals.clear()
            controller.send(PROMPT)
            (stats,) = _wait(controller.reply_finished)
            if run == 0:
                continue  # warm-up
            rate = (stats.generated_tokens - 1) / (arrivals[-1] - arrivals[0])  # type: ignore[attr-defined]
            rates[shown].append(rate)
        window.close()
    app.processEvents()
    shown_median = statistics.median(rates[True])
    hidden_median = statistics.median(rates[False])
    ratios = [s / h for s, h in zip(rates[True], rates[False], strict=True)]
    print(
        f"decode tok/s through the window, {args.runs} alternating runs a side\n"
        f"  panels shown   median {shown_median:.1f} (range {min(rates[True]):.1f}-"
        f"{max(rates[True]):.1f})\n"
        f"  panels hidden  median {hidden_median:.1f} (range {min(rates[False]):.1f}-"
        f"{max(rates[False]):.1f})\n"
        f"  shown / hidden: median {statistics.median(ratios):.3f} "
        f"(range {min(ratios):.3f}-{max(ratios):.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
