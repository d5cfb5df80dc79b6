"""A model switch without the GUI thread waiting: the old host is stopped,
joined and closed on a thread of its own, nothing it says afterwards reaches
the window, and the new host's load waits until the old process is gone."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from PySide6.QtCore import QCoreApplication
from pytestqt.qtbot import QtBot

import kvchat.engine.client
from kvchat.app.presenters.engine_client import EngineClient
from kvchat.engine.client import HostProcess, retire
from kvchat.engine.protocol import (
    Command,
    Event,
    HostExited,
    HostStarted,
    LoadConfig,
    LoadFailed,
    LoadModel,
    TextDelta,
)

WAIT_S = 60.0
WAIT_MS = 60_000


class HeldHost:
    """An engine host (engine.client.EngineHost) whose `stop` waits, off the
    GUI thread, until the test lets it go; it records the threads that stop
    and close it."""

    def __init__(self) -> None:
        self.log_path = Path(os.devnull)
        self.log_note = ""
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.sent: list[Command] = []
        self.release = threading.Event()
        self.stopping = threading.Event()
        self.stop_threads: list[threading.Thread] = []
        self.close_threads: list[threading.Thread] = []
        self._ended = False

    @property
    def pid(self) -> int | None:
        return None

    def is_alive(self) -> bool:
        return not self._ended

    def send(self, command: Command) -> bool:
        if self._ended:
            return False
        self.sent.append(command)
        return True

    def receive(self, timeout: float | None = None) -> Event | None:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def kill(self, reason: str) -> None:
        self._end()

    def stop(self, grace: float = 1.0) -> None:
        self.stop_threads.append(threading.current_thread())
        self.stopping.set()
        # Never held on the GUI thread: that would hang the test, not fail it.
        if threading.current_thread() is not threading.main_thread():
            self.release.wait()
        self._end()

    def close(self) -> None:
        self.close_threads.append(threading.current_thread())

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.events.put(HostExited(0, "the engine stopped", ""))


def _settle() -> None:
    for _ in range(3):
        QCoreApplication.processEvents()


def test_a_switch_stops_the_old_host_off_the_gui_thread_and_hears_no_more_of_it(
    qtbot: QtBot, tmp_path: Path
) -> None:
    hosts: list[HeldHost] = []

    def factory(_model_path: str) -> HeldHost:
        hosts.append(HeldHost())
        return hosts[-1]

    client = EngineClient(tmp_path / "engine.log", host_factory=factory)
    texts: list[str] = []
    exits: list[object] = []
    published: list[Event] = []
    client.text_received.connect(lambda _request, text: texts.append(text))
    client.host_exited.connect(exits.append)
    client.link.subscribe(published.append)
    try:
        client.load(LoadConfig("first.gguf"))
        old = hosts[0]
        with qtbot.waitSignal(client.text_received, timeout=WAIT_MS):
            old.events.put(TextDelta(1, "heard", 3))
        client.switch(LoadConfig("second.gguf"))
        # The switch returned with the old host still stopping, on another thread.
        assert old.stopping.wait(WAIT_S)
        assert not old.release.is_set()
        assert threading.main_thread() not in old.stop_threads
        new = hosts[1]
        assert [type(c) for c in new.sent][-1] is LoadModel
        # What the old host says from now on goes to no one.
        old.events.put(TextDelta(1, "stale", 4))
        old.release.set()
        qtbot.waitUntil(lambda: bool(old.close_threads), timeout=WAIT_MS)
        _settle()
        assert texts == ["heard"]
        assert exits == []
        assert threading.main_thread() not in old.close_threads
        # The API server's requests on the old host were told it ended, once.
        assert [type(e) for e in published] == [TextDelta, HostExited]
    finally:
        for host in hosts:
            host.release.set()
        client.shutdown()
    qtbot.waitUntil(lambda: all(host.close_threads for host in hosts), timeout=WAIT_MS)


def test_retire_stops_and_closes_on_a_thread_of_its_own() -> None:
    old = HeldHost()
    thread = retire(old)
    (ended,) = kvchat.engine.client._still_retiring()
    assert old.stopping.wait(WAIT_S)
    assert old.stop_threads == [thread] and not ended.is_set()
    old.release.set()
    thread.join(WAIT_S)
    assert ended.is_set() and kvchat.engine.client._still_retiring() == []
    assert old.close_threads == [thread]


class _Gate(threading.Event):
    """A retired host's "it has ended" event that notes when someone waits for it."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waited.set()
        return super().wait(timeout)


def test_a_new_host_process_holds_its_commands_until_the_retired_hosts_end(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _Gate()
    monkeypatch.setattr(kvchat.engine.client, "_retiring", {gate})  # as `retire` leaves it
    host = HostProcess(data_dir / "logs" / "engine.log")
    try:
        host.send(LoadModel(LoadConfig(str(data_dir / "missing.gguf"))))
        assert gate.waited.wait(WAIT_S)  # the commands wait...
        assert isinstance(host.receive(timeout=WAIT_S), HostStarted)  # ...the process does not
        gate.set()
        event = host.receive(timeout=WAIT_S)
        while event is not None and not isinstance(event, LoadFailed | HostExited):
            event = host.receive(timeout=WAIT_S)
        assert isinstance(event, LoadFailed)
    finally:
        host.close()


class _Recorded:
    """A pipe end whose `send` runs `before` first; anything else goes to the pipe."""

    def __init__(self, inner: Any, before: Callable[[], None]) -> None:
        self._inner = inner
        self._before = before

    def send(self, obj: object) -> None:
        self._before()
        self._inner.send(obj)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_switch_loads_the_new_model_once_the_old_process_is_gone(
    qtbot: QtBot, model_path: Path, tmp_path: Path
) -> None:
    pids: list[int] = []
    # For each host, at its first command: were the processes before it gone?
    gone_at_first_command: list[bool] = []
    # By thread id: the reader is a QThread, for which current_thread() would
    # make a Python thread object that outlives it.
    joined_on: list[int] = []

    def factory(_model_path: str) -> HostProcess:
        host = HostProcess(tmp_path / "engine.log")
        # Once started (its writer thread starts it): patched before, the join
        # below would be pickled with the process object.
        assert host.pid is not None
        earlier = list(pids)
        first = threading.Event()

        def before_send() -> None:
            if not first.is_set():
                first.set()
                gone_at_first_command.append(not any(map(psutil.pid_exists, earlier)))

        host._connection = _Recorded(host._connection, before_send)  # type: ignore[assignment]
        process_join = host._process.join

        def join(timeout: float | None = None) -> None:
            joined_on.append(threading.get_ident())
            process_join(timeout)

        host._process.join = join  # type: ignore[method-assign]
        pids.append(host.pid)
        return host

    client = EngineClient(tmp_path / "engine.log", host_factory=factory)
    try:
        with qtbot.waitSignal(client.model_loaded, timeout=WAIT_MS):
            client.load(LoadConfig(str(model_path), n_ctx=512))
        with qtbot.waitSignal(client.model_loaded, timeout=WAIT_MS) as loaded:
            client.switch(LoadConfig(str(model_path), n_ctx=1024))
        assert loaded.args[0].n_ctx == 1024
        assert gone_at_first_command == [True, True]
        assert joined_on and threading.main_thread().ident not in joined_on
    finally:
        client.shutdown()
