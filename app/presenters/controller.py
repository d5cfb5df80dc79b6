"""The Controller ties what the person does in the window to the engine.

It keeps the conversation (multi-turn: every request carries as much of it
as fits the context, see app.context_window) in step with the store through
app.history, and turns engine events into what the window shows. The window,
the store and the engine never see each other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal

from kvchat.app.core import context_window
from kvchat.app.core.conversation_tree import ConversationTree
from kvchat.app.core.export import ExportError, to_json, to_markdown, write_text
from kvchat.app.core.formatting import describe_model, format_stats, model_label
from kvchat.app.core.load_marker import LoadMarker
from kvchat.app.core.settings import EngineSettings, apply_overrides
from kvchat.app.core.store import Message, MessageState, Opened
from kvchat.app.presenters.engine_client import EngineClient
from kvchat.app.presenters.history import (
    History,
    overrides_json,
    overrides_of,
    stats_of,
    thinking_note,
)
from kvchat.app.presenters.instance_lock import InstanceLock
from kvchat.app.presenters.memory_monitor import MemoryMonitor
from kvchat.engine.models import bundled_model_path, missing_model_message
from kvchat.engine.protocol import (
    ChatMessage,
    HostExited,
    LoadFailed,
    ModelInfo,
    PromptEvaluated,
    Sampling,
    TurnStats,
)
from kvchat.engine.remote_address import is_remote
from kvchat.ui.chat_view import MessageView
from kvchat.ui.conversation_list import ConversationItem
from kvchat.ui.main_window import MainWindow

# Seconds before each automatic restart of a crashed engine; after the last,
# the person is asked.
RESTART_DELAYS_S = (1.0, 2.0, 4.0)
# Lines of the engine's log shown when it crashes (llama.cpp's last words).
CRASH_LOG_LINES = 3
# Tokens a reply costs in the next prompt beyond those generated (the
# template's end-of-turn markers), counted generously.
REPLY_OVERHEAD = 4
# Before the system part of a prompt was measured: what a template may add to it.
TEMPLATE_PREAMBLE = 64


def _prompt(system: str, messages: list[Message]) -> list[ChatMessage]:
    """What the model is sent: the system prompt, then the messages with their
    thinking (the model's template decides whether earlier thinking stays)."""
    prompt = [ChatMessage("system", system)] if system else []
    return prompt + [ChatMessage(m.role, m.content, thinking=m.thinking) for m in messages]


@dataclass
class _Turn:
    """The request in flight: what kind, and what the model was shown."""

    request_id: int
    kind: str  # "send", "edit", "regenerate" or "continue"
    sent: list[Message]  # the messages in the model's view
    previous: Message | None = None  # a continued reply, as it was
    view_before: int = 0  # where the model's view started before this request
    leaf_before: str = ""  # the branch on screen before this request, by its last message
    text: str = ""
    thinking: str = ""
    thinking_deltas: int = 0  # thinking text as it came: about one piece a token
    started_at: float = 0.0
    measured: int = 0  # tokens of the prompt's last message, once the engine says

    @property
    def answer(self) -> str:
        """The reply's answer so far, a continued reply's earlier text included."""
        return (self.previous.content if self.previous is not None else "") + self.text

    @property
    def all_thinking(self) -> str:
        return (self.previous.thinking if self.previous is not None else "") + self.thinking


class Controller(QObject):
    """Runs the conversation between the window and the engine.

    Signals:
        reply_finished(object): TurnStats of a reply that ended (done or stopped).
        conversation_shown(str): another conversation is on screen (its key; "" for
            a new one not started yet).
    """

    reply_finished = Signal(object)
    conversation_shown = Signal(str)

    def __init__(
        self,
        window: MainWindow,
        engine: EngineClient,
        settings: EngineSettings | None = None,
        *,
        history: History,
        lock: InstanceLock | None = None,
        marker: LoadMarker | None = None,
    ) -> None:
        super().__init__(window)
        self.window = window
        self.engine = engine
        self._settings = settings or EngineSettings()
        self.model: ModelInfo | None = None
        self.history = history
        self._lock = lock
        self._turn: _Turn | None = None
        self._search = ""
        # Learned per model: tokens per byte of text, and the system part's tokens.
        self._tokens_per_byte: dict[str, float] = {}
        self._system_tokens: dict[tuple[str, str], int] = {}
        self._loading_path: str | None = None
        self._request_id: int | None = None
        self._marker = marker
        # The model and settings that loaded last: what a crashed engine restarts with.
        self._last_good: tuple[str, EngineSettings] | None = None
        self._restarts = 0
        self.restart_delays_s = RESTART_DELAYS_S
        self._restart_target: tuple[str, EngineSettings] | None = None
        self._restart_timer = QTimer(self)
        self._restart_timer.setSingleShot(True)
        self._restart_timer.timeout.connect(self._restart)
        # What to load again if a switch to another model fails.
        self._fallback: tuple[str, EngineSettings] | None = None
        self._load_stopped = False  # the person pressed Stop during the load
        self._log_note_shown = ""
        self._load_notice_shown = ""  # the model the conversation on screen was told of
        self._shown_before_delete: str | None = None  # deleted while on screen: Undo shows it
        # The system prompt the person set for the new conversation before its
        # first message (None: the default from settings).
        self._new_system_prompt: str | None = None
        self._new_overrides: dict[str, object] = {}
        self.memory_monitor = MemoryMonitor(window.memory_panel, engine)
        # Set by whoever builds the window (app.gui), which owns the data dir.
        self.settings_flow: QObject | None = None

        window.message_submitted.connect(self.send)
        window.message_edited.connect(self.edit)
        window.export_requested.connect(self.export)
        window.chat_view.regenerate_requested.connect(self.regenerate)
        window.chat_view.continue_requested.connect(self.continue_reply)
        window.chat_view.version_requested.connect(self.page)
        listing = window.conversation_list
        listing.new_requested.connect(self.new_conversation)
        listing.chosen.connect(self.open_conversation)
        listing.rename_requested.connect(self.rename_conversation)
        listing.delete_requested.connect(self.delete_conversation)
        listing.undo_requested.connect(self.restore_conversation)
        listing.search_changed.connect(self.search_conversations)
        history.saver.save_failed.connect(window.show_storage_problem)
        history.saver.saved_again.connect(self._on_saved_again)
        history.saver.store_opened.connect(self._on_store_opened)
        if history.saver.problem:
            window.show_storage_problem(history.saver.problem)
        window.stop_requested.connect(self.stop)
        window.conversation_settings_edited.connect(self.set_conversation_settings)
        window.conversation_model_requested.connect(self.load_conversation_model)
        self._show_conversation_settings()
        window.restart_requested.connect(self.restart_engine)
        window.model_file_chosen.connect(self.switch_model)
        window.closing.connect(self.shutdown)
        engine.host_started.connect(self._on_host_started)
        engine.load_progress.connect(window.set_loading_progress)
        engine.model_loaded.connect(self._on_model_loaded)
        engine.load_failed.connect(self._on_load_failed)
        engine.prompt_evaluated.connect(self._on_prompt_evaluated)
        engine.text_received.connect(self._on_text)
        engine.thinking_received.connect(self._on_thinking)
        engine.turn_finished.connect(self._on_turn_finished)
        engine.chat_failed.connect(self._on_chat_failed)
        engine.host_exited.connect(self._on_host_exited)

    @property
    def settings(self) -> EngineSettings:
        """The settings in use: how models load, and the defaults a conversation
        samples with where it did not change them."""
        return self._settings

    @settings.setter
    def settings(self, settings: EngineSettings) -> None:
        self._settings = settings
        self._show_conversation_settings()

    @property
    def busy(self) -> bool:
        return self._request_id is not None

    @property
    def conversation(self) -> list[ChatMessage]:
        """The conversation so far, as the model is sent it when it all fits."""
        return _prompt("", [m for m in self.history.messages if m.content or m.thinking])

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

    @property
    def loading_path(self) -> str | None:
        """The model being loaded now, with `settings`; None when no load runs."""
        return self._loading_path

    def load_model(self, path: str) -> None:
        if self.busy:
            self.stop()
        self._clear_error()
        self._begin_load(path)
        self.engine.load(self.settings.load_config(path))

    def _begin_load(self, path: str) -> None:
        """Shows the load and notes it in the marker before the engine starts it."""
        self._restart_timer.stop()
        self._loading_path = path
        if self._marker is not None:
            self._marker.begin(path)
        self.window.show_loading(model_label(path))

    def switch_model(self, path: str, settings: EngineSettings | None = None) -> None:
        """Loads another model, or the same with other settings, in a fresh engine.

        A reply in flight is stopped and kept as far as it got; the
        conversation carries over. If the new model fails to load, the
        previous one comes back.
        """
        if self._turn is not None:
            self._finish_reply(self._turn.answer, "stopped: switching models")
        if self.model is not None:
            self._fallback = (self.model.path, self.settings)
        if settings is not None:
            self.settings = settings
        self.model = None
        self._clear_error()
        self._begin_load(path)
        self.engine.switch(self.settings.load_config(path))

    def send(self, text: str) -> None:
        """Sends the person's message, committed to the store before it leaves."""
        if self.model is None or self.busy or not text.strip():
            return
        self._clear_error()
        self.window.accept_message()
        system = self._new_system_prompt
        if system is None:
            system = self.settings.system_prompt
        leaf_before = self._leaf()
        began = self.history.conversation is None
        message = self.history.add_user(
            text, self.model, system, overrides_json(self._new_overrides)
        )
        if began:
            # A conversation began: they belong to it now, and the panel shows it.
            self._new_system_prompt = None
            self._new_overrides = {}
            self._show_conversation_settings()
        self._show_person(message)
        self._refresh_list()
        self._request("send", leaf_before=leaf_before)

    def edit(self, key: str, text: str) -> None:
        """Replaces the person's message with this key by `text`, drops the
        replies after it, and asks again."""
        index = self._index(key)
        if self.model is None or self.busy or not text.strip() or index is None:
            return
        self._clear_error()
        self.window.accept_message()
        leaf_before = self._leaf()
        self.window.chat_view.truncate_from(key)
        self._show_person(self.history.edit(index, text))
        self._refresh_list()
        self._request("edit", leaf_before=leaf_before)

    def regenerate(self, key: str) -> None:
        """Writes a new version of the last reply; the old one is kept."""
        index = self._index(key)
        if self.busy or index is None or index != len(self.history.messages) - 1:
            return
        if self.model is None:
            self.window.show_error("The model is not loaded yet: regenerate once it is.")
            return
        leaf_before = self._leaf()
        if index == 0 or self.history.messages[index - 1].role != "user":
            return
        self._clear_error()
        self.window.chat_view.truncate_from(key)
        self.history.branch_off(index)
        self._request("regenerate", leaf_before=leaf_before)

    def continue_reply(self, key: str) -> None:
        """Lets the last reply, cut at its token limit, go on where it stopped."""
        index = self._index(key)
        if self.busy or index is None or index != len(self.history.messages) - 1:
            return
        if self.model is None:
            self.window.show_error("The model is not loaded yet: continue once it is.")
            return
        previous = self.history.messages[index]
        self._clear_error()
        self.window.chat_view.resume_reply(key)
        self.history.reopen_reply()
        self._request("continue", previous)

    def page(self, key: str, step: int) -> None:
        """Shows another version of the message with this key (`step` -1 or +1)
        and the branch under it. A reply being written goes on in its own branch."""
        if not self.history.page(key, step):
            return
        self._show_history()
        self._prepare()

    def _show_person(self, message: Message) -> None:
        """The person's message as stored (the store may have replaced what
        UTF-8 cannot hold), with its versions."""
        self.window.chat_view.add_message(
            "You",
            message.content,
            from_person=True,
            key=message.key,
            versions=self.history.versions(message),
        )

    def _index(self, key: str) -> int | None:
        return next((i for i, m in enumerate(self.history.messages) if m.key == key), None)

    def _leaf(self) -> str:
        return self.history.messages[-1].key if self.history.messages else ""

    def _reply_on_screen(self) -> bool:
        reply = self.history.reply
        return reply is not None and self._index(reply.key) is not None

    def _clear_error(self) -> None:
        """Clears the engine's banner; a saving problem has its own, which stays."""
        self.window.clear_error()

    def _cost(self, message: Message, ratio: float) -> int:
        assert self.model is not None
        if message.tokens is not None and message.tokens_model == self.model.path:
            return message.tokens
        return context_window.estimate_tokens(message.content, ratio) if message.content else 0

    def _request(self, kind: str, previous: Message | None = None, leaf_before: str = "") -> None:
        """Sends the conversation, as much of it as fits, and starts the reply."""
        assert self.model is not None and self.history.conversation is not None
        model = self.model
        self.history.use_model(model)
        system = self.history.conversation.system_prompt
        messages = list(self.history.messages)
        ratio = self._tokens_per_byte.get(model.path, context_window.FIRST_TOKENS_PER_BYTE)
        fixed = self._system_tokens.get((model.path, system))
        if fixed is None:
            fixed = context_window.estimate_tokens(system, ratio) + TEMPLATE_PREAMBLE
        if model.n_ctx:
            first = context_window.first_in_view(
                [self._cost(m, ratio) for m in messages],
                [m.role == "user" for m in messages],
                fixed,
                model.n_ctx,
                context_window.reply_budget(self._sampling().max_tokens, model.n_ctx),
                self.history.view_start,
            )
        else:
            # A server that does not say its context: it decides what fits.
            first = self.history.view_start
        view_before = self.history.view_start
        self._show_view_start(first)
        sent = [m for m in messages[first:] if m.content or m.thinking]
        if kind != "continue":
            reply = self.history.begin_reply()
            self.window.chat_view.begin_reply(
                model.name, reply.key, versions=self.history.versions(reply)
            )
        self.window.chat_view.set_reply_actions(regenerate=False, continue_=False)
        self.window.set_busy(True)
        self._request_id = self.engine.chat(
            _prompt(system, sent), self._sampling(), continue_last=kind == "continue"
        )
        self._turn = _Turn(self._request_id, kind, sent, previous, view_before, leaf_before)
        self._turn.started_at = time.monotonic()

    def _overrides(self) -> dict[str, object]:
        """The sampling values the conversation on screen changed from the defaults."""
        conversation = self.history.conversation
        if conversation is None:
            return dict(self._new_overrides)
        return overrides_of(conversation.sampling)

    def _sampling(self) -> Sampling:
        """How the conversation on screen samples: the defaults, with its own changes."""
        return apply_overrides(self.settings, self._overrides()).sampling()

    def _show_view_start(self, first: int) -> None:
        self.history.set_view_start(first)
        self.window.chat_view.set_view_start(first)
        self._show_view_label()

    def _show_view_label(self) -> None:
        first = self.history.view_start
        count = len(self.history.messages)
        note = f"the model sees messages {first + 1}–{count} of {count}" if first else ""
        self.window.show_model_view(note)
        self.memory_monitor.set_model_view(
            f"The first {first} messages have left the model's view: {note}; "
            "the system prompt stays."
            if first
            else ""
        )

    def stop(self) -> None:
        """Stop, from the button or Esc: ends the reply, or the load under way."""
        if self._request_id is not None:
            self.engine.cancel(self._request_id)
        elif self.engine.loading:
            self._load_stopped = True
            self.engine.stop_load()

    def shutdown(self) -> None:
        self._restart_timer.stop()
        if self._request_id is not None:
            self.engine.cancel(self._request_id)
        self.engine.shutdown()
        unfinished = self._marker.read() if self._marker is not None else None
        if self._marker is not None and unfinished is not None and not unfinished.crash:
            # A load the person closed the window on did not crash anything.
            self._marker.finish()
        self.history.close()
        if self._lock is not None:
            self._lock.release()

    def _on_host_started(self, _event: object) -> None:
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
        self._loading_path = None
        self._fallback = None
        self._last_good = (info.path, self.settings)
        if self._marker is not None:
            self._marker.finish()
        self._show_model(info)
        # Once per conversation shown: a reload of the same model adds nothing to read.
        described = describe_model(info)
        if described != self._load_notice_shown:
            self._load_notice_shown = described
            self.window.chat_view.add_notice(f"Loaded {described}")
        self._prepare()

    def _on_load_failed(self, failure: LoadFailed) -> None:
        self._loading_path = None
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
            self._begin_load(path)
            self.engine.load(self.settings.load_config(path))
            self.window.show_error(f"{message}. Loading {model_label(path)} again.")
            return
        if self.model is None:
            self.window.show_no_model()
        else:
            self._show_model(self.model)
        self.window.show_error(message)

    def _show_model(self, info: ModelInfo) -> None:
        context = f"context {info.n_ctx} tokens" if info.n_ctx else "context not reported"
        self.window.show_model(info.name, describe_model(info), context)
        self.window.select_model_choice(info.path, info.name if is_remote(info.path) else "")
        self._show_conversation_settings()

    def _on_prompt_evaluated(self, event: PromptEvaluated) -> None:
        """Learns what the prompt's parts cost, from the engine's own counts."""
        turn = self._turn
        if turn is None or event.request_id != turn.request_id or self.model is None:
            return
        if is_remote(self.model.path):
            return  # a server's counts do not split the prompt into its parts
        assert self.history.conversation is not None
        path = self.model.path
        self._system_tokens[(path, self.history.conversation.system_prompt)] = event.system_tokens
        learned = context_window.learn_tokens_per_byte(
            event.prompt_tokens, event.system_tokens, [m.content for m in turn.sent]
        )
        if learned is not None:
            self._tokens_per_byte[path] = learned
        turn.measured = event.prompt_tokens - event.system_tokens - event.history_tokens
        if turn.kind != "continue" and turn.sent:
            last = self._index(turn.sent[-1].key)
            if last is not None:
                self.history.set_tokens(last, turn.measured, path)

    def _on_text(self, request_id: int, text: str) -> None:
        turn = self._turn
        if turn is None or request_id != turn.request_id:
            return
        turn.text += text
        if self._reply_on_screen():
            self.window.chat_view.append_reply(text)
        self.history.reply_grew(turn.answer, turn.all_thinking)

    def _on_thinking(self, request_id: int, text: str) -> None:
        """A reasoning model's thinking, shown apart from its answer."""
        turn = self._turn
        if turn is None or request_id != turn.request_id:
            return
        turn.thinking += text
        turn.thinking_deltas += 1
        if self._reply_on_screen():
            self.window.chat_view.append_thinking(text)
            seconds = time.monotonic() - turn.started_at
            self.window.chat_view.set_thinking_note(
                f"Thinking… {turn.thinking_deltas} tokens, {seconds:.1f} s"
            )
        self.history.reply_grew(turn.answer, turn.all_thinking)

    def _finish_reply(
        self,
        text: str,
        footer: str,
        state: MessageState = "interrupted",
        stats: TurnStats | None = None,
    ) -> None:
        """Ends the reply on screen and in the store (`text` is all of it)."""
        turn = self._turn
        tokens = None
        if stats is not None and self.model is not None and turn is not None:
            tokens = stats.generated_tokens + REPLY_OVERHEAD
            if turn.kind == "continue":
                tokens += turn.measured
        model_path = self.model.path if tokens is not None and self.model else ""
        on_screen = self._reply_on_screen()
        reply = self.history.finish_reply(text, state, stats, tokens, model_path)
        if on_screen:
            if reply is not None and reply.thinking:
                self.window.chat_view.set_thinking_note(thinking_note(reply))
            self.window.chat_view.end_reply(footer)
        self.window.set_busy(False)
        self._request_id = None
        self._turn = None
        self._offer_actions()
        self._show_view_label()

    def _on_turn_finished(self, request_id: int, text: str, stats: TurnStats) -> None:
        turn = self._turn
        if turn is None or request_id != turn.request_id:
            return
        before = turn.previous.content if turn.previous is not None else ""
        state: MessageState = "interrupted" if stats.stop_reason == "cancelled" else "done"
        self._restarts = 0  # the engine works again: a later crash starts a new count
        self._finish_reply(before + text, format_stats(stats), state, stats)
        if stats.generated_tokens > 1:
            self.window.show_speed(f"last reply {stats.decode_tokens_per_s:.1f} tok/s")
        self.reply_finished.emit(stats)

    def _on_chat_failed(self, request_id: int, message: str) -> None:
        turn = self._turn
        if turn is None or request_id != turn.request_id:
            return
        if turn.kind in ("send", "edit") and not turn.text:
            self._take_back(message)
            return
        if turn.previous is not None and not turn.text:
            previous = turn.previous
            self._finish_reply(previous.content, self._footer(previous), previous.state)
        else:
            # The reply as far as it got is kept, marked with why it ended.
            self._finish_reply(turn.answer, f"interrupted: {message}")
        self.window.show_error(message)

    def _take_back(self, reason: str) -> None:
        """Nothing came back for the person's message: it was not taken, so it
        leaves the conversation and returns to the composer, with the reason."""
        turn = self._turn
        assert self.history.conversation is not None and turn is not None
        reply = self.history.reply
        assert reply is not None and reply.parent_key is not None
        user = self.history.tree.get(reply.parent_key)
        assert user is not None
        on_screen = self._reply_on_screen()
        if on_screen:
            self.window.chat_view.end_reply("")
            self.window.chat_view.truncate_from(user.key)
        self.history.take_back(user.key, turn.leaf_before)
        if on_screen and turn.kind == "edit":
            self._show_history()  # the version that was edited comes back
        # A refusal changes nothing: the view starts where it did before.
        self._show_view_start(turn.view_before)
        if self.model is not None:
            # The engine may have refused a prompt that an estimate said fits:
            # estimate from the upper bound again until it measures anew.
            self._tokens_per_byte.pop(self.model.path, None)
        if not self.history.messages:
            self.history.trash(self.history.conversation.key)
            self.window.chat_view.clear_conversation()
            self._refresh_list()
        self.window.set_busy(False)
        self._request_id = None
        self._turn = None
        self._offer_actions()
        self._show_view_label()
        self.window.return_message(user.content)
        self.window.show_error(f"The message was not sent: {reason}")

    def _footer(self, message: Message) -> str:
        """The line under a stored reply: its figures, or how it ended."""
        stats = stats_of(message)
        if stats is not None:
            return format_stats(stats)
        return "interrupted" if message.state != "done" else ""

    def _offer_actions(self) -> None:
        last = self.history.messages[-1] if self.history.messages else None
        if self.busy or last is None or last.role != "assistant":
            self.window.chat_view.set_reply_actions(regenerate=False, continue_=False)
            return
        stats = stats_of(last)
        can_continue = stats is not None and stats.stop_reason == "length"
        self.window.chat_view.set_reply_actions(regenerate=True, continue_=can_continue)

    # Conversations.

    def _stop_for_switch(self) -> None:
        """A reply in flight ends where it got to, before another conversation shows."""
        if self._request_id is not None and self._turn is not None:
            self.engine.cancel(self._request_id)
            self._finish_reply(self._turn.answer, "stopped")

    def new_conversation(self) -> None:
        """Clears the chat; the next message starts a new conversation."""
        self._stop_for_switch()
        self.history.new()
        self.window.cancel_edit()
        self.window.chat_view.clear_conversation()
        self.window.show_model_view("")
        self.memory_monitor.set_model_view("")
        self.window.conversation_list.select(None)
        self._load_notice_shown = ""
        self._new_system_prompt = None
        self._new_overrides = {}
        self._show_conversation_settings()
        self.conversation_shown.emit("")
        self.window.focus_composer()

    def open_conversation(self, key: str) -> None:
        if self.history.conversation is not None and self.history.conversation.key == key:
            return
        self._stop_for_switch()
        if not self.history.open(key):
            self.window.show_error("That conversation could not be opened: it is gone.")
            self._refresh_list()
            return
        self.window.cancel_edit()
        self._show_history()
        self._load_notice_shown = ""
        self._show_conversation_settings()
        self.conversation_shown.emit(key)
        self.window.focus_composer()
        self._prepare()

    def _prepare(self) -> None:
        """Has the engine bring the open conversation's keys and values back
        while the person reads it, not when they send (engine.runner.prepare)."""
        conversation = self.history.conversation
        if self.model is None or conversation is None or self.busy:
            return
        shown = self.history.messages[self.history.view_start :]
        sent = [m for m in shown if (m.content or m.thinking) and m.state != "streaming"]
        if sent:
            self.engine.prepare(_prompt(conversation.system_prompt, sent))

    def _show_history(self) -> None:
        conversation = self.history.conversation
        assert conversation is not None
        heading = conversation.model_name or "Model"
        reply = self.history.reply
        views = [
            MessageView(
                m.key,
                "You" if m.role == "user" else heading,
                m.content,
                m.role == "user",
                "" if m.role == "user" else self._footer(m),
                versions=self.history.versions(m),
                thinking=m.thinking,
                thinking_note=thinking_note(m) if m.thinking else "",
            )
            for m in self.history.messages
            if reply is None or m.key != reply.key
        ]
        self.window.chat_view.show_conversation(views, conversation.view_start)
        if reply is not None and self._reply_on_screen():
            # The reply being written is on this branch: it goes on growing here.
            view = self.window.chat_view
            view.begin_reply(heading, reply.key, versions=self.history.versions(reply))
            if reply.thinking:
                view.append_thinking(reply.thinking)
                view.set_thinking_note(thinking_note(reply))
            if reply.content:
                view.append_reply(reply.content)
        self._show_view_label()
        self._offer_actions()
        self.window.conversation_list.select(conversation.key)
        if self.model is not None and conversation.model_path != self.model.path:
            self.window.chat_view.add_notice(
                f"This conversation was held with {conversation.model_name}; "
                f"replies now come from {self.model.name}."
            )

    def open_latest(self) -> None:
        """Shows the conversation with the newest activity, if there is one."""
        self._refresh_list()
        latest = self.history.conversations()
        if latest:
            self.open_conversation(latest[0].key)

    def set_conversation_settings(self, system_prompt: str, overrides: dict[str, object]) -> None:
        """This conversation's system prompt and sampling values, from its next
        turn on (a new conversation's, before its first message)."""
        if self.history.conversation is None:
            self._new_system_prompt = system_prompt
            self._new_overrides = dict(overrides)
        else:
            self.history.set_system_prompt(system_prompt)
            self.history.set_sampling(overrides_json(overrides))
        self._show_conversation_settings()

    def _show_conversation_settings(self) -> None:
        conversation = self.history.conversation
        model_name: str | None = None  # no conversation yet: the next one's
        if conversation is not None:
            system, model_name = conversation.system_prompt, conversation.model_name
        elif self._new_system_prompt is not None:
            system = self._new_system_prompt
        else:
            system = self.settings.system_prompt
        loaded = self.model.name if self.model is not None else ""
        self.window.show_conversation_settings(
            system, self._overrides(), self.settings, model_name, loaded
        )

    def load_conversation_model(self) -> None:
        """Loads the model the conversation on screen was held with."""
        conversation = self.history.conversation
        if conversation is not None and conversation.model_path:
            self.switch_model(conversation.model_path)

    def rename_conversation(self, key: str, title: str) -> None:
        self.history.rename(key, title)
        self._refresh_list()

    def delete_conversation(self, key: str) -> None:
        """Deletes a conversation; the list offers to undo it.

        The one on screen gives way to its neighbour in the list (a new
        conversation if it was the only one), and Undo brings it back on screen.
        """
        current = self.history.conversation
        listed = self.history.conversations()
        keys = [c.key for c in listed]
        title = next((c.title for c in listed if c.key == key), "")
        was_shown = current is not None and current.key == key
        self._shown_before_delete = key if was_shown else None
        if was_shown:
            index = keys.index(key) if key in keys else 0
            # The one below it in the list, else the one above, else a new one.
            neighbours = keys[index + 1 : index + 2] or keys[max(index - 1, 0) : index]
            self._stop_for_switch()
            self.history.trash(key)
            if neighbours:
                self.open_conversation(neighbours[0])
            else:
                self.new_conversation()
        else:
            self.history.trash(key)
        self._refresh_list()
        self.window.conversation_list.offer_undo(key, title)

    def restore_conversation(self, key: str) -> None:
        self.history.restore(key)
        self._refresh_list()
        if key == self._shown_before_delete:
            self._shown_before_delete = None
            self.open_conversation(key)

    def search_conversations(self, text: str) -> None:
        self._search = text
        self._refresh_list()

    def _refresh_list(self) -> None:
        items = [
            ConversationItem(
                c.key,
                c.title,
                f"{c.model_name} · last active "
                f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(c.updated_at))}",
            )
            for c in self.history.conversations(self._search)
        ]
        current = self.history.conversation
        self.window.conversation_list.set_conversations(items, current.key if current else None)

    def export(self, key: str, path: str, kind: str) -> None:
        """Writes a conversation to `path` as "markdown" or "json"."""
        current = self.history.conversation
        store = self.history.saver.store
        if current is not None and current.key == key:
            conversation, tree = current, self.history.tree
        elif store is not None and (found := store.conversation(key)) is not None:
            conversation, tree = found, ConversationTree(store.messages(key))
        else:
            self.window.show_error("That conversation could not be exported: it is gone.")
            return
        if kind == "json":
            text = to_json(conversation, tree.all())
        else:
            # The branch on screen (or last shown), as the person reads it.
            branch = tree.branch(conversation.leaf_key)
            footers = ["" if m.role == "user" else self._footer(m) for m in branch]
            text = to_markdown(conversation, branch, footers)
        try:
            write_text(Path(path), text)
        except ExportError as exc:
            self.window.show_error(str(exc))
            return
        self.window.chat_view.add_notice(f"Exported “{conversation.title}” to {path}")

    def _on_saved_again(self) -> None:
        self.window.clear_storage_problem()
        self.window.chat_view.add_notice("Saving works again: every message is on disk.")

    def _on_store_opened(self, opened: Opened) -> None:
        if opened.notice:
            self.window.chat_view.add_notice(opened.notice)
        self._refresh_list()

    def _on_host_exited(self, event: HostExited) -> None:
        """The engine ended without being asked: keep what was said, say what
        happened, and start it again after a pause, a few times, then ask."""
        if self._turn is not None:
            self._finish_reply(self._turn.answer, f"interrupted: {event.description}")
        self.window.chat_view.add_notice(self._crash_report(event))
        said = event.description[:1].upper() + event.description[1:] + "."
        crashed_load = (self._loading_path, self.settings) if self._loading_path else None
        self._loading_path = None
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
            self.window.offer_restart(f"{said} {name} was not loaded again.")
            return
        if self._restarts >= len(self.restart_delays_s):
            self.window.offer_restart(
                f"{said} It crashed {self._restarts + 1} times in a row, "
                "so kvchat stopped restarting it."
            )
            return
        delay = self.restart_delays_s[self._restarts]
        self._restarts += 1
        self._restart_timer.start(round(delay * 1000))
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
