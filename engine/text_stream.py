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
        """Whatever is left at the end (U+FFFD for bytes that never completed)."""
        return self._decoder.decode(b"", final=True)
