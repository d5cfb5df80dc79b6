"""A conversation's own settings: its system prompt and the sampling values it
changed from the defaults, shown in the "This conversation" panel."""

from __future__ import annotations

from collections.abc import Callable

from kvchat.app.core.settings import EngineSettings, apply_overrides
from kvchat.app.presenters.history import History, overrides_json, overrides_of
from kvchat.engine.protocol import ModelInfo, Sampling
from kvchat.ui.main_window import MainWindow


class ConversationSettings:
    """What the conversation on screen samples with, and the panel that shows it.

    Before a new conversation's first message, the person may already set
    its system prompt and values; they are held here until it begins.
    """

    def __init__(
        self,
        window: MainWindow,
        history: History,
        settings: Callable[[], EngineSettings],
        model: Callable[[], ModelInfo | None],
    ) -> None:
        self.window = window
        self.history = history
        self._settings = settings
        self._model = model
        # The new conversation's, before its first message (None: the default).
        self._new_system_prompt: str | None = None
        self._new_overrides: dict[str, object] = {}
        window.conversation_settings_edited.connect(self.set)

    def overrides(self) -> dict[str, object]:
        """The sampling values the conversation on screen changed from the defaults."""
        conversation = self.history.conversation
        if conversation is None:
            return dict(self._new_overrides)
        return overrides_of(conversation.sampling)

    def sampling(self) -> Sampling:
        """How the conversation on screen samples: the defaults, with its own changes."""
        return apply_overrides(self._settings(), self.overrides()).sampling()

    def for_new_conversation(self) -> tuple[str, str]:
        """The system prompt and overrides (as stored) a conversation begins with."""
        system = self._new_system_prompt
        if system is None:
            system = self._settings().system_prompt
        return system, overrides_json(self._new_overrides)

    def forget_new(self) -> None:
        """A conversation began, or another is shown: what was held for a new one goes."""
        self._new_system_prompt = None
        self._new_overrides = {}
        self.show()

    def set(self, system_prompt: str, overrides: dict[str, object]) -> None:
        """This conversation's system prompt and sampling values, from its next
        turn on (a new conversation's, before its first message)."""
        if self.history.conversation is None:
            self._new_system_prompt = system_prompt
            self._new_overrides = dict(overrides)
        else:
            self.history.set_system_prompt(system_prompt)
            self.history.set_sampling(overrides_json(overrides))
        self.show()

    def show(self) -> None:
        """Shows the panel for the conversation on screen (or the next one)."""
        conversation = self.history.conversation
        model_name: str | None = None  # no conversation yet: the next one's
        if conversation is not None:
            system, model_name = conversation.system_prompt, conversation.model_name
        elif self._new_system_prompt is not None:
            system = self._new_system_prompt
        else:
            system = self._settings().system_prompt
        model = self._model()
        loaded = model.name if model is not None else ""
        self.window.show_conversation_settings(
            system, self.overrides(), self._settings(), model_name, loaded
        )
