"""What the conversation store holds, read straight from its SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kvchat.app.core.store import DB_NAME


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
