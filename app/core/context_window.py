"""Which messages the model sees once a conversation outgrows the context.

The policy: the system prompt always stays; when the messages plus the room
kept for the reply would not fit the context, the oldest turns leave the
model's view, whole turns at a time (a turn starts at one of the person's
messages), never the message being answered. The view then starts further on
than strictly needed (by a slack of an eighth of the context), because every
move of the start changes the prompt's beginning, and the engine must then
evaluate the whole prompt again instead of reusing its cache.

Costs come from the engine's own counts where there are any: a message's
tokens were measured on the turn that sent it (the prompt's size, less the
system part and the earlier turns). A message never measured with the
current model is estimated from its UTF-8 size with a tokens-per-byte ratio
learned from the last prompt, which starts high (every token covers at least
a byte) and only ever errs towards leaving more room. If an estimate was
still short, the engine refuses the prompt with both numbers; nothing is
ever cut silently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Tokens a chat template wraps around one message (role markers, separators).
MESSAGE_OVERHEAD = 8
# Tokens per UTF-8 byte before anything was measured: an upper bound for
# byte-level and SentencePiece vocabularies alike.
FIRST_TOKENS_PER_BYTE = 1.0
# A learned ratio is used with this margin, since messages differ from the mean.
RATIO_MARGIN = 1.25
# The least text a ratio is learned from; below it the template's wrapping dominates.
LEARN_FROM_BYTES = 256
SLACK_FRACTION = 8


def reply_budget(max_tokens: int, n_ctx: int) -> int:
    """The room kept for the reply: its token limit, but never more than a
    quarter of the context (so a long history still gets most of it)."""
    return max(1, min(max_tokens, n_ctx // 4))


def estimate_tokens(text: str, tokens_per_byte: float) -> int:
    """What a message not yet measured will cost, erring high."""
    size = len(text.encode("utf-8"))
    return math.ceil(size * tokens_per_byte) + MESSAGE_OVERHEAD


def learn_tokens_per_byte(
    prompt_tokens: int, fixed_tokens: int, texts: Sequence[str]
) -> float | None:
    """The ratio seen in a prompt of these messages (with margin), or None if
    the messages are too short to say."""
    size = sum(len(text.encode("utf-8")) for text in texts)
    if size < LEARN_FROM_BYTES:
        return None
    content = prompt_tokens - fixed_tokens - MESSAGE_OVERHEAD * len(texts)
    ratio = max(content, 1) / size * RATIO_MARGIN
    return min(max(ratio, 0.05), FIRST_TOKENS_PER_BYTE)


def first_in_view(
    costs: Sequence[int],
    starts_turn: Sequence[bool],
    fixed: int,
    n_ctx: int,
    budget: int,
    current: int,
) -> int:
    """The index of the first message the model sees.

    Args:
        costs: tokens of each message in the context.
        starts_turn: whether each message starts a turn (is the person's).
        fixed: tokens that always stay (the system prompt and the template's preamble).
        n_ctx: the context size.
        budget: tokens kept free for the reply.
        current: where the view starts now; it moves only forward.
    """
    if not costs:
        return 0
    turns = [index for index, starts in enumerate(starts_turn) if starts]
    last = turns[-1] if turns else 0
    suffix = [0] * (len(costs) + 1)
    for index in range(len(costs) - 1, -1, -1):
        suffix[index] = suffix[index + 1] + costs[index]
    start = min(current, last)
    if not starts_turn[start]:
        start = next((t for t in turns if t >= start), last)
    limit = n_ctx - budget
    if fixed + suffix[start] <= limit:
        return start
    candidates = [t for t in turns if start < t <= last]
    roomy = limit - n_ctx // SLACK_FRACTION
    for target in (roomy, limit):
        for index in candidates:
            if fixed + suffix[index] <= target:
                return index
    return last
