"""Reasoning ("thinking") text told apart from the answer, as a reply streams.

Reasoning models write their thinking before the answer, in one of two forms:

- Tags: `<think>…</think>` (Qwen3, DeepSeek-R1 and its distills, QwQ) or
  `<thinking>…</thinking>`. Some templates end the generation prompt with
  `<think>\\n` (DeepSeek-R1), so the reply starts inside the thinking with no
  opening tag of its own; `ends_inside_thinking` tells, from the prompt.
- gpt-oss's harmony format, where every message has a header that names its
  channel: `<|channel|>analysis<|message|>…<|end|><|start|>assistant
  <|channel|>final<|message|>…`. The analysis and commentary channels are
  thinking, the final channel (or a message without a channel) the answer.

The markers themselves reach neither side, and nor does a harmony header
(the role and channel between `<|start|>` and `<|message|>`). Whitespace that
follows a marker (`</think>\\n\\n`) is dropped, as models' own templates strip
it when they read a reply back. Tags are taken as markers wherever they
appear, as the model's own parsers take them: a model that quotes `<think>`
in its answer hides what follows it in the thinking, where it can still be
read, rather than the other way round.

This module has no Qt and no llama.cpp: the engine host, the engine for a
server elsewhere and the scripted engine of the tests split alike.
"""

from __future__ import annotations

THINK_OPENERS = ("<think>", "<thinking>")
THINK_CLOSERS = ("</think>", "</thinking>")
THINK_TAGS = THINK_OPENERS + THINK_CLOSERS

HARMONY_START = "<|start|>"
HARMONY_CHANNEL = "<|channel|>"
HARMONY_CONSTRAIN = "<|constrain|>"
HARMONY_MESSAGE = "<|message|>"
# What ends a harmony message: the end of a turn, of the reply, of a tool call.
HARMONY_ENDS = ("<|end|>", "<|return|>", "<|call|>")
HARMONY_MARKERS = (
    HARMONY_START,
    HARMONY_CHANNEL,
    HARMONY_CONSTRAIN,
    HARMONY_MESSAGE,
    *HARMONY_ENDS,
)
# Channels whose messages are the model's thinking: its analysis, and the
# commentary it writes around tool calls.
THINKING_CHANNELS = frozenset({"analysis", "commentary"})
# Every text the splitter takes for a marker, for the engine to render the
# model's tokens of these texts even when they are control tokens.
MARKERS = THINK_TAGS + HARMONY_MARKERS
# A channel header longer than this is not a channel name; the rest is dropped.
MAX_HEADER_CHARS = 64

Part = tuple[bool, str]
"""A piece of the reply: (is thinking, text)."""


class ThinkingSplitter:
    """Splits a streamed reply into thinking and answer, a piece at a time.

    `push` takes the reply's text as it comes, in pieces of any size, and
    returns what of it can be told now, as `(is_thinking, text)` parts in
    order. Text that might be the start of a marker (`</thi`) is held back
    until the next piece says whether it is one, and nothing else is: so
    every split of the same reply gives the same thinking and the same
    answer. `finish` returns what was held back once the reply has ended.

    The work per piece is a search for `<` in that piece alone, so a reply
    costs time in proportion to its length, however it is split.
    """

    def __init__(self, start_in_thinking: bool = False, *, harmony: bool = True) -> None:
        """Starts a reply.

        Args:
            start_in_thinking: the prompt opened the thinking (it ends with
                `<think>\\n`, or a reply cut inside its thinking is being
                continued), so the reply's first words are thinking.
            harmony: whether harmony's markers are markers. The engine turns
                them off for a model whose vocabulary lacks them, for which
                `<|channel|>` can only be text it quotes.
        """
        self._markers = MARKERS if harmony else THINK_TAGS
        self._longest = max(len(marker) for marker in self._markers)
        self._thinking = start_in_thinking
        # Inside a harmony header: its text goes nowhere, except the channel
        # name, which is read while `_channel` is not None.
        self._in_header = False
        self._channel: str | None = None
        # Right after a marker: whitespace is dropped until the first word.
        self._after_marker = False
        self._held = ""
        self._parts: list[Part] = []

    @property
    def thinking(self) -> bool:
        """Whether text pushed now would be thinking (False: answer, or a header)."""
        return self._thinking and not self._in_header

    def push(self, text: str) -> list[Part]:
        """The parts of the reply that `text` completes, in order.

        Consecutive text of one side comes as one part; a marker split across
        pushes counts as soon as its last character arrives.
        """
        if not text:
            return []
        if self._held:
            text, self._held = self._held + text, ""
        self._parts = []
        cursor = search = 0
        while (at := text.find("<", search)) >= 0:
            marker = next((m for m in self._markers if text.startswith(m, at)), None)
            if marker is not None:
                self._add(text[cursor:at])
                self._apply(marker)
                cursor = search = at + len(marker)
            elif len(text) - at < self._longest and any(
                m.startswith(text[at:]) for m in self._markers
            ):
                self._add(text[cursor:at])
                self._held = text[at:]
                return self._parts
            else:
                search = at + 1
        self._add(text[cursor:])
        return self._parts

    def finish(self) -> list[Part]:
        """What was held back as a possible marker: the reply ended, so it is text."""
        held, self._held = self._held, ""
        self._parts = []
        self._add(held)
        return self._parts

    def _add(self, text: str) -> None:
        if not text:
            return
        if self._in_header:
            if self._channel is not None:
                self._channel = (self._channel + text)[:MAX_HEADER_CHARS]
            return
        if self._after_marker:
            text = text.lstrip()
            if not text:
                return
            self._after_marker = False
        parts = self._parts
        if parts and parts[-1][0] == self._thinking:
            parts[-1] = (self._thinking, parts[-1][1] + text)
        else:
            parts.append((self._thinking, text))

    def _apply(self, marker: str) -> None:
        """Moves to where `marker` leads; an opener inside thinking, or a
        closer outside it, changes nothing (and is dropped all the same)."""
        if marker in THINK_OPENERS:
            if not self._thinking and not self._in_header:
                self._thinking = self._after_marker = True
        elif marker in THINK_CLOSERS:
            if self._thinking and not self._in_header:
                self._thinking = False
                self._after_marker = True
        elif marker == HARMONY_START:
            self._in_header, self._channel, self._thinking = True, None, False
        elif marker == HARMONY_CHANNEL:
            self._in_header, self._channel = True, ""
        elif marker == HARMONY_CONSTRAIN:
            self._in_header = True  # what follows (`json`) is no part of the channel's name
            if self._channel is not None:
                self._channel += " "
        elif marker == HARMONY_MESSAGE:
            # "commentary to=functions.get_weather": the first word names the channel.
            words = (self._channel or "").split(maxsplit=1)
            self._thinking = bool(words) and words[0] in THINKING_CHANNELS
            self._in_header, self._channel, self._after_marker = False, None, True
        else:  # the end of a harmony message: what follows is no channel's
            self._in_header, self._channel, self._thinking = False, None, False


def ends_inside_thinking(text: str, *, harmony: bool = True) -> bool:
    """Whether `text`, read as the start of a reply, leaves the thinking open.

    True for a generation prompt that ends with `<think>\\n` (DeepSeek-R1's
    templates), or with a harmony analysis header, and for a prompt that
    goes on with a reply cut inside its thinking.

    Pass only what the template and the model wrote, from the end of the
    last message a person wrote: a `<think>` typed in a question is text,
    and it would read as an open block here.
    """
    splitter = ThinkingSplitter(harmony=harmony)
    splitter.push(text)
    return splitter.thinking
