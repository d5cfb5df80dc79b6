"""Which of a conversation's messages the model sees once it outgrows the context.

The engine decides, with exact token counts: the caller says how much room
to keep for the reply (`Chat.reply_room`) and whether old turns may leave
(`Chat.drop_oldest`), and the engine reports where the model's view starts
(`PromptEvaluated.view_start`). The policy:

- the system prompt always stays;
- the oldest turns leave, whole turns at a time (a turn starts at one of the
  person's messages), never the turn being answered;
- once something must leave, the view starts further on than strictly
  needed, by a slack of an eighth of the context: every move of the start
  changes the prompt's beginning, and the whole prompt must then be
  evaluated again, so it should move seldom (the policy keeps no state: the
  view stays put because the caller sends the conversation from where the
  view started, and the slack leaves that room to grow);
- if the last turn alone does not leave the room asked for, the model sees
  that turn and the reply gets what room is left; if it does not fit at all,
  the engine refuses the request, saying both numbers.

The implementations count differently (the runner renders and tokenizes
with the model's template, the scripted engine counts words), and share
this policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kvchat.engine.protocol import ChatMessage

# Once turns must leave, this share of the context is freed beyond the need.
SLACK_FRACTION = 8


def turn_starts(messages: Sequence[ChatMessage]) -> list[int]:
    """Where each turn starts, as indices among the messages that are not the
    system prompt: at each of the person's messages (the first message too,
    whoever wrote it, so that a view can always start at the beginning)."""
    turns = [m for m in messages if m.role != "system"]
    return [i for i, m in enumerate(turns) if i == 0 or m.role == "user"]


def in_view(messages: Sequence[ChatMessage], start: int) -> list[ChatMessage]:
    """The messages the model sees when its view starts at `start` (an index
    among the messages that are not the system prompt): the system prompt
    wherever it is, and the others from `start` on, all in their order."""
    seen = []
    index = 0
    for message in messages:
        if message.role == "system":
            seen.append(message)
            continue
        if index >= start:
            seen.append(message)
        index += 1
    return seen


def first_in_view(
    tokens_from: Callable[[int], int], starts: Sequence[int], n_ctx: int, reply_room: int
) -> int:
    """The index (among the messages that are not the system prompt) of the
    first message the model sees.

    Args:
        tokens_from: the prompt's tokens when the view starts at this index
            (the system prompt included); it may only fall as the index rises.
        starts: where turns start (`turn_starts`), in order.
        n_ctx: the context size.
        reply_room: tokens to keep free for the reply.
    """
    if not starts or tokens_from(starts[0]) + reply_room <= n_ctx:
        return starts[0] if starts else 0
    counted: dict[int, int] = {}

    def tokens(index: int) -> int:
        if index not in counted:
            counted[index] = tokens_from(index)
        return counted[index]

    candidates = list(starts[1:])
    limit = n_ctx - reply_room
    roomy = limit - n_ctx // SLACK_FRACTION
    for target in (roomy, limit):
        # The first candidate that fits `target`: the counts fall with the index.
        low, high = 0, len(candidates)
        while low < high:
            middle = (low + high) // 2
            if tokens(candidates[middle]) <= target:
                high = middle
            else:
                low = middle + 1
        if low < len(candidates):
            return candidates[low]
    return starts[-1]
