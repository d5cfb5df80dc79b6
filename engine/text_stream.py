"""Text from token bytes, one whole character at a time.

A byte-level tokenizer splits an emoji or a CJK character across tokens, so
a token's bytes are often not valid UTF-8 on their own. Decoding each token
separately would show U+FFFD; this keeps the incomplete bytes until the
character's last byte arrives.
"""

from __future__ import annotations

import codecs


class Utf8Stream:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, piece: bytes) -> str:
        """The text completed by `piece`; empty while a character is incomplete."""
        return self._decoder.decode(piece)

    def finish(self) -> str:
        """The end of the reply: nothing more to show.

        Bytes left over belong to a character the reply ended inside (at its
        token limit, or stopped): they are dropped, not shown as U+FFFD, so
        that the reply's text, which Continue sends back to the model, holds
        only what the model wrote whole.
        """
        self._decoder.reset()
        return ""


class StopWords:
    """Ends a reply at the first of its stop strings, without showing any of it.

    Text that might be the start of a stop string is held back until the
    next pieces show whether it is one; `push` returns what can be shown.
    """

    def __init__(self, words: tuple[str, ...]) -> None:
        self._words = tuple(word for word in words if word)
        self._longest = max((len(word) for word in self._words), default=0)
        self._text = ""
        self._shown = 0
        self.stopped = False

    def push(self, text: str) -> str:
        """What of the reply so far can be shown now; sets `stopped` at a stop string."""
        if self.stopped:
            return ""
        if not self._words:
            return text
        self._text += text
        search_from = max(0, self._shown - self._longest)
        hits = [i for i in (self._text.find(w, search_from) for w in self._words) if i >= 0]
        if hits:
            self.stopped = True
            end = min(hits)
        else:
            end = len(self._text) - self._held()
        shown = self._text[self._shown : end] if end > self._shown else ""
        self._shown = max(self._shown, end)
        return shown

    def _held(self) -> int:
        """How many trailing characters could begin a stop string."""
        for size in range(min(self._longest - 1, len(self._text)), 0, -1):
            tail = self._text[-size:]
            if any(word.startswith(tail) for word in self._words):
                return size
        return 0

    def finish(self) -> str:
        """The held-back text, once the reply has ended without a stop string."""
        if self.stopped or not self._words:
            return ""
        rest = self._text[self._shown :]
        self._shown = len(self._text)
        return rest
