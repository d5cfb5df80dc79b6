"""The window's engine client over the real engine host process."""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from kvchat.app.presenters.engine_client import EngineClient
from kvchat.engine.protocol import ChatMessage, LoadConfig, Sampling
from tests.model_factory import TINY_THINKING, ModelFactory, model_factory

__all__ = ["model_factory"]  # a fixture, imported so that pytest finds it

WAIT_MS = 60_000


def test_thinking_and_the_answer_arrive_on_signals_of_their_own(
    qtbot: QtBot, model_factory: ModelFactory, tmp_path: Path
) -> None:
    client = EngineClient(tmp_path / "engine.log")
    thinking: list[tuple[int, str]] = []
    answer: list[tuple[int, str]] = []
    client.thinking_received.connect(lambda request, text: thinking.append((request, text)))
    client.text_received.connect(lambda request, text: answer.append((request, text)))
    try:
        with qtbot.waitSignal(client.model_loaded, timeout=WAIT_MS):
            client.load(LoadConfig(str(model_factory.path(TINY_THINKING)), n_ctx=512))
        with qtbot.waitSignal(client.turn_finished, timeout=WAIT_MS) as finished:
            request = client.chat([ChatMessage("user", "Hi")], Sampling(temperature=0.0))
    finally:
        client.shutdown()
    assert finished.args[:2] == [request, "Yes indeed"]
    assert finished.args[2].thinking_tokens == 3
    assert {r for r, _ in thinking + answer} == {request}
    assert "".join(text for _, text in thinking) == " Hmm so"
    assert "".join(text for _, text in answer) == "Yes indeed"
