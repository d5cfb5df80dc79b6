"""settings.json: read forgivingly, written atomically and only when changed
(by a running window, on a worker thread: SettingsFile).

A settings file that is empty, cut short, not JSON, or holds values of the
wrong type or out of range never stops kvchat: the good fields are kept,
the bad ones take their defaults, the bad file is kept beside the new one
for the person to look at, and they are told once (the cleaned file is
written at once, so the next start has nothing to say).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from kvchat.app.core.serial_worker import SerialWorker
from kvchat.app.core.settings import SCHEMA_VERSION, Appearance, EngineSettings, Settings

SETTINGS_FILE = "settings.json"
# The groups of settings, each salvaged field by field: a bad value in one
# loses that value, not the group.
GROUPS: dict[str, type[BaseModel]] = {"engine": EngineSettings, "appearance": Appearance}


@dataclass(frozen=True)
class LoadedSettings:
    settings: Settings
    # What was wrong with the file, in words; empty when it was fine or absent.
    notice: str


class NewerSettingsError(OSError):
    """settings.json belongs to a newer kvchat: it is not overwritten."""


def _schema_version(text: str) -> int:
    try:
        data = json.loads(text)
    except ValueError:
        return 0
    version = data.get("schema_version") if isinstance(data, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else 0


def settings_path(data_dir: Path) -> Path:
    return data_dir / SETTINGS_FILE


def _describe(field: str, error: dict[str, Any]) -> str:
    value = error.get("input")
    shown = json.dumps(value) if isinstance(value, str | int | float | bool) else "its value"
    return f"{field} ({shown}: {error['msg'].lower()})"


def _salvage(model: type[BaseModel], data: dict[str, Any], prefix: str) -> tuple[Any, list[str]]:
    """The model built from `data`, dropping each field that fails, and what was dropped."""
    problems: list[str] = []
    clean = dict(data)
    for _ in range(len(data) + 1):
        try:
            return model.model_validate(clean), problems
        except ValidationError as exc:
            for error in exc.errors():
                key = str(error["loc"][0]) if error["loc"] else ""
                if key in clean:
                    problems.append(_describe(prefix + key, dict(error)))
                    del clean[key]
    return model(), problems


def read_settings(path: Path) -> LoadedSettings:
    """The settings in `path`, defaults where it is missing or wrong; never raises.

    A damaged file is renamed to settings.json.bad-<time> and replaced with
    the cleaned settings.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return LoadedSettings(Settings(), "")
    except (OSError, UnicodeDecodeError) as exc:
        return _replace_bad(path, f"it could not be read ({exc})", Settings())
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        reason = "it is empty" if not text.strip() else "it is not valid JSON"
        return _replace_bad(path, reason, Settings())
    if not isinstance(data, dict):
        return _replace_bad(path, "it does not hold settings", Settings())

    version = data.get("schema_version")
    newer = isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION
    if newer:
        # A newer kvchat wrote it: take what this one understands, change nothing.
        data.pop("schema_version")
    problems: list[str] = []
    groups: dict[str, BaseModel] = {}
    for key, model in GROUPS.items():
        # A group missing (a file older than the group) takes its defaults quietly.
        group_data = data.pop(key, {})
        if not isinstance(group_data, dict):
            problems.append(f"{key} (not a group of settings)")
            group_data = {}
        groups[key], group_problems = _salvage(model, group_data, f"{key}.")
        problems += group_problems
    top, top_problems = _salvage(Settings, {**data, **groups}, "")
    problems += top_problems
    if newer:
        return LoadedSettings(
            top,
            f"Your settings file {path} was written by a newer version of kvchat. This "
            "one uses the settings it understands and leaves the file as it is, so "
            "changes made now last until kvchat closes.",
        )
    if not problems:
        return LoadedSettings(top, "")
    return _replace_bad(path, "some values were wrong: " + "; ".join(problems), top)


def _replace_bad(path: Path, reason: str, settings: Settings) -> LoadedSettings:
    backup = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
    notice = f"Your settings file {path} could not be used fully: {reason}. "
    try:
        os.replace(path, backup)
        write_settings(path, settings)
        notice += f"Defaults stand in for what was wrong; the old file is kept as {backup.name}."
    except OSError as exc:
        notice += f"Defaults stand in for what was wrong; the file could not be replaced ({exc})."
    return LoadedSettings(settings, notice)


def write_settings(path: Path, settings: Settings) -> bool:
    """Writes the settings if they differ from the file; returns whether it wrote.

    The new file is written beside the old and renamed over it, so a crash
    or a full disk leaves either the old file or the new one, never half.
    """
    text = settings.model_dump_json(indent=2) + "\n"
    try:
        existing = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        existing = ""
    if existing == text:
        return False
    if _schema_version(existing) > SCHEMA_VERSION:
        raise NewerSettingsError(
            "the settings file was written by a newer version of kvchat, "
            "which this one leaves as it is"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text)
    return True


def write_atomically(path: Path, text: str) -> None:
    """Writes `text` beside `path` and renames it over, so a crash or a full
    disk leaves the old file or the new one, never half of either.

    Raises:
        OSError: the folder or the disk refused; `path` is as it was.
    """
    handle, temporary = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class SettingsFile:
    """settings.json as a running window changes it: off the caller's thread.

    Each change (fields of Settings to replace) is written on a worker
    thread of its own, in the order made, so that the file's fsync, a long
    wait on a slow disk, never holds the GUI thread. The worker reads the
    file, replaces only those fields and writes it back (when it changed),
    so what another kvchat command wrote to other fields meanwhile stays.
    `read` shows the changes not yet written.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._worker = SerialWorker("kvchat-settings")
        self._lock = threading.Lock()
        self._pending: list[dict[str, object]] = []

    def read(self) -> Settings:
        """The file's settings, with the changes still on their way to it."""
        settings = read_settings(self.path).settings
        with self._lock:
            pending = list(self._pending)
        for changes in pending:
            settings = settings.model_copy(update=changes)
        return settings

    def change(
        self, changes: dict[str, object], failed: Callable[[OSError], None] | None = None
    ) -> None:
        """Queues the change; `failed` is called, on the worker, if the disk refuses it."""
        with self._lock:
            self._pending.append(changes)

        def write() -> None:
            try:
                current = read_settings(self.path).settings
                write_settings(self.path, current.model_copy(update=changes))
            except OSError as exc:
                if failed is not None:
                    failed(exc)
            finally:
                with self._lock:
                    self._pending.remove(changes)

        self._worker.submit(write)

    def join(self, timeout_s: float) -> bool:
        """Waits until the changes made are written; False if still writing after `timeout_s`."""
        return self._worker.join(timeout_s)
