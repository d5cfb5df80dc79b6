"""Hundreds of seeded random sessions against the scripted engine.

The scripted engine keeps streaming a cancelled reply for a while and drops
everything an old host sent after a switch, as the real pipe does, and every
word of a reply carries its request's id: a word of an old request in a new
reply, a message stored twice, or roles out of order fail the test with the
seed and the actions that led there. tests/test_abuse.py runs the same
driver against the real model.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from kvchat.engine.protocol import ChatMessage
from tests.random_sessions import Session
from tests.scripted_engine import SCRIPTED_MODEL, ScriptedEngine, open_window

WINDOWS = 30
# The fast lane (make test-fast) runs the first seeds; the whole suite all of them.
FAST_LANE_WINDOWS = 8
SESSIONS_PER_WINDOW = 10
STEPS_PER_SESSION = 12


def tagged_reply(engine_ref: list[ScriptedEngine], rng: random.Random) -> object:
    """Replies whose every word names the request it belongs to."""

    def reply(_messages: list[ChatMessage]) -> list[str]:
        request_id = len(engine_ref[0].requests)  # ids count from 1, one per request
        return [f"r{request_id}.{i} " for i in range(rng.randint(1, 60))]

    return reply


def tags_of(content: str, request_id: int) -> str:
    wrong = [w for w in content.split() if not w.startswith(f"r{request_id}.")]
    return f"words of another request in reply {request_id}: {wrong[:5]}" if wrong else ""


@pytest.mark.parametrize(
    "seed",
    [
        pytest.param(seed, marks=() if seed < FAST_LANE_WINDOWS else pytest.mark.thorough)
        for seed in range(WINDOWS)
    ],
)
def test_random_sessions_keep_the_store_whole_and_replies_apart(
    qtbot: QtBot, data_dir: Path, seed: int
) -> None:
    rng = random.Random(seed)
    engine_ref: list[ScriptedEngine] = []
    engine = ScriptedEngine(
        tagged_reply(engine_ref, rng),  # type: ignore[arg-type]
        rate=rng.choice((500.0, 2000.0, 8000.0)),
    )
    engine_ref.append(engine)
    window, controller = open_window(data_dir, engine)
    try:
        qtbot.waitUntil(lambda: controller.model is not None)
        session = Session(qtbot, window, controller, data_dir, SCRIPTED_MODEL, rng)
        for number in range(SESSIONS_PER_WINDOW):
            session.log.append(f"-- session {seed}.{number}")
            window.new_action.trigger()
            for _ in range(STEPS_PER_SESSION):
                session.step()
            session.check(tags_of, idle=False)
            session.settle()
            session.check(tags_of)
        # The checks saw something: a busy machine refuses more sends, never all.
        assert session.accepted
    finally:
        window.close()
        window.deleteLater()
        qtbot.wait(1)
    # Closing ended every reply: nothing streams, and every thread of the
    # engine ends (its host is stopped on a thread of its own).
    qtbot.waitUntil(lambda: not [t for t in engine.threads if t.is_alive()])
    session.check(tags_of)
