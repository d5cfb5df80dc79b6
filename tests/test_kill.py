"""Killing the app with SIGKILL at random moments loses no message shown as sent."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvchat.app.core.store import DB_NAME, open_store
from tests.kill_child import LONG_REPLY

KILLS = 20
# The fast lane (make test-fast) kills fewer times; the whole suite KILLS times.
FAST_LANE_KILLS = 6
SEED = 20260510
REPO = Path(__file__).resolve().parent.parent


def _start(data_dir: Path, run: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.kill_child", str(data_dir), str(run)],
        cwd=REPO,
        # The test's own modules come from the checkout, named explicitly:
        # kvchat's children never import from their working folder.
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _acks(lines: list[str]) -> dict[str, str]:
    acked = {}
    for line in lines:
        if line.startswith("ACK "):
            _, key, text = line.rstrip("\n").split(" ", 2)
            acked[key] = text
    return acked


def _check(data_dir: Path, acked: dict[str, str]) -> str:
    """Checks the database as the killed app left it; returns what the last
    message was doing: "streaming" (a checkpointed partial reply), "asked"
    (a message waiting for its reply), or "done"."""
    connection = sqlite3.connect(data_dir / DB_NAME)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = connection.execute(
            "SELECT key, role, content, state FROM messages ORDER BY position"
        ).fetchall()
    finally:
        connection.close()
    stored = {key: content for key, role, content, _state in rows if role == "user"}
    missing = {key: text for key, text in acked.items() if stored.get(key) != text}
    assert not missing, f"acknowledged but not stored: {missing}"
    whole = "".join(LONG_REPLY)
    for _key, role, content, state in rows:
        if role == "assistant":
            assert whole.startswith(content), "a stored reply is not what was shown"
            assert state in ("done", "streaming", "interrupted")
    last_role, last_state = rows[-1][1], rows[-1][3]
    return "asked" if last_role == "user" else str(last_state)


@pytest.mark.parametrize(
    "kills", [FAST_LANE_KILLS, pytest.param(KILLS, marks=pytest.mark.thorough)]
)
def test_sigkill_during_generation_loses_no_acknowledged_message(
    data_dir: Path, kills: int
) -> None:
    chooser = random.Random(SEED + kills)  # other moments than the other count's
    acked: dict[str, str] = {}
    moments: dict[str, int] = {}
    started = time.monotonic()
    for run in range(kills):
        child = _start(data_dir, run)
        assert child.stdout is not None
        lines = []
        while not any(line.startswith("ACK ") for line in lines):
            line = child.stdout.readline()
            assert line, f"run {run}: the app ended before acknowledging a message"
            lines.append(line)
        time.sleep(chooser.uniform(0.0, 1.8))
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL
        acked.update(_acks(lines + rest.splitlines(keepends=True)))
        moment = _check(data_dir, acked)
        moments[moment] = moments.get(moment, 0) + 1
    elapsed = time.monotonic() - started
    # Every run left its conversation to the next: one conversation, all runs' turns.
    opened = open_store(data_dir)
    try:
        (conversation,) = opened.store.conversations()
        messages = opened.store.messages(conversation.key)
        assert {m.key for m in messages if m.role == "user"} >= set(acked)
        assert all(m.state != "streaming" for m in messages)
        assert opened.store.integrity() == "ok"
    finally:
        opened.store.close()
    assert len(acked) >= kills
    # The kills fell while replies streamed, not only between turns.
    assert moments.get("streaming", 0) + moments.get("asked", 0) >= kills // 3
    print(
        f"{kills} kills in {elapsed:.1f} s, {len(acked)} acknowledged messages, all kept; "
        f"the last message when killed: {moments}"
    )
