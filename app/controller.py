"""The Controller ties what the person does in the window to the engine.

It keeps the conversation the model sees (multi-turn: every request carries
all of it) and turns engine events into what the window shows. The window
and the engine never see each other.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal

from app.engine_client import EngineClient
from app.formatting import describe_model, format_stats
from app.memory_monitor import MemoryMonitor
from app.settings import EngineSettings
from engine.models import bundled_model_path, missing_model_message
from engine.protocol import ChatMessage, HostExited, LoadFailed, ModelInfo, TurnStats
from ui.main_window import MainWindow

MAX_RESTARTS = 3


class Controller(QObject):
    """Runs the conversation between the window and the engine.

    Signals:
        reply_finished(object): TurnStats of a reply that ended (done or stopped).
    """

    reply_finished = Signal(object)

    def __init__(
        self,
        window: MainWindow,
        engine: EngineClient,
        settings: EngineSettings | None = None,
    ) -> None:
        super().__init__(window)
        self.window = window
        self.engine = engine
        self.settings = settings or EngineSettings()
        self.conversation: list[ChatMessage] = []
        self.model: ModelInfo | None = None
        self._loading_path: str | None = None
        self._request_id: int | None = None
        self._restarts = 0
        # What to load again if a switch to another model fails.
        self._fallback: tuple[str, EngineSettings] | None = None
        self.memory_monitor = MemoryMonitor(window.memory_panel, engine)

        window.message_submitted.connect(self.send)
        window.stop_requested.connect(self.stop)
        window.model_file_chosen.connect(self.switch_model)
        window.closing.connect(self.shutdown)
        engine.load_progress.connect(window.set_loading_progress)
        engine.model_loaded.connect(self._on_model_loaded)
        engine.load_failed.connect(self._on_load_failed)
        engine.text_received.connect(self._on_text)
        engine.turn_finished.connect(self._on_turn_finished)
        engine.chat_failed.connect(self._on_chat_failed)
        engine.host_exited.connect(self._on_host_exited)

    @property
    def busy(self) -> bool:
        return self._request_id is not None

    def start(self, model_path: str | None = None) -> None:
        """Starts the engine and loads `model_path`, or the bundled model."""
        if model_path is None:
            bundled = bundled_model_path()
            if bundled is None:
                self.window.show_no_model()
                self.window.show_error(missing_model_message())
                return
            model_path = str(bundled)
        self.load_model(model_path)

    def load_model(self, path: str) -> None:
        if self.busy:
            self.stop()
        self.window.clear_error()
        self._loading_path = path
        self.window.show_loading(Path(path).name)
        self.engine.load(self.settings.load_config(path))

    def switch_model(self, path: str, settings: EngineSettings | None = None) -> None:
        """Loads another model, or the same with other settings, in a fresh engine.

        A reply in flight is stopped and kept as far as it got; the
        conversation carries over. If the new model fails to load, the
        previous one comes back.
        """
        if self.busy:
            self._finish_reply(self.window.chat_view.reply_text(), "stopped: switching models")
        if self.model is not None:
            self._fallback = (self.model.path, self.settings)
        if settings is not None:
            self.settings = settings
        self.model = None
        self.window.clear_error()
        self._loading_path = path
        self.window.show_loading(Path(path).name)
        self.engine.switch(self.settings.load_config(path))

    def send(self, text: str) -> None:
        """Sends the person's message with the whole conversation before it."""
        if self.model is None or self.busy or not text.strip():
            return
        self.window.clear_error()
        self.window.accept_message()
        self.conversation.append(ChatMessage("user", text))
        self.window.chat_view.add_message("You", text, from_person=True)
        self.window.chat_view.begin_reply(self.model.name)
        self.window.set_busy(True)
        prompt = list(self.conversation)
        if self.settings.system_prompt:
            prompt.insert(0, ChatMessage("system", self.settings.system_prompt))
        self._request_id = self.engine.chat(prompt, self.settings.sampling())

    def stop(self) -> None:
        if self._request_id is not None:
            self.engine.cancel(self._request_id)

    def shutdown(self) -> None:
        if self._request_id is not None:
            self.engine.cancel(self._request_id)
        self.engine.shutdown()

    def _on_model_loaded(self, info: ModelInfo) -> None:
        self.model = info
        self._loading_path = None
        self._fallback = None
        self._restarts = 0
        self._show_model(info)
        self.window.chat_view.add_notice(f"Loaded {describe_model(info)}")

    def _on_load_failed(self, failure: LoadFailed) -> None:
        self._loading_path = None
        self.model = failure.loaded
        message = f"Could not load {Path(failure.model_path).name}: {failure.message}"
        if self.model is None and self._fallback is not None:
            path, self.settings = self._fallback
            self._fallback = None
            self._loading_path = path
            self.window.show_loading(Path(path).name)
            self.engine.load(self.settings.load_config(path))
            self.window.show_error(f"{message}. Loading {Path(path).name} again.")
            return
        if self.model is None:
            self.window.show_no_model()
        else:
            self._show_model(self.model)
        self.window.show_error(message)

    def _show_model(self, info: ModelInfo) -> None:
        self.window.show_model(info.name, describe_model(info), f"context {info.n_ctx} tokens")

    def _on_text(self, request_id: int, text: str) -> None:
        if request_id == self._request_id:
            self.window.chat_view.append_reply(text)

    def _finish_reply(self, text: str, footer: str) -> None:
        if text:
            self.conversation.append(ChatMessage("assistant", text))
        self.window.chat_view.end_reply(footer)
        self.window.set_busy(False)
        self._request_id = None

    def _on_turn_finished(self, request_id: int, text: str, stats: TurnStats) -> None:
        if request_id != self._request_id:
            return
        self._finish_reply(text, format_stats(stats))
        if stats.generated_tokens > 1:
            self.window.show_speed(f"last reply {stats.decode_tokens_per_s:.1f} tok/s")
        self.reply_finished.emit(stats)

    def _on_chat_failed(self, request_id: int, message: str) -> None:
        if request_id != self._request_id:
            return
        self._finish_reply(self.window.chat_view.reply_text(), "")
        self.window.show_error(message)

    def _on_host_exited(self, event: HostExited) -> None:
        if self._request_id is not None:
            self._finish_reply(
                self.window.chat_view.reply_text(), "interrupted: the engine stopped"
            )
        log = event.log_tail.strip().splitlines()
        detail = f" Last log line: {log[-1]}" if log else ""
        model_path = self._loading_path or (self.model.path if self.model else None)
        self.model = None
        self.window.show_no_model()
        if model_path is None or self._restarts >= MAX_RESTARTS:
            self.window.show_error(f"{event.description}.{detail}")
            return
        self._restarts += 1
        self.load_model(model_path)  # on a fresh host
        self.window.show_error(f"{event.description}; restarting it.{detail}")
