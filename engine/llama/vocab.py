"""Text to tokens and back through llama.cpp's vocabulary, for the engine's
runner and the bench's direct loop alike.

llama.cpp writes into buffers the caller sizes and answers with the size it
needed when one is too small; these functions grow the buffer and ask again.
"""

from __future__ import annotations

import ctypes

import llama_cpp

# Bytes of the first buffer for a token's text; a longer one is asked again.
PIECE_BYTES = 64


def token_bytes(vocab: llama_cpp.llama_vocab_p, token: int, special: bool = False) -> bytes:
    """The bytes of one token (special tokens render as nothing unless `special`)."""
    buffer = ctypes.create_string_buffer(PIECE_BYTES)
    length = llama_cpp.llama_token_to_piece(vocab, token, buffer, PIECE_BYTES, 0, special)
    if length < 0:
        buffer = ctypes.create_string_buffer(-length)
        length = llama_cpp.llama_token_to_piece(vocab, token, buffer, -length, 0, special)
    return buffer.raw[:length]


def special_text(vocab: llama_cpp.llama_vocab_p, token: int) -> str:
    """A special token's text (BOS, EOS), "" for the -1 of a vocabulary without it."""
    if token < 0:
        return ""
    return token_bytes(vocab, token, special=True).decode("utf-8", errors="replace")


def tokenize(
    vocab: llama_cpp.llama_vocab_p, text: str, add_special: bool, parse_special: bool
) -> list[int]:
    """The tokens of `text`; with `parse_special`, special tokens' texts become them."""
    data = text.encode("utf-8")
    capacity = len(data) + 16
    tokens = (llama_cpp.llama_token * capacity)()
    count = llama_cpp.llama_tokenize(
        vocab, data, len(data), tokens, capacity, add_special, parse_special
    )
    if count < 0:
        capacity = -count
        tokens = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(
            vocab, data, len(data), tokens, capacity, add_special, parse_special
        )
    return list(tokens[:count])
