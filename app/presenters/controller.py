"""The window's presenters, made and wired together.

`Controller` builds the pieces that each have one job (the engine
supervisor, the chat session, the conversations presenter, the
conversation's settings) and gives the rest of the app one object to hold.
The window, the store and the engine never see each other.
"""

from __future__ import annotations

from PySide6.QtCore import QObject

from kvchat.app.core.load_marker import LoadMarker
from kvchat.app.core.reply import prompt_of
from kvchat.app.core.settings import EngineSettings
from kvchat.app.core.settings_file import SettingsFile
from kvchat.app.presenters.chat_session import ChatSession
from kvchat.app.presenters.conversation_settings import ConversationSettings
from kvchat.app.presenters.conversations import ConversationsPresenter
from kvchat.app.presenters.engine_client import EngineClient
from kvchat.app.presenters.history import History
from kvchat.app.presenters.instance_lock import InstanceLock
from kvchat.app.presenters.memory_monitor import MemoryMonitor
from kvchat.app.presenters.supervisor import EngineSupervisor
from kvchat.app.presenters.transcript import Transcript
from kvchat.engine.protocol import ChatMessage, ModelInfo
from kvchat.ui.main_window import MainWindow


class Controller(QObject):
    """The presenters of one window. Its signals are its pieces':

    - reply_finished(object): TurnStats of a reply that ended (the chat session's);
    - conversation_shown(str): another conversation is on screen (the list's).
    """

    def __init__(
        self,
        window: MainWindow,
        engine: EngineClient,
        settings: EngineSettings | None = None,
        *,
        history: History,
        settings_file: SettingsFile,
        lock: InstanceLock | None = None,
        marker: LoadMarker | None = None,
    ) -> None:
        super().__init__(window)
        self.window = window
        self.engine = engine
        self.history = history
        # settings.json, changed off the GUI thread.
        self.settings_file = settings_file
        self._lock = lock
        settings = settings or EngineSettings()
        self.supervisor = EngineSupervisor(window, engine, settings, marker, self)
        self.memory_monitor = MemoryMonitor(window.memory_panel, engine)
        self.supervisor.state_changed.connect(self.memory_monitor.engine_state_changed)
        self.conversation_settings = ConversationSettings(
            window, history, lambda: self.supervisor.settings, lambda: self.supervisor.model
        )
        self.transcript = Transcript(
            window, history, self.memory_monitor, lambda: self.supervisor.model
        )
        self.session = ChatSession(
            window, history, self.supervisor, self.conversation_settings, self.transcript, self
        )
        self.conversations = ConversationsPresenter(
            window, history, self.session, self.conversation_settings, self
        )
        self.reply_finished = self.session.reply_finished
        self.conversation_shown = self.conversations.conversation_shown
        # Set by whoever builds the window (app.presenters.gui), which owns the data dir.
        self.settings_flow: QObject | None = None
        window.model_file_chosen.connect(self.switch_model)
        window.closing.connect(self.shutdown)
        self.conversation_settings.show()

    @property
    def settings(self) -> EngineSettings:
        """The settings in use: how models load, and the defaults a conversation
        samples with where it did not change them."""
        return self.supervisor.settings

    @settings.setter
    def settings(self, settings: EngineSettings) -> None:
        self.supervisor.settings = settings
        self.conversation_settings.show()

    @property
    def model(self) -> ModelInfo | None:
        return self.supervisor.model

    @property
    def loading_path(self) -> str | None:
        """The model being loaded now, with `settings`; None when no load runs."""
        return self.supervisor.loading_path

    @property
    def busy(self) -> bool:
        return self.session.busy

    @property
    def restart_delays_s(self) -> tuple[float, ...]:
        return self.supervisor.restart_delays_s

    @restart_delays_s.setter
    def restart_delays_s(self, delays: tuple[float, ...]) -> None:
        self.supervisor.restart_delays_s = delays

    @property
    def conversation(self) -> list[ChatMessage]:
        """The conversation so far, as the model is sent it when it all fits."""
        return prompt_of("", [m for m in self.history.messages if m.content or m.thinking])

    def start(self, model_path: str | None = None) -> None:
        self.supervisor.start(model_path)

    def switch_model(self, path: str, settings: EngineSettings | None = None) -> None:
        self.supervisor.switch_model(path, settings)
        self.conversation_settings.show()

    def send(self, text: str) -> None:
        self.session.send(text)

    def edit(self, key: str, text: str) -> None:
        self.session.edit(key, text)

    def page(self, key: str, step: int) -> None:
        self.session.page(key, step)

    def stop(self) -> None:
        self.session.stop()

    def new_conversation(self) -> None:
        self.conversations.new_conversation()

    def open_conversation(self, key: str) -> None:
        self.conversations.open_conversation(key)

    def open_latest(self) -> None:
        self.conversations.open_latest()

    def delete_conversation(self, key: str) -> None:
        self.conversations.delete_conversation(key)

    def restore_conversation(self, key: str) -> None:
        self.conversations.restore_conversation(key)

    def shutdown(self) -> None:
        self.supervisor.shutdown()
        self.history.close()
        if self._lock is not None:
            self._lock.release()
