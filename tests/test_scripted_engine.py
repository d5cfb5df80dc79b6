"""The scripted engine behaves as the real one does (tests/scripted_engine.py),
through the real EngineClient and its reader thread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pytestqt.qtbot import QtBot

from kvchat.app.presenters.engine_client import EngineClient
from kvchat.engine.protocol import ChatMessage, LoadConfig, PromptEvaluated, Sampling
from tests.scripted_engine import (
    SCRIPTED_MODEL,
    SYSTEM_TOKENS,
    WRAP_TOKENS,
    ScriptedEngine,
)

WAIT_MS = 10_000


@pytest.fixture
def script() -> ScriptedEngine:
    return ScriptedEngine(lambda _messages: ["Hello ", "there."])


@pytest.fixture
def client(qtbot: QtBot, script: ScriptedEngine) -> Iterator[EngineClient]:
    """The real client with scripted hosts and a model loaded; shut down at the end."""
    engine = script.client()
    try:
        with qtbot.waitSignal(engine.model_loaded, timeout=WAIT_MS):
            engine.load(LoadConfig(SCRIPTED_MODEL))
        yield engine
    finally:
        engine.shutdown()
    # The host is stopped on a thread of its own (engine.client.retire); its own thread ends.
    qtbot.waitUntil(lambda: not [thread for thread in script.threads if thread.is_alive()])


def test_a_scripted_reply_thinks_apart_from_its_answer(
    qtbot: QtBot, script: ScriptedEngine, client: EngineClient
) -> None:
    script.reply = lambda _messages: ["<think>", "\nHmm", " so", "</think>", "\n\nYes", " indeed"]
    thinking: list[str] = []
    answer: list[str] = []
    client.thinking_received.connect(lambda _request, text: thinking.append(text))
    client.text_received.connect(lambda _request, text: answer.append(text))
    hi = [ChatMessage("user", "Hi")]
    with qtbot.waitSignal(client.turn_finished, timeout=WAIT_MS) as finished:
        client.chat(hi, Sampling())
    assert "".join(thinking) == "Hmm so" and "".join(answer) == "Yes indeed"
    assert finished.args[1] == "Yes indeed"
    stats = finished.args[2]
    assert stats.generated_tokens == 6 and stats.thinking_tokens == 4
    # A reply cut inside its thinking goes on there.
    thinking.clear()
    answer.clear()
    script.reply = lambda _messages: [" more", "</think>", "Done"]
    cut = [*hi, ChatMessage("assistant", "", thinking="Hmm so")]
    with qtbot.waitSignal(client.turn_finished, timeout=WAIT_MS) as finished:
        client.chat(cut, Sampling(), continue_last=True)
    assert "".join(thinking) == " more" and "".join(answer) == "Done"
    assert finished.args[2].thinking_tokens == 2


def test_a_cancelled_reply_keeps_coming_then_ends_as_cancelled_with_all_its_text(
    qtbot: QtBot, script: ScriptedEngine, client: EngineClient
) -> None:
    script.reply = lambda _messages: [f"w{i} " for i in range(10_000)]
    script.rate = 1000.0
    script.cancel_lag_s = 0.2
    received: list[str] = []
    client.text_received.connect(lambda _request, text: received.append(text))
    request_id = client.chat([ChatMessage("user", "Count")], Sampling(max_tokens=10_000))
    qtbot.waitUntil(lambda: bool(received), timeout=WAIT_MS)
    client.cancel(request_id)
    at_cancel = len("".join(received).split())
    with qtbot.waitSignal(client.turn_finished, timeout=WAIT_MS) as finished:
        pass
    _request, text, stats = finished.args
    assert stats.stop_reason == "cancelled"
    assert text == "".join(received)
    # What the host made before it saw the cancel arrived after it.
    assert stats.generated_tokens == len(text.split()) > at_cancel
    assert stats.generated_tokens < 10_000


def test_old_turns_leave_the_view_and_only_the_view_is_counted(
    qtbot: QtBot, script: ScriptedEngine, client: EngineClient
) -> None:
    script.n_ctx = 1000  # read as each request is sent, as the load's context
    turn = ["word"] * 96  # 100 tokens with its wrapping
    messages = [
        ChatMessage("system", "Be terse."),
        *(ChatMessage(role, " ".join(turn)) for _ in range(6) for role in ("user", "assistant")),
        ChatMessage("user", "last"),
    ]
    evaluated: list[PromptEvaluated] = []
    client.prompt_evaluated.connect(evaluated.append)
    with qtbot.waitSignal(client.turn_finished, timeout=WAIT_MS) as finished:
        client.chat(messages, Sampling(), reply_room=300, drop_oldest=True)
    # 16 for the system prompt and 1205 for the 13 messages: 1521 with the
    # reply's 300, in a context of 1000. The view starts at the first turn
    # from which the prompt leaves an eighth of the context free beyond that
    # room (it costs at most 700 - 125): at message 8, 16 + 4 * 100 + 5 = 421
    # (from message 6 it would be 621).
    system = SYSTEM_TOKENS + 2 + WRAP_TOKENS
    (event,) = evaluated
    assert event.view_start == 8
    assert event.prompt_tokens == system + 4 * 100 + 5
    assert event.system_tokens == system
    assert event.history_tokens == 4 * 100
    stats = finished.args[2]
    assert stats.view_start == 8 and stats.prompt_tokens == event.prompt_tokens
    # Without leave to drop turns, the same request does not fit, and says both numbers.
    with qtbot.waitSignal(client.chat_failed, timeout=WAIT_MS) as failed:
        client.chat(messages, Sampling(), reply_room=300)
    assert failed.args[1].startswith(
        f"the conversation is {system + 12 * 100 + 5} tokens long, and the context holds 1000"
    )
    assert [r.drop_oldest for r in script.requests] == [True, False]


def test_a_failure_asked_for_comes_once(
    qtbot: QtBot, script: ScriptedEngine, client: EngineClient
) -> None:
    script.fail_next = "the engine is busy"
    hi = [ChatMessage("user", "Hi")]
    with qtbot.waitSignal(client.chat_failed, timeout=WAIT_MS) as failed:
        client.chat(hi, Sampling())
    assert failed.args[1] == "the engine is busy"
    with qtbot.waitSignal(client.turn_finished, timeout=WAIT_MS) as finished:
        client.chat(hi, Sampling())
    assert finished.args[1] == "Hello there."


def test_prepare_and_clearing_saved_states_are_recorded(
    script: ScriptedEngine, client: EngineClient
) -> None:
    hi = (ChatMessage("user", "Hi"),)
    client.prepare(hi)
    client.clear_saved_states()
    assert script.prepared == [hi]
    assert script.cleared_saved_states == 1


def test_a_stop_during_a_load_ends_it(qtbot: QtBot, script: ScriptedEngine) -> None:
    script.load_s = 3600.0  # a load that ends only when stopped
    engine = script.client()
    try:
        with qtbot.waitSignal(engine.load_progress, timeout=WAIT_MS):
            engine.load(LoadConfig(SCRIPTED_MODEL))
        with qtbot.waitSignal(engine.load_failed, timeout=WAIT_MS) as failed:
            engine.stop_load()
        assert failed.args[0].message == "loading was cancelled"
        assert not engine.loading
    finally:
        engine.shutdown()


def test_a_killed_host_ends_as_a_crash_and_a_switch_ends_the_old_one(
    qtbot: QtBot, script: ScriptedEngine, client: EngineClient
) -> None:
    first = script.hosts[-1]
    with qtbot.waitSignal(client.host_exited, timeout=WAIT_MS) as exited:
        first.kill("the test crashed it")
    assert exited.args[0].description == "the test crashed it"
    assert not client.running and not first.is_alive()
    with qtbot.waitSignal(client.model_loaded, timeout=WAIT_MS):
        client.load(LoadConfig(SCRIPTED_MODEL))
    second = script.hosts[-1]
    assert second is not first and client.running
    # A switch ends that host for a fresh one, whose replies arrive as ever.
    with qtbot.waitSignal(client.model_loaded, timeout=WAIT_MS):
        client.switch(LoadConfig(SCRIPTED_MODEL))
    assert script.hosts[-1] is not second
    qtbot.waitUntil(lambda: not second.is_alive())
    with qtbot.waitSignal(client.turn_finished, timeout=WAIT_MS) as finished:
        client.chat([ChatMessage("user", "Hi")], Sampling())
    assert finished.args[1] == "Hello there."
