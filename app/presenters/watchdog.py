"""Ending an engine that stopped answering: part of the supervisor's job.

An engine host checks for a cancel between tokens and between prefill
batches, and reports a load's progress tensor by tensor, so silence past
these bounds means it hangs (a driver stuck, a native loop). The watchdog
kills it then; the engine's exit says why, and the supervisor restarts it
as after a crash.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QTimer

from kvchat.app.presenters.engine_client import EngineClient

# How long a cancelled request may take to end before its engine counts as
# hung: it only has to cover one batch of a large model on a CPU.
ANSWER_TIMEOUT_S = 15.0
# How long a load may go without reporting progress before it counts as hung.
# The longest silence is while a large context is allocated and the first
# graph reserved.
LOAD_STALL_S = 120.0


class HungEngineWatchdog(QObject):
    """Kills the engine when a cancelled reply does not end within
    `answer_timeout_s`, or a load makes no progress for `load_stall_s` (or
    does not stop within `answer_timeout_s` of being asked to)."""

    def __init__(self, engine: EngineClient, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine = engine
        self.answer_timeout_s = ANSWER_TIMEOUT_S
        self.load_stall_s = LOAD_STALL_S
        self._cancelled: set[int] = set()  # requests asked to stop, not ended yet
        self._answer = QTimer(self)
        self._answer.setSingleShot(True)
        self._answer.timeout.connect(self._end_hung_reply)
        self._loading = False
        self._load_stopped = False
        self._load = QTimer(self)
        self._load.setSingleShot(True)
        self._load.timeout.connect(self._end_stalled_load)
        engine.load_progress.connect(self._on_progress)
        engine.model_loaded.connect(lambda _info: self._load_ended())
        engine.load_failed.connect(lambda _failure: self._load_ended())
        engine.turn_finished.connect(lambda request_id, *_: self._reply_ended(request_id))
        engine.chat_failed.connect(lambda request_id, _message: self._reply_ended(request_id))
        engine.host_exited.connect(lambda _event: self.disarm())

    def load_started(self) -> None:
        """A load was sent to a fresh or a running engine."""
        self.disarm()
        self._loading = True
        self._load.start(round(self.load_stall_s * 1000))

    def load_stop_asked(self) -> None:
        if self._loading:
            self._load_stopped = True
            self._load.start(round(self.answer_timeout_s * 1000))

    def cancel_asked(self, request_id: int) -> None:
        self._cancelled.add(request_id)
        if not self._answer.isActive():
            self._answer.start(round(self.answer_timeout_s * 1000))

    def disarm(self) -> None:
        """Nothing is awaited any more (the engine ended, or is being let go of)."""
        self._cancelled.clear()
        self._answer.stop()
        self._load_ended()

    def _on_progress(self, _fraction: float) -> None:
        if self._loading and not self._load_stopped:
            self._load.start(round(self.load_stall_s * 1000))

    def _load_ended(self) -> None:
        self._loading = False
        self._load_stopped = False
        self._load.stop()

    def _reply_ended(self, request_id: int) -> None:
        self._cancelled.discard(request_id)
        if not self._cancelled:
            self._answer.stop()

    def _end_hung_reply(self) -> None:
        if self._cancelled:
            self.engine.kill(
                f"the engine did not stop within {self.answer_timeout_s:g} s "
                "of being asked to, so kvchat ended it"
            )

    def _end_stalled_load(self) -> None:
        if not self._loading:
            return
        if self._load_stopped:
            reason = (
                f"the model load did not stop within {self.answer_timeout_s:g} s of being asked to"
            )
        else:
            reason = f"the model load made no progress for {self.load_stall_s:g} s"
        self.engine.kill(f"{reason}, so kvchat ended it")
