"""Starting the window: the Qt application, the theme, the controller."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from kvchat.app.core.load_marker import LoadMarker
from kvchat.app.core.paths import engine_log_path, kv_cache_path, rescue_folders
from kvchat.app.core.settings import EngineSettings, Settings
from kvchat.app.core.settings_file import SettingsFile, settings_path
from kvchat.app.core.store import open_store
from kvchat.app.presenters.api_service import attach_serving
from kvchat.app.presenters.controller import Controller
from kvchat.app.presenters.engine_client import EngineClient
from kvchat.app.presenters.help_flow import HelpFlow
from kvchat.app.presenters.history import History
from kvchat.app.presenters.instance_lock import AlreadyRunningError, InstanceLock
from kvchat.app.presenters.saving import SaveQueue
from kvchat.app.presenters.window_state import WindowKeeper
from kvchat.engine.models import bundled_model_path
from kvchat.engine.remote_address import is_remote, split_model_url
from kvchat.ui.background_import import import_then
from kvchat.ui.main_window import MainWindow
from kvchat.ui.theme import apply_theme

# `kvchat bench` times the launch with this set to "1": once the model is ready,
# the app prints one JSON line to stdout and quits. The line holds time.time()
# when the window was shown (its first paint had ended: MainWindow.first_painted,
# before anything that waits for it starts) and when the model was ready for the
# first message, the process's RSS then, and "error" when the model failed to load.
EXIT_WHEN_READY_ENV = "KVCHAT_BENCH_EXIT_WHEN_READY"
# How long a Python thread of the window's process holds the GIL before the
# GUI thread may take it (see build_window).
GUI_SWITCH_INTERVAL_S = 0.001


def build_window(
    model_path: str | None,
    settings: EngineSettings,
    data_dir: Path,
    api_key: str | None = None,
    engine: EngineClient | None = None,
) -> tuple[MainWindow, Controller]:
    """The window and its controller; the model starts to load once the window is painted.

    The window is shown before the model has loaded, so loading progress is
    visible, with the conversation of the newest activity. `model_path` may
    be a model on a server elsewhere (its URL, engine.remote), whose server
    takes `api_key`. What the first paint does not need waits for it
    (`after_first_paint`): the servers and settings flows (`controller.settings_flow`
    is None until then), the engine, and the search for models.

    `engine` is the engine to use, not started yet (None: the engine host
    process, or a server's); tests pass one whose hosts are scripted
    (tests/scripted_engine.py), and get this same window.

    Raises:
        AlreadyRunningError: another kvchat uses this data folder.
    """
    lock = InstanceLock(data_dir)
    lock.acquire()
    # The window's process runs Python threads beside the GUI thread (the
    # estimate after a load, the save worker, the engine's reader, the API
    # server), and a thread that computes holds the GIL for the switch
    # interval before it hands over: 5 ms by default, so the GUI thread
    # waited in steps of 5 ms during a model switch (benchmarks/gui_stall.py:
    # median stall 47 ms at 5 ms, 9-15 ms at 1 ms).
    sys.setswitchinterval(GUI_SWITCH_INTERVAL_S)
    window = MainWindow()
    if engine is None:
        engine = EngineClient(engine_log_path(data_dir), kv_cache_dir=kv_cache_path(data_dir))
    if api_key and model_path and is_remote(model_path):
        keyed = split_model_url(model_path)[0]
        engine.server_key = lambda base_url: api_key if base_url == keyed else None
    saver = SaveQueue(lambda: open_store(data_dir), rescue_folders(data_dir))
    opened = saver.open()
    controller = Controller(
        window,
        engine,
        settings,
        history=History(saver),
        settings_file=SettingsFile(settings_path(data_dir)),
        lock=lock,
        marker=LoadMarker(data_dir),
    )
    keeper = WindowKeeper(window, controller, data_dir)
    HelpFlow(controller, data_dir)
    window.show()
    controller.open_latest()
    current = controller.history.conversation
    keeper.restore_first_draft(current.key if current is not None else "")
    if opened is not None and opened.notice:
        window.chat_view.add_notice(opened.notice)
    after_first_paint(window, lambda: _start_the_rest(controller, data_dir, model_path))
    return window, controller


# The most that work waits for the window's first paint: a window opened
# minimized, or on another desktop, is not painted until it is looked at.
FIRST_PAINT_WAIT_MS = 2000


def after_first_paint(
    window: MainWindow, work: Callable[[], None], wait_ms: int = FIRST_PAINT_WAIT_MS
) -> None:
    """Runs `work` once, after the window's first paint, or after `wait_ms` for a
    window that is not painted by then; never once the window has closed.

    Queued after the signal, so that it runs after all that waits for the
    paint itself (the launch's timing, `kvchat bench`).
    """
    done = False

    def run() -> None:
        nonlocal done
        if not done:
            done = True
            work()

    def cancel() -> None:
        nonlocal done
        done = True

    window.closing.connect(cancel)
    window.first_painted.connect(run, Qt.ConnectionType.QueuedConnection)
    QTimer.singleShot(wait_ms, window, run)


# What the servers, settings and models flows import: the keyring, llama.cpp's
# GGUF reader and NumPy, which the first paint does not need. (The models flow
# imports huggingface_hub later, on its own worker, when it first needs it.)
FLOW_MODULES = (
    "kvchat.app.presenters.servers_flow",
    "kvchat.app.presenters.settings_flow",
    "kvchat.app.presenters.models_flow",
)


def _start_the_rest(controller: Controller, data_dir: Path, model_path: str | None) -> None:
    """The engine (its load takes longest), then the servers and settings flows
    once their modules have been imported in the background, and the search for
    models.

    The flows are made by the time the engine host says it started, at the
    latest: the settings flow shows the loaded model's estimate, so it must be
    there before the load ends. A server's model waits for them instead: its
    key is the servers flow's. None are made once the window has closed: their
    worker threads end with the window, so one made later would outlive it.
    """
    made = False

    def make_flows() -> None:
        nonlocal made
        if not made:
            made = True
            _make_flows(controller, data_dir)

    def never() -> None:
        nonlocal made
        made = True

    controller.window.closing.connect(never)

    if model_path is not None and is_remote(model_path):
        make_flows()
        controller.start(model_path)
        return
    controller.engine.host_started.connect(lambda _event: make_flows())
    controller.start(model_path)
    import_then(FLOW_MODULES, controller, make_flows)


def _make_flows(controller: Controller, data_dir: Path) -> None:
    from kvchat.app.presenters.models_flow import GetModelsFlow
    from kvchat.app.presenters.servers_flow import ServersFlow
    from kvchat.app.presenters.settings_flow import SettingsFlow

    window, engine = controller.window, controller.engine
    servers = ServersFlow(data_dir, window)
    window.servers_requested.connect(lambda: servers.open(window))
    # Its worker thread ends with the window, as the other flows' do.
    window.closing.connect(servers.close)
    cli_key = engine.server_key
    engine.server_key = lambda base_url: cli_key(base_url) or servers.key_for(base_url)
    if servers.load_notice:
        window.chat_view.add_notice(servers.load_notice)
    flow = SettingsFlow(controller, data_dir)
    controller.settings_flow = flow
    window.settings_requested.connect(flow.open)
    servers.servers_changed.connect(flow.discover_remote)
    flow.servers = lambda: [
        (s.name, s.base_url, servers.key_for(s.base_url)) for s in servers.servers()
    ]
    # It cancels its downloads itself as the window closes.
    models = GetModelsFlow(controller, flow, data_dir)
    window.get_models_requested.connect(models.open)
    flow.get_models_requested.connect(models.open)
    flow.discover()


def missing_display() -> str:
    """Why no window can be shown here ("" when one can).

    Without a display Qt's xcb plugin aborts the process with a message about
    xcb-cursor0, which sends a person over SSH looking for the wrong thing.
    """
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return ""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return ""
    return (
        "there is no display to open the window on (neither DISPLAY nor WAYLAND_DISPLAY "
        'is set): over SSH, use `kvchat chat "question"`, or forward X with ssh -X'
    )


def run_gui(
    model_path: str | None,
    settings: Settings,
    data_dir: Path,
    notice: str = "",
    api_key: str | None = None,
) -> int:
    """Runs the window until it closes.

    Args:
        model_path: --model (or --server's model URL); else the model used
            last, else the bundled one.
        settings: from settings.json, with this run's command-line values.
        notice: what was wrong with settings.json, shown once in the chat.
        api_key: --api-key, for the --server model's server.
    """
    problem = missing_display()
    if problem and QApplication.instance() is None:
        print(f"kvchat: {problem}", file=sys.stderr)
        return 2
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setApplicationName("kvchat")
    app.setDesktopFileName("kvchat")
    apply_theme(app)
    try:
        window, controller = build_window(
            model_path or settings.model_path, settings.engine, data_dir, api_key
        )
    except AlreadyRunningError as exc:
        print(f"kvchat: {exc}", file=sys.stderr)
        QMessageBox.critical(None, "kvchat is already running", str(exc))
        return 1
    # Before the first paint: a saved dark theme or chat width shows from the start.
    window.apply_appearance(settings.appearance)
    if notice:
        window.chat_view.add_notice(notice)
    controller.engine.model_loaded.connect(
        lambda info: _remember_model(controller.settings_file, info.path)
    )
    # Serving imports FastAPI and uvicorn when it starts at once (it served last time).
    after_first_paint(window, lambda: _serve(window, controller, settings))
    if os.environ.get(EXIT_WHEN_READY_ENV) == "1":
        _exit_when_ready(window, controller)
    app.styleHints().colorSchemeChanged.connect(lambda _scheme: window.refresh_theme())
    return app.exec()


def _serve(window: MainWindow, controller: Controller, settings: Settings) -> None:
    attach_serving(window, controller.engine, settings, controller.settings_file)


def _remember_model(settings_file: SettingsFile, path: str) -> None:
    """The next start opens the model that loaded last (None: the bundled one).

    A convenience: a read-only data folder only loses it."""
    bundled = bundled_model_path()
    remembered = None if bundled is not None and Path(path) == bundled else path
    settings_file.change({"model_path": remembered})


def _exit_when_ready(window: MainWindow, controller: Controller) -> None:
    """Reports the launch's timestamps once the model is ready, then closes the window."""
    times: dict[str, object] = {}

    def report(error: str | None) -> None:
        import psutil  # here: the launch being timed does not wait for it

        times.update(ready=time.time(), rss_bytes=psutil.Process().memory_info().rss)
        if error is not None:
            times["error"] = error
        print(json.dumps(times), flush=True)
        window.close()

    # Direct, where what waits for the first paint is queued (after_first_paint).
    window.first_painted.connect(lambda: times.setdefault("window_shown", time.time()))
    controller.engine.model_loaded.connect(lambda _info: report(None))
    controller.engine.load_failed.connect(lambda failure: report(failure.message))
