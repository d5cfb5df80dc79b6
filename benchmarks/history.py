"""What a long history costs the window: streaming into a conversation of
1,000 messages against an empty one, event-loop stalls while streaming at
500 tokens/s, and the time to open a conversation of 1,000 messages.

The whole window path runs: MainWindow (offscreen), the Controller, the
store on a real SQLite file, the chat view's markdown rendering. The engine
is scripted (tests/scripted_engine.py): it emits words from its own thread at
an exact rate, batched every 10 ms as the engine host batches them, so the
figures are the GUI's alone.

- GUI cost per token: CPU time of the GUI thread (time.thread_time) over a
  streamed reply, divided by its tokens. It includes everything that thread
  did meanwhile: the controller, checkpoints, rendering, layout, painting.
  Three conversations: a new (empty) one; one of 1,000 messages as it opens
  (its last 120 drawn); the same with all 1,000 drawn ("Show them").
- Stalls: a 1 ms timer on the GUI thread; a stall is a gap between two of its
  ticks. The 99th percentile of the gaps over the streaming.
- Open: from the click to the conversation laid out and painted.

    .venv/bin/python benchmarks/history.py [--runs 5] [--tokens 2000] [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RATE = 500.0
HEARTBEAT_MS = 1
LONG = 1000

# A reply as models write them: prose, a list, now and then a code block.
PROSE = (
    "The **KV cache** keeps the keys and values of every token so far, so a new "
    "token attends to them without computing them again. It grows by the same "
    "number of bytes for each token, and on long contexts it rivals the weights."
)
CODE = "```python\ndef kv_bytes(tokens: int, layers: int, width: int) -> int:\n" + (
    "    return 2 * tokens * layers * width * 2\n```"
)


def _reply(index: int) -> str:
    parts = [PROSE, "1. the keys\n2. the values"]
    if index % 4 == 1:
        parts.append(CODE)
    return "\n\n".join(parts)


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _fill(data_dir: Path, count: int) -> None:
    """Writes a conversation of `count` messages straight into the store."""
    from kvchat.app.core.store import Conversation, Message, PutConversation, PutMessage, open_store

    store = open_store(data_dir).store
    now = time.time()
    key = f"c{count}"
    store.apply([PutConversation(Conversation(key, f"{count} messages", "", "Scripted", "", 0, 0))])
    messages = []
    for index in range(count):
        person = index % 2 == 0
        text = f"Question {index}: how big is the cache?" if person else _reply(index)
        stats = None if person else json.dumps(_stats())
        messages.append(
            PutMessage(
                Message(
                    f"{key}-{index}",
                    key,
                    index,
                    "user" if person else "assistant",
                    text,
                    "done",
                    now + index * 1e-3,
                    now + index * 1e-3,
                    stats,
                )
            )
        )
    store.apply(messages)
    store.close()


def _stats() -> dict[str, object]:
    return {
        "prompt_tokens": 900,
        "system_tokens": 20,
        "history_tokens": 800,
        "reused_tokens": 850,
        "evaluated_tokens": 50,
        "generated_tokens": 120,
        "time_to_first_token_s": 0.05,
        "prefill_tokens_per_s": 900.0,
        "decode_tokens_per_s": 120.0,
        "stop_reason": "eos",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="streamed replies per conversation")
    parser.add_argument("--tokens", type=int, default=2000, help="tokens per streamed reply")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()

    from PySide6.QtCore import QEventLoop, Qt, QTimer
    from PySide6.QtWidgets import QApplication

    from kvchat.app.core.settings import EngineSettings
    from tests.scripted_engine import ScriptedEngine, open_window, wait_for_model

    app = QApplication(sys.argv[:1])
    words = re.findall(r"\S+\s*", f"{PROSE}\n\n1. the keys\n2. the values\n\n{CODE}\n\n")
    script = list(itertools.islice(itertools.cycle(words), args.tokens))
    engine = ScriptedEngine(lambda _messages: script, rate=RATE)
    settings = EngineSettings(max_tokens=args.tokens)

    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder)
        _fill(data_dir, LONG)
        _fill(data_dir, 2)
        window, controller = open_window(data_dir, engine, settings)
        window.resize(1280, 800)
        wait_for_model(controller)
        loop = QEventLoop()
        QTimer.singleShot(100, loop.quit)
        loop.exec()

        def stream_into(case: str) -> tuple[float, list[float]]:
            if case == "empty":
                controller.new_conversation()
            else:
                controller.open_conversation(f"c{LONG}")
                if case == "drawn":
                    window.chat_view.show_earlier()
            app.processEvents()
            beats: list[float] = []
            heartbeat = QTimer()
            heartbeat.setTimerType(Qt.TimerType.PreciseTimer)
            heartbeat.setInterval(HEARTBEAT_MS)
            heartbeat.timeout.connect(lambda: beats.append(time.perf_counter()))
            done = QEventLoop()
            controller.reply_finished.connect(done.quit)
            heartbeat.start()
            cpu = time.thread_time()
            controller.send("Stream a long answer, please.")
            done.exec()
            cpu = time.thread_time() - cpu
            heartbeat.stop()
            controller.reply_finished.disconnect(done.quit)
            gaps = [(b - a) * 1000 for a, b in itertools.pairwise(beats)]
            return cpu / args.tokens * 1e6, gaps

        cases = ("empty", "opened", "drawn")
        per_token: dict[str, list[float]] = {case: [] for case in cases}
        gaps: dict[str, list[float]] = {case: [] for case in cases}
        for run in range(args.runs + 1):
            for case in cases if run % 2 else reversed(cases):
                cost, run_gaps = stream_into(case)
                history = controller.history
                if case == "empty":
                    controller.delete_conversation(history.conversation.key)  # type: ignore[union-attr]
                else:
                    # The question and its reply leave: the same 1,000 next time.
                    question, last = history.messages[-2], history.messages[-3]
                    history.take_back(question.key, last.key)
                    controller.new_conversation()
                if run:  # the first round warms up
                    per_token[case].append(cost)
                    gaps[case].extend(run_gaps)

        opens: list[float] = []
        reveals: list[float] = []
        for _ in range(args.runs):
            controller.open_conversation("c2")
            app.processEvents()
            started = time.perf_counter()
            controller.open_conversation(f"c{LONG}")
            window.chat_view.viewport().repaint()
            opened = time.perf_counter()
            window.chat_view.show_earlier()
            window.chat_view.viewport().repaint()
            opens.append((opened - started) * 1000)
            reveals.append((time.perf_counter() - opened) * 1000)
        window.close()
    app.processEvents()

    medians = {case: statistics.median(values) for case, values in per_token.items()}
    every_gap = [gap for values in gaps.values() for gap in values]
    figures = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "rate_tokens_per_s": RATE,
        "tokens_per_reply": args.tokens,
        "runs": args.runs,
        "gui_us_per_token": per_token,
        "ratio_opened_to_empty": medians["opened"] / medians["empty"],
        "ratio_drawn_to_empty": medians["drawn"] / medians["empty"],
        "stall_ms": {
            case: {"p50": _percentile(values, 0.5), "p99": _percentile(values, 0.99)}
            for case, values in gaps.items()
        },
        "stall_max_ms": max(every_gap),
        "open_ms": opens,
        "show_all_ms": reveals,
    }
    names = {
        "empty": "a new conversation",
        "opened": f"{LONG} messages, as opened",
        "drawn": f"{LONG} messages, all drawn",
    }
    lines = [
        f"GUI thread CPU per streamed token, {args.runs} replies of {args.tokens} tokens "
        f"at {RATE:.0f} tokens/s into each conversation:"
    ]
    for case, values in per_token.items():
        lines.append(
            f"  {names[case]:<30} median {medians[case]:6.1f} µs "
            f"(range {min(values):.1f}-{max(values):.1f}); stalls p50 "
            f"{_percentile(gaps[case], 0.5):.1f} ms, p99 {_percentile(gaps[case], 0.99):.1f} ms"
        )
    lines += [
        f"  ratio to a new conversation: as opened {figures['ratio_opened_to_empty']:.2f}, "
        f"all drawn {figures['ratio_drawn_to_empty']:.2f}; longest stall {max(every_gap):.1f} ms",
        f"Opening a conversation of {LONG} messages, to painted: median "
        f"{statistics.median(opens):.0f} ms (max {max(opens):.0f} ms); drawing all of them "
        f"on request: median {statistics.median(reveals):.0f} ms",
    ]
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
