"""One kvchat per data folder: a lock file, so a second window cannot write
conversations beside the first.

Qt's QLockFile records the owner's process id and host; a lock left by a
process that died (killed, crashed) is recognised as stale and taken over.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QLockFile

LOCK_NAME = "kvchat.lock"


class Error(Exception):
    """Base class of this module's errors; messages are meant for a person."""


class AlreadyRunningError(Error):
    """Another kvchat holds the data folder."""


class InstanceLock:
    """The data folder's lock, held from `acquire` until `release`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._file = QLockFile(str(data_dir / LOCK_NAME))
        # Age alone never makes a lock stale: a window may stay open for weeks.
        self._file.setStaleLockTime(0)

    @property
    def held(self) -> bool:
        return self._file.isLocked()

    def acquire(self) -> bool:
        """Takes the lock. Returns False when the folder cannot be written at
        all (then no one can write beside us either, and the store says why).

        Raises:
            AlreadyRunningError: another kvchat holds it.
        """
        if self._file.tryLock(0):
            return True
        if self._file.error() != QLockFile.LockError.LockFailedError:
            return False
        owner = ""
        info = self._file.getLockInfo()
        if isinstance(info, tuple) and len(info) == 3:
            pid, host, _app = info
            owner = f" (process {pid} on {host})"
        raise AlreadyRunningError(
            f"kvchat is already running with the data folder {self.data_dir}{owner}. "
            "Switch to that window, or start this one with --data-dir to use another folder."
        )

    def release(self) -> None:
        if self._file.isLocked():
            self._file.unlock()
