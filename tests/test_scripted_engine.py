"""The scripted engine thinks as the real one does (tests/scripted_engine.py)."""

from __future__ import annotations

from pytestqt.qtbot import QtBot

from kvchat.engine.protocol import ChatMessage, LoadConfig, Sampling
from tests.scripted_engine import ScriptedEngine

WAIT_MS = 10_000


def test_a_scripted_reply_thinks_apart_from_its_answer(qtbot: QtBot) -> None:
    script = ["<think>", "\nHmm", " so", "</think>", "\n\nYes", " indeed"]
    engine = ScriptedEngine(lambda _messages: script)
    thinking: list[str] = []
    answer: list[str] = []
    engine.thinking_received.connect(lambda _request, text: thinking.append(text))
    engine.text_received.connect(lambda _request, text: answer.append(text))
    try:
        with qtbot.waitSignal(engine.model_loaded, timeout=WAIT_MS):
            engine.load(LoadConfig("/models/scripted.gguf"))
        hi = [ChatMessage("user", "Hi")]
        with qtbot.waitSignal(engine.turn_finished, timeout=WAIT_MS) as finished:
            engine.chat(hi, Sampling())
        assert "".join(thinking) == "Hmm so" and "".join(answer) == "Yes indeed"
        assert finished.args[1] == "Yes indeed"
        stats = finished.args[2]
        assert stats.generated_tokens == 6 and stats.thinking_tokens == 4
        # A reply cut inside its thinking goes on there.
        thinking.clear()
        answer.clear()
        engine.reply = lambda _messages: [" more", "</think>", "Done"]
        cut = [*hi, ChatMessage("assistant", "", thinking="Hmm so")]
        with qtbot.waitSignal(engine.turn_finished, timeout=WAIT_MS) as finished:
            engine.chat(cut, Sampling(), continue_last=True)
        assert "".join(thinking) == " more" and "".join(answer) == "Done"
        assert finished.args[2].thinking_tokens == 2
    finally:
        engine.shutdown()
