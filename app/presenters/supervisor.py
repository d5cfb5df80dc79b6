"""The engine's lifecycle, for the window: loads, switches, crashes and restarts.

`EngineSupervisor` is the one place that knows where the engine is, as an
explicit state, and the one that starts it again after a crash (with a
pause that grows, a few times, then it asks the person). The chat session
asks it for replies and hears from it when the model comes and goes; it
never drives the engine's lifecycle itself.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from PySide6.QtCore import QObject, QTimer, Signal

from kvchat.app.core.formatting import describe_model, model_label
from kvchat.app.core.load_marker import LoadMarker
from kvchat.app.core.settings import EngineSettings
from kvchat.app.presenters.engine_client import EngineClient
from kvchat.app.presenters.watchdog import HungEngineWatchdog
from kvchat.engine.models import bundled_model_path, missing_model_message
from kvchat.engine.protocol import ChatMessage, HostExited, LoadFailed, ModelInfo, Sampling
from kvchat.engine.remote_address import is_remote
from kvchat.ui.main_window import MainWindow

# Seconds before each automatic restart of a crashed engine; after the last,
# the person is asked.
RESTART_DELAYS_S = (1.0, 2.0, 4.0)
# Lines of the engine's log shown when it crashes (llama.cpp's last words).
CRASH_LOG_LINES = 3

State = Literal["stopped", "starting", "loading", "ready", "busy", "restarting", "crashed"]


class EngineSupervisor(QObject):
    """Where the engine is, and what brings it back.

    States: "stopped" (no model, and none coming), "starting" (a fresh engine
    host is on its way), "loading", "ready", "busy" (a reply is being
    written), "restarting" (it crashed; a restart is due) and "crashed" (it
    crashed and is not restarted by itself: the person is offered a restart).

    Signals:
        state_changed(str): the new state.
        model_ready(object): ModelInfo, once a model is loaded.
        model_lost(str): the model is gone (the engine crashed); says how, in words.
        switching(): another model is about to load; a reply in flight must end now.
    """

    state_changed = Signal(str)
    model_ready = Signal(object)
    model_lost = Signal(str)
    switching = Signal()

    def __init__(
        self,
        window: MainWindow,
        engine: EngineClient,
        settings: EngineSettings,
        marker: LoadMarker | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.window = window
        self.engine = engine
        self.settings = settings
        self.model: ModelInfo | None = None
        self.state: State = "stopped"
        self.loading_path: str | None = None  # the model being loaded, with `settings`
        self.request_id: int | None = None  # the reply being written
        self._marker = marker
        # The model and settings that loaded last: what a crashed engine restarts with.
        self._last_good: tuple[str, EngineSettings] | None = None
        # What to load again if a switch to another model fails.
        self._fallback: tuple[str, EngineSettings] | None = None
        self._load_stopped = False  # the person pressed Stop during the load
        self._log_note_shown = ""
        self._restarts = 0
        self.restart_delays_s: tuple[float, ...] = RESTART_DELAYS_S
        self._restart_target: tuple[str, EngineSettings] | None = None
        self.restart_timer = QTimer(self)
        self.restart_timer.setSingleShot(True)
        self.restart_timer.timeout.connect(self._restart)
        self.watchdog = HungEngineWatchdog(engine, self)
        engine.host_started.connect(self._on_host_started)
        engine.load_progress.connect(window.set_loading_progress)
        engine.model_loaded.connect(self._on_model_loaded)
        engine.load_failed.connect(self._on_load_failed)
        engine.host_exited.connect(self._on_host_exited)
        engine.turn_finished.connect(lambda request_id, *_: self._ended(request_id, True))
        engine.chat_failed.connect(lambda request_id, _message: self._ended(request_id, False))
        window.restart_requested.connect(self.restart_engine)

    def _set_state(self, state: State) -> None:
        if state != self.state:
            self.state = state
            self.state_changed.emit(state)

    # Loading.

    def start(self, model_path: str | None = None) -> None:
        """Starts the engine and loads `model_path`, or the bundled model."""
        if model_path is None:
            bundled = bundled_model_path()
            if bundled is None:
                self.window.show_no_model()
                self.window.show_error(missing_model_message())
                return
            model_path = str(bundled)
        unfinished = self._marker.read() if self._marker is not None else None
        if unfinished is not None and unfinished.model_path == model_path:
            self.window.show_no_model()
            self.window.show_error(unfinished.explain())
            return
        self.load_model(model_path)

    def load_model(self, path: str) -> None:
        """Loads `path` with `settings`, in the engine that runs (a fresh one if none)."""
        self.stop_reply()
        self.window.clear_error()
        self._begin_load(path, fresh=not self.engine.running)
        self.engine.load(self.settings.load_config(path))
        self.watchdog.load_started()

    def switch_model(self, path: str, settings: EngineSettings | None = None) -> None:
        """Loads another model, or the same with other settings, in a fresh engine.

        A reply in flight is ended first (`switching`); if the new model fails
        to load, the previous one comes back.
        """
        self.switching.emit()
        self.request_id = None  # the old engine ends: nothing more comes of its reply
        if self.model is not None:
            self._fallback = (self.model.path, self.settings)
        if settings is not None:
            self.settings = settings
        self.model = None
        self.window.clear_error()
        self._begin_load(path, fresh=True)
        self.engine.switch(self.settings.load_config(path))
        self.watchdog.load_started()

    def _begin_load(self, path: str, fresh: bool) -> None:
        """Shows the load and notes it in the marker before the engine starts it."""
        self.restart_timer.stop()
        self.loading_path = path
        if self._marker is not None:
            self._marker.begin(path)
        self.window.show_loading(model_label(path))
        self._set_state("starting" if fresh else "loading")

    def stop_load(self) -> None:
        """Stop during a load: the engine ends it and says so."""
        if self.engine.loading:
            self._load_stopped = True
            self.engine.stop_load()
            self.watchdog.load_stop_asked()

    def _on_host_started(self, _event: object) -> None:
        if self.state == "starting":
            self._set_state("loading")
        note = self.engine.log_note
        if note and note != self._log_note_shown:
            self._log_note_shown = note
            self.window.chat_view.add_notice(note)

    def _on_model_loaded(self, info: ModelInfo) -> None:
        self._load_stopped = False
        self.model = info
        bundled = bundled_model_path()
        if not is_remote(info.path) and (bundled is None or Path(info.path) != bundled):
            # Open model and Browse… start beside the model in use.
            self.window.model_folder = str(Path(info.path).parent)
        self.loading_path = None
        self._fallback = None
        self._last_good = (info.path, self.settings)
        if self._marker is not None:
            self._marker.finish()
        self._show_model(info)
        self._set_state("ready")
        self.model_ready.emit(info)

    def _on_load_failed(self, failure: LoadFailed) -> None:
        self.loading_path = None
        if self._marker is not None:
            self._marker.finish()  # refused with a reason: no crash to guard against
        self.model = failure.loaded
        message = f"Could not load {model_label(failure.model_path)}: {failure.message}"
        if self._load_stopped:
            message = f"Stopped loading {model_label(failure.model_path)}"
            self._load_stopped = False
        if self.model is None and self._fallback is not None:
            path, self.settings = self._fallback
            self._fallback = None
            self._begin_load(path, fresh=not self.engine.running)
            self.engine.load(self.settings.load_config(path))
            self.watchdog.load_started()
            self.window.show_error(f"{message}. Loading {model_label(path)} again.")
            return
        if self.model is None:
            self.window.show_no_model()
            self._set_state("stopped")
        else:
            self._show_model(self.model)
            self._set_state("ready")
        self.window.show_error(message)

    def _show_model(self, info: ModelInfo) -> None:
        context = f"context {info.n_ctx} tokens" if info.n_ctx else "context not reported"
        self.window.show_model(info.name, describe_model(info), context)
        self.window.select_model_choice(info.path, info.name if is_remote(info.path) else "")

    # Replies.

    @property
    def busy(self) -> bool:
        return self.request_id is not None

    def chat(
        self,
        messages: list[ChatMessage],
        sampling: Sampling,
        continue_last: bool,
        reply_room: int,
    ) -> int:
        """Asks the engine for a reply; the window's requests drop old turns to fit."""
        self.request_id = self.engine.chat(
            messages, sampling, continue_last, reply_room=reply_room, drop_oldest=True
        )
        self._set_state("busy")
        return self.request_id

    def stop_reply(self) -> None:
        """Asks the engine to end the reply being written (it ends with what it has)."""
        if self.request_id is not None:
            self.engine.cancel(self.request_id)
            self.watchdog.cancel_asked(self.request_id)

    def _ended(self, request_id: int, answered: bool) -> None:
        if request_id == self.request_id:
            self.request_id = None
            if answered:
                self._restarts = 0  # the engine works again: a later crash starts a new count
            if self.state == "busy":
                self._set_state("ready")

    # Crashes and restarts.

    def _on_host_exited(self, event: HostExited) -> None:
        """The engine ended without being asked: say what happened, and start it
        again after a pause, a few times, then ask."""
        self.request_id = None
        self.model_lost.emit(event.description)
        self.window.chat_view.add_notice(self._crash_report(event))
        said = event.description[:1].upper() + event.description[1:] + "."
        crashed_load = (self.loading_path, self.settings) if self.loading_path else None
        self.loading_path = None
        self._load_stopped = False
        if crashed_load is not None and self._marker is not None:
            self._marker.crashed(event.description)
        if crashed_load is not None and crashed_load != self._last_good:
            # A model (or settings) whose load crashed the engine is not loaded
            # again by itself; the last that worked is, if any did.
            target = self._last_good
        elif crashed_load is not None:
            target = crashed_load  # it loaded before: the crash may have been passing
        elif self.model is not None:
            target = (self.model.path, self.settings)
        else:
            target = self._last_good
        self.model = None
        self.window.show_no_model()
        self._restart_target = target or crashed_load
        if target is None:
            name = model_label(crashed_load[0]) if crashed_load else "the model"
            self._set_state("crashed")
            self.window.offer_restart(f"{said} {name} was not loaded again.")
            return
        if self._restarts >= len(self.restart_delays_s):
            self._set_state("crashed")
            self.window.offer_restart(
                f"{said} It crashed {self._restarts + 1} times in a row, "
                "so kvchat stopped restarting it."
            )
            return
        delay = self.restart_delays_s[self._restarts]
        self._restarts += 1
        self._set_state("restarting")
        self.restart_timer.start(round(delay * 1000))
        self.window.show_error(
            f"{said} Restarting it with {model_label(target[0])} in {delay:g} s "
            f"(attempt {self._restarts} of {len(self.restart_delays_s)})."
        )

    def _crash_report(self, event: HostExited) -> str:
        """What the transcript keeps of a crash: how, when, and llama.cpp's last words."""
        lines = [line.strip() for line in event.log_tail.splitlines() if line.strip()]
        report = f"{time.strftime('%H:%M:%S')}: {event.description}."
        if lines:
            shown = "\n".join(line[:200] for line in lines[-CRASH_LOG_LINES:])
            report += f" The engine's last log lines:\n{shown}"
        return report

    def _restart(self) -> None:
        if self._restart_target is None:
            return
        path, self.settings = self._restart_target
        self.load_model(path)  # on a fresh host

    def restart_engine(self) -> None:
        """The person's restart, after the automatic ones gave up."""
        self._restarts = 0
        self._restart()

    def shutdown(self) -> None:
        """Ends the engine as the window closes."""
        self.restart_timer.stop()
        self.stop_reply()
        self.watchdog.disarm()
        self.engine.shutdown()
        self._set_state("stopped")
        unfinished = self._marker.read() if self._marker is not None else None
        if self._marker is not None and unfinished is not None and not unfinished.crash:
            # A load the person closed the window on did not crash anything.
            self._marker.finish()
