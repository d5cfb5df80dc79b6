"""What the conversation store holds, read straight from its SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pytestqt.qtbot import QtBot

from kvchat.app.core.store import DB_NAME
from kvchat.app.presenters.saving import SaveQueue


def stored_rows(data_dir: Path, last: str = "state") -> list[tuple[str, str, str]]:
    """Every message's role, content and `last` column (its state by
    default), in position order (the versions of one message in the order
    they were made)."""
    assert last in ("state", "thinking")
    connection = sqlite3.connect(data_dir / DB_NAME)
    try:
        rows = connection.execute(
            f"SELECT role, content, {last} FROM messages ORDER BY position, created_at, rowid"
        )
        return [(str(r), str(c), str(s)) for r, c, s in rows]
    finally:
        connection.close()


def wait_until_saved(qtbot: QtBot, saver: SaveQueue, timeout_ms: int = 5000) -> None:
    """Waits until every write submitted so far is on disk, or refused by it.

    The save queue commits on a worker thread, so the file lags the window
    by a commit or so: a test that reads it after an action waits first.
    """
    done: list[bool] = []
    saver.when_saved(lambda: done.append(True))
    qtbot.waitUntil(lambda: bool(done), timeout=timeout_ms)
