"""A kvchat window that chats with a scripted engine until it is killed; the
process tests/test_kill.py kills.

It prints "ACK <key> <text>" once the person's message is committed and shown,
the moment from which the message must never be lost.

    python -m tests.kill_child DATA_DIR RUN
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kvchat.engine.protocol import ChatMessage

LONG_REPLY = [f"r{i} " for i in range(1600)]  # 1.6 s at RATE: checkpointed midway
SHORT_REPLY = LONG_REPLY[:150]
RATE = 1000.0


def reply_for(messages: list[ChatMessage]) -> list[str]:
    """A run's first reply is long, so that kills fall before and after its
    first checkpoint; the turns after it are short."""
    return LONG_REPLY if " turn 0:" in messages[-1].content else SHORT_REPLY


def main(data_dir: Path, run: int) -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from kvchat.app.core.settings import EngineSettings
    from tests.scripted_engine import ScriptedEngine, open_window

    app = QApplication(sys.argv[:1])
    engine = ScriptedEngine(reply_for, rate=RATE)
    _window, controller = open_window(data_dir, engine, EngineSettings(max_tokens=4000))
    turns = 0

    def next_turn() -> None:
        nonlocal turns
        text = f"run {run} turn {turns}: {'ünïcode ✓ ' * (turns % 3)}question"
        turns += 1
        controller.send(text)
        user = controller.history.messages[-2]
        saver = controller.history.saver

        def acknowledge() -> None:
            # On disk: the save queue commits on a worker, and says when
            # (or that the disk refused, which `problem` tells apart).
            if user.content == text and not saver.problem:
                print(f"ACK {user.key} {text}", flush=True)

        saver.when_saved(acknowledge)

    def first_turn(_info: object) -> None:
        """The window loads its model once painted: the first turn waits for it."""
        controller.engine.model_loaded.disconnect(first_turn)
        QTimer.singleShot(0, next_turn)

    controller.reply_finished.connect(lambda _stats: QTimer.singleShot(0, next_turn))
    controller.engine.model_loaded.connect(first_turn)
    print("READY", flush=True)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), int(sys.argv[2])))
