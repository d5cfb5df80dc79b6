"""The save queue: order, retries, and nothing dropped, on a real store.

Commits run on the queue's worker thread; `wait_until_saved` waits for
them (the threading itself is tested in tests/app/test_saving_worker.py).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from kvchat.app.core.store import (
    Conversation,
    Message,
    PutConversation,
    PutMessage,
    open_store,
)
from kvchat.app.presenters.saving import SaveQueue
from tests.read_only import read_only
from tests.stored import wait_until_saved


def _put(position: int, text: str, state: str = "done") -> PutMessage:
    return PutMessage(
        Message(f"m{position}", "c", position, "user", text, state, 1.0, 1.0)  # type: ignore[arg-type]
    )


CONVERSATION = PutConversation(Conversation("c", "t", "p", "n", "", 1.0, 1.0))


def _fill_the_disk(queue: SaveQueue) -> None:
    store = queue.store
    assert store is not None
    pages = store._connection.execute("PRAGMA page_count").fetchone()[0]
    store._connection.execute(f"PRAGMA max_page_count = {pages}")


def _free_the_disk(queue: SaveQueue) -> None:
    assert queue.store is not None
    queue.store._connection.execute("PRAGMA max_page_count = 1073741823")


def test_writes_land_in_order_and_a_failure_is_retried(qtbot: QtBot, data_dir: Path) -> None:
    queue = SaveQueue(lambda: open_store(data_dir), retry_ms=30)
    assert queue.open() is not None
    queue.submit(CONVERSATION, _put(0, "first"))
    wait_until_saved(qtbot, queue)
    assert queue.pending == 0
    _fill_the_disk(queue)
    with qtbot.waitSignal(queue.save_failed) as failed:
        queue.submit(_put(1, "x" * 50_000))
    assert failed.args == [
        "Could not save the conversation: the disk is full. Everything stays on screen, "
        "and kvchat keeps trying to save it every few seconds."
    ]  # no rescue folders given: no copy promised
    # While it fails, later writes wait behind it; checkpoints of one reply fold into one.
    queue.submit(_put(2, "rep", "streaming"), durable=False)
    queue.submit(_put(2, "reply so far", "streaming"), durable=False)
    assert queue.pending == 2
    _free_the_disk(queue)
    with qtbot.waitSignal(queue.saved_again, timeout=2000):
        pass
    assert queue.pending == 0 and queue.problem == ""
    assert queue.store is not None
    messages = queue.store.messages("c")
    assert [(m.content[:5], m.state) for m in messages] == [
        ("first", "done"),
        ("xxxxx", "done"),
        ("reply", "streaming"),
    ]
    assert queue.close() is None


def test_a_store_that_cannot_open_is_opened_later(qtbot: QtBot, data_dir: Path) -> None:
    queue = SaveQueue(lambda: open_store(data_dir), retry_ms=30)
    with read_only(data_dir):
        assert queue.open() is None
        assert queue.problem.startswith("Conversations cannot be saved: ")
        queue.submit(CONVERSATION, _put(0, "kept"))
    with qtbot.waitSignal(queue.store_opened, timeout=2000):
        pass
    assert queue.pending == 0
    assert queue.store is not None
    assert [m.content for m in queue.store.messages("c")] == ["kept"]
    queue.close()


def test_quitting_while_the_disk_refuses_keeps_the_writes_in_an_owner_only_file(
    qtbot: QtBot, data_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "rescue"
    queue = SaveQueue(lambda: open_store(data_dir), [folder])
    queue.open()
    queue.submit(CONVERSATION)
    wait_until_saved(qtbot, queue)
    _fill_the_disk(queue)
    with qtbot.waitSignal(queue.save_failed) as failed:
        queue.submit(_put(0, "y" * 50_000))
    (early,) = folder.iterdir()
    # The window's banner names the file while it fails, not only stderr at quit.
    assert str(early) in failed.args[0]
    rescue = queue.close()
    assert rescue == early
    assert stat.S_IMODE(rescue.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    (group,) = json.loads(rescue.read_text(encoding="utf-8"))
    assert group[0]["PutMessage"]["message"]["content"] == "y" * 50_000


def test_the_rescue_file_never_follows_a_planted_link(
    qtbot: QtBot, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, victim = tmp_path / "rescue", tmp_path / "victim.txt"
    folder.mkdir()
    victim.write_text("precious")
    # Every name the file could take in the next seconds is a link to the victim.
    monkeypatch.setattr("time.strftime", lambda _format: "fixed")
    (folder / f"kvchat-unsaved-fixed-{os.getpid()}.json").symlink_to(victim)
    second = tmp_path / "second"
    queue = SaveQueue(lambda: open_store(data_dir), [folder, second])
    queue.open()
    queue.submit(CONVERSATION)
    wait_until_saved(qtbot, queue)
    _fill_the_disk(queue)
    queue.submit(_put(0, "secret " * 10_000))
    rescue = queue.close()
    assert victim.read_text() == "precious"
    assert rescue is not None and rescue.parent == second
    assert "secret" in rescue.read_text(encoding="utf-8")


def test_the_rescue_file_goes_once_everything_is_saved(
    qtbot: QtBot, data_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "rescue"
    queue = SaveQueue(lambda: open_store(data_dir), [folder], retry_ms=30)
    queue.open()
    queue.submit(CONVERSATION)
    wait_until_saved(qtbot, queue)
    _fill_the_disk(queue)
    with qtbot.waitSignal(queue.save_failed):
        queue.submit(_put(0, "later " * 10_000))
    assert len(list(folder.iterdir())) == 1
    _free_the_disk(queue)
    with qtbot.waitSignal(queue.saved_again, timeout=2000):
        pass
    assert list(folder.iterdir()) == []
    assert queue.close() is None
