"""Where kvchat keeps its state: one data folder, chosen once at start."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

DATA_DIR_ENV = "KVCHAT_DATA_DIR"


class DataDirError(Exception):
    """The data folder cannot be used at all; the message says why, for a person."""


def resolve_data_dir(cli_value: str | None = None) -> Path:
    """--data-dir, else $KVCHAT_DATA_DIR, else the platform's user data folder.

    The folder is created if it does not exist. A folder that exists but
    cannot be written is returned: kvchat runs read-only there and says so.

    Raises:
        DataDirError: the path is a file, or cannot be a folder at all.
    """
    chosen = cli_value or os.environ.get(DATA_DIR_ENV) or platformdirs.user_data_dir("kvchat")
    path = Path(chosen).expanduser().absolute()
    try:
        path = path.resolve()
        if path.exists() and not path.is_dir():
            raise DataDirError(f"the data folder {path} is a file, not a folder")
        path.mkdir(parents=True, exist_ok=True)
    except DataDirError:
        raise
    except OSError as exc:
        raise DataDirError(
            f"cannot use {chosen} as the data folder: {exc.strerror or exc}"
        ) from None
    return path


def engine_log_path(data_dir: Path) -> Path:
    """llama.cpp's log: it writes a great deal, so it goes here, not to the terminal."""
    return data_dir / "logs" / "engine.log"


def kv_cache_path(data_dir: Path) -> Path:
    """Where conversations' keys and values are kept between runs (engine.kv_store)."""
    return data_dir / "kv-cache"


def rescue_folders(data_dir: Path) -> list[Path]:
    """Where messages the database refused are kept, best first: the data
    folder (next to the database), the user's runtime folder (memory-backed,
    so it works on a full disk), then the home folder. Never a shared /tmp."""
    folders = [data_dir / "unsaved"]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        folders.append(Path(runtime) / "kvchat")
    folders.append(Path.home() / ".kvchat-unsaved")
    return folders
