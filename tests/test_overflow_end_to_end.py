"""A real conversation outgrows a real model's context, in the real window."""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from kvchat.app.core.settings import EngineSettings
from kvchat.app.core.store import open_store
from kvchat.app.presenters.gui import build_window
from kvchat.engine.protocol import TurnStats

WAIT_MS = 120_000
N_CTX = 1024
TURNS = 14
MAX_TOKENS = 24
SYSTEM = "You are a terse assistant."


def _question(turn: int) -> str:
    notes = " ".join(f"note {turn}-{i} about the harbour and its boats" for i in range(9))
    return f"Question {turn}: {notes}. Answer in one line."


def test_the_oldest_turns_leave_the_view_by_the_engines_own_count(
    qtbot: QtBot, data_dir: Path, model_path: Path
) -> None:
    settings = EngineSettings(
        n_ctx=N_CTX, max_tokens=MAX_TOKENS, seed=7, temperature=0.0, system_prompt=SYSTEM
    )
    window, controller = build_window(str(model_path), settings, data_dir)
    try:
        qtbot.waitUntil(lambda: controller.model is not None, timeout=WAIT_MS)
        turns: list[TurnStats] = []
        starts: list[int] = []
        for turn in range(TURNS):
            with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS) as finished:
                controller.send(_question(turn))
            turns.append(finished.args[0])
            starts.append(controller.history.view_start)
        moved = next(i for i, start in enumerate(starts) if start > 0)
        messages = controller.history.messages
        # Whole turns left: the view starts at one of the person's messages.
        assert all(messages[start].role == "user" for start in starts if start)
        # It moves only forward.
        assert starts == sorted(starts)
        for stats in turns:
            # Counted exactly by the engine: the prompt and the reply's room fit.
            assert stats.prompt_tokens + MAX_TOKENS <= N_CTX, stats
        # The system prompt stayed in every prompt, at the same cost.
        assert len({stats.system_tokens for stats in turns}) == 1
        assert turns[0].system_tokens > 0
        # The slack (an eighth of the context, more than a turn here) keeps the
        # view still for a turn after it moved, and that turn reuses the cache.
        still = [i for i in range(moved + 1, len(starts)) if starts[i] == starts[i - 1]]
        assert still and all(turns[i].reused_tokens > turns[i].system_tokens for i in still)
        # The window says what the model sees; nothing left the store.
        first = controller.history.view_start
        assert window.view_label.text() == (
            f"the model sees messages {first + 1}–{len(messages)} of {len(messages)}"
        )
        window.close()  # saves everything, on the way out
        opened = open_store(data_dir)
        try:
            (conversation,) = opened.store.conversations()
            stored = opened.store.messages(conversation.key)
            assert [m.content for m in stored if m.role == "user"] == [
                _question(turn) for turn in range(TURNS)
            ]
            assert conversation.view_start == first
        finally:
            opened.store.close()
    finally:
        window.close()
        window.deleteLater()
        qtbot.wait(1)
