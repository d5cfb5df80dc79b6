"""The check every test ends with (tests/leaks.py) sees what a test leaves running."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from PySide6.QtCore import QObject, QThread, QTimer
from pytestqt.qtbot import QtBot

from tests import leaks


@pytest.fixture(autouse=True)
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leaks, "GRACE_S", 0.2)


def test_nothing_started_is_nothing_left() -> None:
    before = leaks.Snapshot.take()
    assert leaks.leftovers(before) == []


def test_a_python_thread_left_running_is_named() -> None:
    before = leaks.Snapshot.take()
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="forgotten-worker")
    thread.start()
    try:
        assert leaks.leftovers(before) == ["thread 'forgotten-worker'"]
    finally:
        stop.set()
        thread.join()
    assert leaks.leftovers(before) == []


def test_a_child_process_left_running_is_named_and_killed() -> None:
    before = leaks.Snapshot.take()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    left = leaks.leftovers(before)
    assert len(left) == 1 and left[0].startswith(f"child process {child.pid} (")
    assert child.wait(10) != 0  # killed by the check, not left for the next test


class _Spinner(QThread):
    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("forgotten-qthread")
        self.stop = threading.Event()

    def run(self) -> None:
        self.stop.wait()


def test_a_qthread_and_an_active_qtimer_are_named(qtbot: QtBot) -> None:
    leaks.install()
    before = leaks.Snapshot.take()
    owner = QObject()
    timer = QTimer(owner)
    timer.setObjectName("forgotten-timer")
    timer.start(1000)
    spinner = _Spinner()
    spinner.start()
    try:
        left = leaks.leftovers(before)
    finally:
        timer.stop()
        spinner.stop.set()
        spinner.wait()
    assert "QTimer 'forgotten-timer' of QObject, every 1000 ms" in left
    assert "QThread 'forgotten-qthread'" in left
    assert leaks.leftovers(before) == []
