"""The reply being written, and what its request carries."""

from __future__ import annotations

from dataclasses import dataclass

from kvchat.app.core.store import Message
from kvchat.engine.protocol import ChatMessage

# Tokens a reply costs in the next prompt beyond those generated (the
# template's end-of-turn markers), counted generously.
REPLY_OVERHEAD = 4


def prompt_of(system: str, messages: list[Message]) -> list[ChatMessage]:
    """What the model is sent: the system prompt, then the messages with their
    thinking (the model's template decides whether earlier thinking stays)."""
    prompt = [ChatMessage("system", system)] if system else []
    return prompt + [ChatMessage(m.role, m.content, thinking=m.thinking) for m in messages]


def reply_room(max_tokens: int, n_ctx: int) -> int:
    """The room kept for the reply: its token limit, but never more than a
    quarter of the context (so a long history still gets most of it). A
    server that does not say its context gets the limit."""
    return max(1, min(max_tokens, n_ctx // 4)) if n_ctx else max_tokens


@dataclass
class Reply:
    """The reply being written, and the request it answers: what kind, and what
    the model was sent. While it is written, its text lives here only."""

    request_id: int  # 0 until the request is sent (once the message is on disk)
    kind: str  # "send", "edit", "regenerate" or "continue"
    sent: list[Message]  # the messages sent, from where the view started
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

    def so_far(self) -> tuple[str, str]:
        """The answer and the thinking so far: what a checkpoint writes."""
        return self.answer, self.all_thinking
