"""Real crashes of the real engine host, injected on purpose (engine.faults):
the window stays up, what was said is kept, the person is told what
happened, and the engine comes back or the person is asked."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QTimer
from pytestqt.qtbot import QtBot

from kvchat.app.core.load_marker import LoadMarker
from kvchat.app.core.settings import EngineSettings
from kvchat.app.core.store import open_store
from kvchat.app.presenters import gui
from kvchat.app.presenters.controller import Controller
from kvchat.app.presenters.gui import build_window
from kvchat.engine import faults
from kvchat.engine.faults import POINTS, Fault, Kind, Point
from kvchat.ui.background_import import POLL_MS
from kvchat.ui.main_window import MainWindow

WAIT_MS = 60_000
QUICK_RESTARTS = (0.05, 0.1, 0.2)
SIGNAL_NAMES = {"abort": "SIGABRT", "segfault": "SIGSEGV", "sigkill": "SIGKILL"}


@pytest.fixture
def open_windows(qtbot: QtBot) -> Iterator[list[MainWindow]]:
    windows: list[MainWindow] = []
    yield windows
    for window in windows:
        window.close()
        window.deleteLater()
    qtbot.wait(1)


def _start(
    data_dir: Path, windows: list[MainWindow], model: str | None = None
) -> tuple[MainWindow, Controller]:
    window, controller = build_window(model, EngineSettings(seed=1, max_tokens=60), data_dir)
    controller.restart_delays_s = QUICK_RESTARTS
    windows.append(window)
    return window, controller


def _inject(monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
    """Every engine host started from now on carries the fault."""
    monkeypatch.setattr(faults, "_armed", fault)


def _strike_from_outside(qtbot: QtBot, controller: Controller, once_file: Path) -> None:
    """SIGKILL, as the system's out-of-memory killer sends it, to a host that
    has stalled at the fault's point."""
    qtbot.waitUntil(once_file.exists, timeout=WAIT_MS)
    pid = controller.engine.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)


def _wait_loaded(qtbot: QtBot, controller: Controller) -> None:
    if controller.model is None:
        with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS):
            pass


def _stored_messages(data_dir: Path) -> list[tuple[str, str, str]]:
    store = open_store(data_dir).store
    try:
        (conversation,) = store.conversations()
        return [(m.role, m.content, m.state) for m in store.messages(conversation.key)]
    finally:
        store.close()


@pytest.mark.parametrize("how", ["abort", "segfault", "sigkill"])
@pytest.mark.parametrize("point", [p for p in POINTS if p != "restore"])
def test_a_crashed_engine_keeps_the_window_and_what_was_said(
    qtbot: QtBot,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    open_windows: list[MainWindow],
    how: str,
    point: Point,
) -> None:
    once_file = tmp_path / "struck"
    kind: Kind = "stall" if how == "sigkill" else how  # type: ignore[assignment]
    _inject(monkeypatch, Fault(kind, point, once_file))
    window, controller = _start(data_dir, open_windows)
    if point != "load":
        _wait_loaded(qtbot, controller)
        window.composer.setPlainText("Tell me a long story about a lighthouse.")
        window.send_button.click()
    # The banner as the crash is announced (connected after the controller):
    # the restart, 50 ms later here, clears it, and a busy machine can take
    # longer than that to get back to this test.
    announced: list[str] = []
    controller.engine.host_exited.connect(lambda _event: announced.append(window.banner.text()))
    with qtbot.waitSignal(controller.engine.host_exited, timeout=WAIT_MS) as exited:
        if how == "sigkill":
            _strike_from_outside(qtbot, controller, once_file)
    assert once_file.exists()
    assert exited.args[0].description.startswith(f"the engine crashed with {SIGNAL_NAMES[how]}")

    # The window is up and says what happened, with llama.cpp's last log lines.
    assert window.isVisible()
    assert SIGNAL_NAMES[how] in announced[0]
    shown = window.chat_view.toPlainText()
    assert f"--- injecting fault: {kind} at {point}" in shown
    # The memory panels no longer show the figures of a process that is gone.
    stopped = "The engine is not running: no model is in memory."
    assert window.memory_panel.kv_panel.fill_label.text() == "No model in memory"
    assert window.memory_panel.device_panel.note_label.text() == stopped
    assert window.memory_panel.device_panel.rows() == []

    if point == "load":
        # A load that crashed is not retried by itself: the person is asked.
        assert window.restart_button.isVisible()
        assert "was not loaded again" in window.banner.text()
        unfinished = LoadMarker(data_dir).read()
        assert unfinished is not None and SIGNAL_NAMES[how] in unfinished.crash
        with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS):
            window.restart_button.click()
        assert LoadMarker(data_dir).read() is None
    else:
        # The reply as far as it got is kept and marked; the engine comes back.
        reply = controller.history.messages[-1]
        assert reply.role == "assistant" and reply.state == "interrupted"
        if point == "decode":
            assert reply.content and reply.content in shown
        else:
            assert reply.content == ""
        assert f"interrupted: the engine crashed with {SIGNAL_NAMES[how]}" in shown
        # As announced: the restart clears the banner, maybe before this line runs.
        assert "attempt 1 of 3" in announced[0]
        _wait_loaded(qtbot, controller)
        assert not window.restart_button.isVisible()

    # And it works: a reply streams to its end.
    with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS):
        window.composer.setPlainText("Say hello.")
        window.send_button.click()
    window.close()
    stored = _stored_messages(data_dir)
    assert [role for role, _, _ in stored] == ["user", "assistant"] * (len(stored) // 2)
    assert stored[-1][2] == "done"
    if point != "load":
        assert stored[1][2] == "interrupted"
        assert stored[1][1] == reply.content


def _reply(qtbot: QtBot, window: MainWindow, controller: Controller, text: str) -> None:
    with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS):
        window.composer.setPlainText(text)
        window.send_button.click()


LONG_QUESTION = "Tell me about the history of tea, in detail. " * 4


@pytest.mark.parametrize("source", ["RAM", "disk"])
def test_a_crash_while_restoring_a_saved_cache_is_a_crash_like_any_other(
    qtbot: QtBot,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    open_windows: list[MainWindow],
    source: str,
) -> None:
    once_file = tmp_path / "struck"
    if source == "RAM":
        _inject(monkeypatch, Fault("abort", "restore", once_file))
    window, controller = _start(data_dir, open_windows)
    _wait_loaded(qtbot, controller)
    _reply(qtbot, window, controller, LONG_QUESTION)
    first = controller.history.conversation
    assert first is not None
    window.new_action.trigger()
    _reply(qtbot, window, controller, "Name three birds. " * 6)  # the first is set aside
    assert not once_file.exists()
    if source == "disk":
        window.close()  # the saved caches go to disk as the engine stops
        _inject(monkeypatch, Fault("abort", "restore", once_file))
        # The new window opens the newest conversation and restores it from
        # disk once the model is loaded (its events reach this thread only
        # while the test waits below, so none is missed).
        window, controller = _start(data_dir, open_windows)
    with qtbot.waitSignal(controller.engine.host_exited, timeout=WAIT_MS) as exited:
        if source == "RAM":
            # Opening it brings its cache back from RAM, before anything is sent.
            controller.open_conversation(first.key)
    assert once_file.exists()
    assert exited.args[0].description.startswith("the engine crashed with SIGABRT")
    assert "SIGABRT" in window.banner.text()
    crashed = controller.history.conversation
    assert crashed is not None
    before = [(m.role, m.content) for m in controller.history.messages]
    assert len(before) == 2 and before[1][1]  # nothing said is lost

    # The engine comes back and the conversation goes on; the state that was
    # being restored is not restored again (it could crash the engine again).
    _wait_loaded(qtbot, controller)
    with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS) as finished:
        window.composer.setPlainText("And coffee?")
        window.send_button.click()
    assert finished.args[0].restored_tokens == 0
    assert controller.history.messages[-1].state == "done"
    assert [(m.role, m.content) for m in controller.history.messages][:2] == before
    if source == "disk":  # its file is set aside, and deleted at a later start
        assert len(list((data_dir / "kv-cache").glob("*.restoring"))) == 1


def test_restarts_back_off_then_the_person_is_asked(
    qtbot: QtBot,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    open_windows: list[MainWindow],
) -> None:
    window, controller = _start(data_dir, open_windows)
    _wait_loaded(qtbot, controller)
    # From now on every engine aborts while loading: each restart crashes too.
    _inject(monkeypatch, Fault("abort", "load"))
    delays: list[int] = []
    banners: list[str] = []

    def note_restart() -> None:
        delays.append(controller.supervisor.restart_timer.interval())
        banners.append(window.banner.text())

    controller.engine.host_exited.connect(note_restart)
    pid = controller.engine.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    qtbot.waitUntil(window.restart_button.isVisible, timeout=WAIT_MS)

    assert len(banners) == 4  # the first crash and three restarts, each crashed
    assert [f"attempt {n} of 3" in text for n, text in enumerate(banners[:3], 1)] == [True] * 3
    assert delays[:3] == [round(s * 1000) for s in QUICK_RESTARTS]
    assert "crashed 4 times in a row" in window.banner.text()
    assert "SIGABRT" in window.banner.text()
    assert not controller.engine.running

    # The person fixes the cause (here: the fault goes away) and restarts.
    faults.arm(None)
    with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS):
        window.restart_button.click()
    assert not window.restart_button.isVisible()
    assert window.send_button.isEnabled()


def test_a_switch_that_crashes_brings_the_last_good_settings_back(
    qtbot: QtBot,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    open_windows: list[MainWindow],
    model_path: Path,
) -> None:
    window, controller = _start(data_dir, open_windows)
    _wait_loaded(qtbot, controller)
    assert controller.model is not None and controller.model.n_ctx == 4096
    good = controller.settings
    _inject(monkeypatch, Fault("segfault", "load", tmp_path / "struck"))
    with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS) as loaded:
        controller.switch_model(str(model_path), EngineSettings(n_ctx=2048))
    assert loaded.args[0].n_ctx == 4096
    assert controller.settings == good
    assert "SIGSEGV" in window.chat_view.toPlainText()


def test_a_model_whose_load_crashed_is_not_loaded_at_the_next_start(
    qtbot: QtBot,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    open_windows: list[MainWindow],
    model_path: Path,
) -> None:
    _inject(monkeypatch, Fault("abort", "load", tmp_path / "struck"))
    window, controller = _start(data_dir, open_windows)
    qtbot.waitUntil(window.restart_button.isVisible, timeout=WAIT_MS)
    window.close()  # the person gives up and quits
    assert LoadMarker(data_dir).read() is not None

    window, controller = _start(data_dir, open_windows)
    # What starts the engine runs after the window's first paint.
    qtbot.waitUntil(lambda: bool(window.banner.text()), timeout=WAIT_MS)
    assert not controller.engine.running  # nothing was started
    assert window.banner.text().startswith(f"{model_path.name} was not loaded automatically")
    assert "the engine crashed while loading it (the engine crashed with SIGABRT)" in (
        window.banner.text()
    )
    assert not window.send_button.isEnabled()
    # Choosing it again is the person's call, and it loads.
    with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS):
        window.model_file_chosen.emit(str(model_path))
    assert LoadMarker(data_dir).read() is None


def test_a_load_interrupted_by_closing_the_window_is_not_held_against_the_model(
    qtbot: QtBot,
    data_dir: Path,
    open_windows: list[MainWindow],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[Controller] = []
    monkeypatch.setattr(gui, "_make_flows", lambda controller, _data_dir: made.append(controller))
    window, controller = _start(data_dir, open_windows)
    # Written before the load, which starts after the window's first paint.
    qtbot.waitUntil(lambda: LoadMarker(data_dir).read() is not None, timeout=WAIT_MS)
    window.close()
    assert LoadMarker(data_dir).read() is None

    # The flows' modules finish importing after the close, and the host may
    # still say it started: no flow is made then (its worker thread would
    # outlive the window).
    def imported() -> bool:
        importing = any(t.name == "kvchat-import" for t in threading.enumerate())
        polls = [t for t in controller.findChildren(QTimer) if t.interval() == POLL_MS]
        return not importing and not any(t.isActive() for t in polls)

    qtbot.waitUntil(imported, timeout=WAIT_MS)
    assert made == []


def test_a_host_that_stops_answering_is_ended_and_restarted(
    qtbot: QtBot,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    open_windows: list[MainWindow],
) -> None:
    once_file = tmp_path / "struck"
    _inject(monkeypatch, Fault("stall", "decode", once_file))
    window, controller = _start(data_dir, open_windows)
    controller.supervisor.watchdog.answer_timeout_s = 1.0
    _wait_loaded(qtbot, controller)
    window.composer.setPlainText("Tell me a long story about a lighthouse.")
    window.send_button.click()
    qtbot.waitUntil(once_file.exists, timeout=WAIT_MS)
    # The host's main thread hangs; its other threads still send memory samples.
    with qtbot.waitSignal(controller.engine.host_exited, timeout=WAIT_MS) as exited:
        window.stop_button.click()
    assert exited.args[0].exit_code == -signal.SIGKILL
    assert "did not stop within 1 s of being asked to, so kvchat ended it" in window.banner.text()
    reply = controller.history.messages[-1]
    assert reply.state == "interrupted" and reply.content
    _wait_loaded(qtbot, controller)
    assert window.send_button.isEnabled()


def test_a_stopped_engine_never_freezes_the_window(
    qtbot: QtBot, data_dir: Path, open_windows: list[MainWindow]
) -> None:
    """SIGSTOP (a swapped-out or frozen process): its pipe fills and stays full.

    A message far larger than a pipe's buffer is sent to it. The GUI thread
    must come back at once, keep running its timers, and the hung-engine
    watchdog (a timer on that same thread) must still end the host.
    """
    window, controller = _start(data_dir, open_windows)
    controller.supervisor.watchdog.answer_timeout_s = 1.0
    _wait_loaded(qtbot, controller)
    pid = controller.engine.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        ticks: list[int] = []
        ticker = QTimer()
        ticker.timeout.connect(lambda: ticks.append(1))
        ticker.start(10)
        big = "A long question. " * 120_000  # 2 MB: many times a pipe's buffer
        window.composer.setPlainText(big)
        window.send_button.click()  # returns: the command waits on the writer thread
        qtbot.waitUntil(lambda: len(ticks) >= 5, timeout=WAIT_MS)
        with qtbot.waitSignal(controller.engine.host_exited, timeout=WAIT_MS) as exited:
            window.stop_button.click()
        ticker.stop()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert exited.args[0].exit_code == -signal.SIGKILL
    assert "did not stop within 1 s of being asked to" in window.banner.text()
    # What the person typed is not lost: it was sent, and it is kept.
    assert controller.history.messages[0].content == big
    _wait_loaded(qtbot, controller)
    assert window.send_button.isEnabled()


def test_a_load_that_makes_no_progress_is_ended_and_reported(
    qtbot: QtBot,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    open_windows: list[MainWindow],
) -> None:
    once_file = tmp_path / "struck"
    _inject(monkeypatch, Fault("stall", "load", once_file))
    window, controller = _start(data_dir, open_windows)
    controller.supervisor.watchdog.load_stall_s = 2.0
    with qtbot.waitSignal(controller.engine.host_exited, timeout=WAIT_MS) as exited:
        pass
    assert once_file.exists()
    assert exited.args[0].exit_code == -signal.SIGKILL
    assert "The model load made no progress for 2 s, so kvchat ended it." in window.banner.text()
    # Not loaded into the same hang again by itself: the person is asked.
    assert "was not loaded again" in window.banner.text()
    assert window.restart_button.isVisible()
    assert not window.loading_panel.isVisible()
    faults.arm(None)
    with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS):
        window.restart_button.click()


def test_stop_works_during_a_load(
    qtbot: QtBot,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    open_windows: list[MainWindow],
) -> None:
    once_file = tmp_path / "struck"
    _inject(monkeypatch, Fault("stall", "load", once_file))
    window, controller = _start(data_dir, open_windows)
    controller.supervisor.watchdog.answer_timeout_s = 1.0
    qtbot.waitUntil(once_file.exists, timeout=WAIT_MS)
    assert window.loading_panel.isVisible()
    assert window.stop_button.isEnabled()
    with qtbot.waitSignal(controller.engine.host_exited, timeout=WAIT_MS) as exited:
        qtbot.keyClick(window.composer, Qt.Key.Key_Escape)
    assert exited.args[0].exit_code == -signal.SIGKILL
    assert "The model load did not stop within 1 s of being asked to" in window.banner.text()
    assert not window.stop_button.isEnabled()
    assert window.restart_button.isVisible()


def test_a_log_on_a_full_disk_does_not_stop_the_engine(
    qtbot: QtBot, data_dir: Path, open_windows: list[MainWindow]
) -> None:
    """The engine's log is on a device that refuses every write (/dev/full,
    as a full disk does): the engine starts, loads and replies anyway."""
    (data_dir / "logs").mkdir()
    (data_dir / "logs" / "engine.log").symlink_to("/dev/full")
    window, controller = _start(data_dir, open_windows)
    _wait_loaded(qtbot, controller)
    with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS):
        window.composer.setPlainText("Hello")
        window.send_button.click()
    assert controller.history.messages[-1].content
    assert controller.engine.running
    assert not window.banner.isVisibleTo(window)


def test_each_banner_keeps_its_action(
    qtbot: QtBot, data_dir: Path, open_windows: list[MainWindow]
) -> None:
    """A full disk and a crashed engine at once: both are said, and saving
    working again does not take away the button that restarts the engine."""
    window, controller = _start(data_dir, open_windows)
    controller.restart_delays_s = ()  # a crash asks the person at once
    _wait_loaded(qtbot, controller)
    store = controller.history.saver.store
    assert store is not None
    pages = store._connection.execute("PRAGMA page_count").fetchone()[0]
    store._connection.execute(f"PRAGMA max_page_count = {pages}")
    with qtbot.waitSignal(controller.history.saver.save_failed, timeout=WAIT_MS):
        window.composer.setPlainText("x" * 50_000)
        window.send_button.click()
    pid = controller.engine.pid
    assert pid is not None
    with qtbot.waitSignal(controller.engine.host_exited, timeout=WAIT_MS):
        os.kill(pid, signal.SIGKILL)
    assert window.storage_banner.text().startswith("Could not save the conversation: the disk")
    assert "SIGKILL" in window.banner.text()
    assert window.restart_button.isVisible()
    store._connection.execute("PRAGMA max_page_count = 1073741823")
    with qtbot.waitSignal(controller.history.saver.saved_again, timeout=WAIT_MS):
        controller.history.saver.retry()  # on the save worker
    assert not window.storage_banner.isVisibleTo(window)
    assert window.restart_button.isVisible()
    assert "SIGKILL" in window.banner.text()
    with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS):
        window.restart_button.click()
