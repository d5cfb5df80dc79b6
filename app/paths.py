"""Where kvchat keeps its state: one data folder, chosen once at start."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

DATA_DIR_ENV = "KVCHAT_DATA_DIR"


def resolve_data_dir(cli_value: str | None = None) -> Path:
    """--data-dir, else $KVCHAT_DATA_DIR, else the platform's user data folder.

    The folder is created if it does not exist.
    """
    chosen = cli_value or os.environ.get(DATA_DIR_ENV) or platformdirs.user_data_dir("kvchat")
    path = Path(chosen).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def engine_log_path(data_dir: Path) -> Path:
    """llama.cpp's log: it writes a great deal, so it goes here, not to the terminal."""
    return data_dir / "logs" / "engine.log"
