"""A reply being written has one owner (the chat session's `Reply`): the
history reads its text from there at each checkpoint and at its end, and
holds no copy that grows with every piece of text."""

from __future__ import annotations

from pathlib import Path

from pytestqt.qtbot import QtBot

from kvchat.app.core.reply import Reply
from kvchat.app.core.store import open_store
from kvchat.app.presenters.history import History
from kvchat.app.presenters.saving import SaveQueue
from tests.scripted_engine import model_info
from tests.stored import stored_rows, wait_until_saved


def test_the_checkpoint_and_the_end_read_the_text_from_its_owner(
    qtbot: QtBot, data_dir: Path
) -> None:
    queue = SaveQueue(lambda: open_store(data_dir))
    assert queue.open() is not None
    history = History(queue)
    history.add_user("question", model_info(), "")
    turn = Reply(0, "send", [])
    reply = history.begin_reply(turn.so_far)
    turn.text, turn.thinking = "Hello", "hmm"
    # Nothing copied as it streams; what asks for the reply gets its owner's text.
    assert history.tree.get(reply.key) == reply
    shown = history.reply
    assert shown is not None and (shown.content, shown.thinking) == ("Hello", "hmm")
    history.checkpoint_reply()
    checkpoint = history.tree.get(reply.key)
    assert checkpoint is not None and checkpoint.content == "Hello"
    wait_until_saved(qtbot, queue)
    assert stored_rows(data_dir, "thinking") == [
        ("user", "question", ""),
        ("assistant", "Hello", "hmm"),
    ]
    pending = queue.pending
    history.checkpoint_reply()  # the same text: nothing to write
    assert queue.pending == pending
    turn.text += " there"
    done = history.finish_reply(turn.answer, "done")
    assert done is not None and (done.content, done.thinking) == ("Hello there", "hmm")
    assert history.reply is None and history.messages[-1] == done
    wait_until_saved(qtbot, queue)
    assert stored_rows(data_dir) == [
        ("user", "question", "done"),
        ("assistant", "Hello there", "done"),
    ]
    queue.close()


def test_a_continued_reply_is_read_with_its_earlier_text(qtbot: QtBot, data_dir: Path) -> None:
    queue = SaveQueue(lambda: open_store(data_dir))
    assert queue.open() is not None
    history = History(queue)
    history.add_user("question", model_info(), "")
    first = Reply(0, "send", [])
    history.begin_reply(first.so_far)
    first.text = "Once"
    previous = history.finish_reply(first.answer, "done")
    assert previous is not None
    turn = Reply(0, "continue", [], previous)
    history.reopen_reply(turn.so_far)
    history.checkpoint_reply()  # nothing new yet: the stored reply stays as it was
    turn.text = " upon a time"
    history.close()  # a reply still streaming is written as interrupted, all of it
    assert stored_rows(data_dir) == [
        ("user", "question", "done"),
        ("assistant", "Once upon a time", "interrupted"),
    ]
