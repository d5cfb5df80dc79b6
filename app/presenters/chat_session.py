"""The conversation on screen and the reply being written: the one owner of that reply.

`ChatSession` takes the person's messages, edits, regenerations and pages
through versions, asks the engine (through the supervisor) for replies,
and turns the reply's events into what the chat view shows and the store
keeps. While a reply is written its text lives here, in the turn, and
nowhere else: the chat view is shown each piece as it comes, and the
history reads the turn's text (`Reply.so_far`) at each checkpoint and at
the end.

The engine decides what the model sees (engine.overflow): a request carries
the conversation from where the model's view starts now and the room kept
for the reply, and the engine says where the view starts from then on.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QObject, Signal

from kvchat.app.core.formatting import format_stats
from kvchat.app.core.reply import REPLY_OVERHEAD, Reply, prompt_of, reply_room
from kvchat.app.core.store import Message, MessageState
from kvchat.app.presenters.conversation_settings import ConversationSettings
from kvchat.app.presenters.history import History, thinking_note
from kvchat.app.presenters.supervisor import EngineSupervisor
from kvchat.app.presenters.transcript import Transcript, footer_of
from kvchat.engine.protocol import ModelInfo, PromptEvaluated, TurnStats
from kvchat.ui.main_window import MainWindow


class ChatSession(QObject):
    """The conversation on screen, its branch, and the reply being written.

    Signals:
        reply_finished(object): TurnStats of a reply that ended (done or stopped).
        conversation_changed(): a message began a conversation, or one that was
            not sent took its conversation back: the list shows it at once, even
            while the disk refuses writes.
    """

    reply_finished = Signal(object)
    conversation_changed = Signal()

    def __init__(
        self,
        window: MainWindow,
        history: History,
        supervisor: EngineSupervisor,
        conversation_settings: ConversationSettings,
        transcript: Transcript,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.window = window
        self.history = history
        self.supervisor = supervisor
        self.conversation_settings = conversation_settings
        self.transcript = transcript
        self.turn: Reply | None = None
        engine = supervisor.engine
        engine.prompt_evaluated.connect(self._on_prompt_evaluated)
        engine.text_received.connect(self._on_text)
        engine.thinking_received.connect(self._on_thinking)
        engine.turn_finished.connect(self._on_turn_finished)
        engine.chat_failed.connect(self._on_chat_failed)
        supervisor.model_ready.connect(self._on_model_ready)
        supervisor.model_lost.connect(lambda how: self.end_reply(f"interrupted: {how}"))
        supervisor.switching.connect(lambda: self.end_reply("stopped: switching models"))
        window.message_submitted.connect(self.send)
        window.message_edited.connect(self.edit)
        window.chat_view.regenerate_requested.connect(self.regenerate)
        window.chat_view.continue_requested.connect(self.continue_reply)
        window.chat_view.version_requested.connect(self.page)
        window.stop_requested.connect(self.stop)

    @property
    def model(self) -> ModelInfo | None:
        return self.supervisor.model

    @property
    def busy(self) -> bool:
        return self.turn is not None

    # What the person does.

    def send(self, text: str) -> None:
        """Sends the person's message, committed to the store before it leaves."""
        if self.model is None or self.busy or not text.strip():
            return
        self.window.clear_error()
        self.window.accept_message()
        leaf_before = self.transcript.leaf()
        began = self.history.conversation is None
        system, overrides = self.conversation_settings.for_new_conversation()
        message = self.history.add_user(text, self.model, system, overrides)
        if began:
            # A conversation began: what was set for it belongs to it now.
            self.conversation_settings.forget_new()
        self.transcript.show_person(message)
        self.conversation_changed.emit()
        self._request("send", leaf_before=leaf_before)

    def edit(self, key: str, text: str) -> None:
        """Makes `text` a new version of the person's message with this key, and asks again."""
        index = self.transcript.index(key)
        if self.model is None or self.busy or not text.strip() or index is None:
            return
        self.window.clear_error()
        self.window.accept_message()
        leaf_before = self.transcript.leaf()
        self.window.chat_view.truncate_from(key)
        self.transcript.show_person(self.history.edit(index, text))
        self.conversation_changed.emit()
        self._request("edit", leaf_before=leaf_before)

    def regenerate(self, key: str) -> None:
        """Writes a new version of the last reply; the old one is kept."""
        index = self.transcript.index(key)
        if self.busy or index is None or index != len(self.history.messages) - 1:
            return
        if self.model is None:
            self.window.show_error("The model is not loaded yet: regenerate once it is.")
            return
        leaf_before = self.transcript.leaf()
        if index == 0 or self.history.messages[index - 1].role != "user":
            return
        self.window.clear_error()
        self.window.chat_view.truncate_from(key)
        self.history.branch_off(index)
        self._request("regenerate", leaf_before=leaf_before)

    def continue_reply(self, key: str) -> None:
        """Lets the last reply, cut at its token limit, go on where it stopped."""
        index = self.transcript.index(key)
        if self.busy or index is None or index != len(self.history.messages) - 1:
            return
        if self.model is None:
            self.window.show_error("The model is not loaded yet: continue once it is.")
            return
        previous = self.history.messages[index]
        self.window.clear_error()
        self.window.chat_view.resume_reply(key)
        self._request("continue", previous)

    def page(self, key: str, step: int) -> None:
        """Shows another version of the message with this key (`step` -1 or +1)
        and the branch under it. A reply being written goes on in its own branch."""
        if not self.history.page(key, step):
            return
        self.transcript.show_branch()
        self.prepare()

    def stop(self) -> None:
        """Stop, from the button or Esc: ends the reply, or the load under way."""
        if self.turn is not None and not self.turn.request_id:
            self._finish_reply(self.turn.answer, "stopped before it was sent")
        elif self.busy:
            self.supervisor.stop_reply()
        else:
            self.supervisor.stop_load()

    # The request.

    def _request(self, kind: str, previous: Message | None = None, leaf_before: str = "") -> None:
        """Sends the conversation from where the model's view starts, and starts the reply."""
        assert self.model is not None and self.history.conversation is not None
        model = self.model
        self.history.use_model(model)
        sampling = self.conversation_settings.sampling()
        turn = Reply(0, kind, [], previous, self.history.view_start, leaf_before)
        if kind == "continue":
            self.history.reopen_reply(turn.so_far)
        first = self._view_from()
        turn.sent = [m for m in self.history.messages[first:] if m.content or m.thinking]
        if kind != "continue":
            reply = self.history.begin_reply(turn.so_far)
            self.window.chat_view.begin_reply(
                model.name, reply.key, versions=self.history.versions(reply)
            )
        self.window.chat_view.set_reply_actions(regenerate=False, continue_=False)
        self.window.set_busy(True)
        prompt = prompt_of(self.history.conversation.system_prompt, turn.sent)
        turn.started_at = time.monotonic()
        self.turn = turn

        def ask() -> None:
            if self.turn is turn:  # not stopped, switched or ended meanwhile
                turn.request_id = self.supervisor.chat(
                    prompt,
                    sampling,
                    continue_last=kind == "continue",
                    reply_room=reply_room(sampling.max_tokens, model.n_ctx),
                )

        # The person's message is on disk before the request leaves (in the
        # rescue file when the disk refuses it): what the request sets off,
        # a crash included, cannot lose it. The GUI thread does not wait.
        self.history.saver.when_saved(ask)

    def _view_from(self) -> int:
        """Where the request's messages start: where the model's view starts
        now (it moves only forward, so the engine's cache of the prompt's
        beginning stays good), at a turn, and never past the message being
        answered (a view set on a longer branch, before an edit or a page)."""
        messages = self.history.messages
        turns = [i for i, m in enumerate(messages) if m.role == "user"]
        if not turns:
            return 0
        start = min(self.history.view_start, turns[-1])
        return next(t for t in turns if t >= start)

    def _on_prompt_evaluated(self, event: PromptEvaluated) -> None:
        """Where the engine started the model's view, and what the message cost."""
        turn = self.turn
        if turn is None or event.request_id != turn.request_id or self.model is None:
            return
        self._follow_view(turn, event.view_start)
        turn.measured = event.prompt_tokens - event.system_tokens - event.history_tokens
        if turn.kind != "continue" and turn.sent:
            last = self.transcript.index(turn.sent[-1].key)
            if last is not None:
                self.history.set_tokens(last, turn.measured, self.model.path)

    def _follow_view(self, turn: Reply, view_start: int) -> None:
        """Shows where the engine started the model's view (an index into what was sent)."""
        if 0 <= view_start < len(turn.sent):
            start = self.transcript.index(turn.sent[view_start].key)
            if start is not None and start != self.history.view_start:
                self.transcript.show_view_start(start)

    def _on_text(self, request_id: int, text: str) -> None:
        turn = self.turn
        if turn is None or request_id != turn.request_id:
            return
        turn.text += text
        if self.transcript.reply_on_screen():
            self.window.chat_view.append_reply(text)

    def _on_thinking(self, request_id: int, text: str) -> None:
        """A reasoning model's thinking, shown apart from its answer."""
        turn = self.turn
        if turn is None or request_id != turn.request_id:
            return
        turn.thinking += text
        turn.thinking_deltas += 1
        if self.transcript.reply_on_screen():
            self.window.chat_view.append_thinking(text)
            seconds = time.monotonic() - turn.started_at
            self.window.chat_view.set_thinking_note(
                f"Thinking… {turn.thinking_deltas} tokens, {seconds:.1f} s"
            )

    def end_reply(self, footer: str) -> None:
        """Ends a reply in flight where it got to (a switch, a crash, another
        conversation shown); nothing more of it will come."""
        if self.turn is not None:
            self._finish_reply(self.turn.answer, footer)

    def _finish_reply(
        self,
        text: str,
        footer: str,
        state: MessageState = "interrupted",
        stats: TurnStats | None = None,
    ) -> None:
        """Ends the reply on screen and in the store (`text` is all of it)."""
        turn = self.turn
        tokens = None
        if stats is not None and self.model is not None and turn is not None:
            tokens = stats.generated_tokens + REPLY_OVERHEAD
            if turn.kind == "continue":
                tokens += turn.measured
        model_path = self.model.path if tokens is not None and self.model else ""
        on_screen = self.transcript.reply_on_screen()
        reply = self.history.finish_reply(text, state, stats, tokens, model_path)
        if on_screen:
            if reply is not None and reply.thinking:
                self.window.chat_view.set_thinking_note(thinking_note(reply))
            self.window.chat_view.end_reply(footer)
        self._ended()

    def _ended(self) -> None:
        self.window.set_busy(False)
        self.turn = None
        self.transcript.offer_actions(self.busy)
        self.transcript.show_view_label()

    def _on_turn_finished(self, request_id: int, text: str, stats: TurnStats) -> None:
        turn = self.turn
        if turn is None or request_id != turn.request_id:
            return
        # A server that reports no usage says where the view started only here.
        self._follow_view(turn, stats.view_start)
        before = turn.previous.content if turn.previous is not None else ""
        state: MessageState = "interrupted" if stats.stop_reason == "cancelled" else "done"
        self._finish_reply(before + text, format_stats(stats), state, stats)
        if stats.generated_tokens > 1:
            self.window.show_speed(f"last reply {stats.decode_tokens_per_s:.1f} tok/s")
        self.reply_finished.emit(stats)

    def _on_chat_failed(self, request_id: int, message: str) -> None:
        turn = self.turn
        if turn is None or request_id != turn.request_id:
            return
        if turn.kind in ("send", "edit") and not turn.text:
            self._take_back(turn, message)
            return
        if turn.previous is not None and not turn.text:
            previous = turn.previous
            self._finish_reply(previous.content, footer_of(previous), previous.state)
        else:
            # The reply as far as it got is kept, marked with why it ended.
            self._finish_reply(turn.answer, f"interrupted: {message}")
        self.window.show_error(message)

    def _take_back(self, turn: Reply, reason: str) -> None:
        """Nothing came back for the person's message: it was not taken, so it
        leaves the conversation and returns to the composer, with the reason."""
        assert self.history.conversation is not None
        reply = self.history.reply
        assert reply is not None and reply.parent_key is not None
        user = self.history.tree.get(reply.parent_key)
        assert user is not None
        on_screen = self.transcript.reply_on_screen()
        if on_screen:
            self.window.chat_view.end_reply("")
            self.window.chat_view.truncate_from(user.key)
        self.history.take_back(user.key, turn.leaf_before)
        if on_screen and turn.kind == "edit":
            self.transcript.show_branch()  # the version that was edited comes back
        # A refusal changes nothing: the view starts where it did before.
        self.transcript.show_view_start(turn.view_before)
        if not self.history.messages:
            self.history.trash(self.history.conversation.key)
            self.window.chat_view.clear_conversation()
        self.conversation_changed.emit()  # the list shows the conversation as it is now
        self._ended()
        self.window.return_message(user.content)
        self.window.show_error(f"The message was not sent: {reason}")

    # What the window shows.

    def _on_model_ready(self, _info: ModelInfo) -> None:
        self.conversation_settings.show()
        self.prepare()

    def prepare(self) -> None:
        """Has the engine bring the open conversation's keys and values back
        while the person reads it, not when they send (engine.llama.runner.prepare)."""
        conversation = self.history.conversation
        if self.model is None or conversation is None or self.busy:
            return
        shown = self.history.messages[self.history.view_start :]
        sent = [m for m in shown if (m.content or m.thinking) and m.state != "streaming"]
        if sent:
            self.supervisor.engine.prepare(prompt_of(conversation.system_prompt, sent))
