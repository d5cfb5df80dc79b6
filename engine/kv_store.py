"""Keys and values of conversations that are not in the live cache, kept in host RAM.

The engine has one sequence in llama.cpp's KV cache. When a prompt shares
little with what that sequence holds (the window switched conversation, or
an API client asked about something else), the cache would be trimmed and
everything it held computed again later. Instead the sequence's state is
copied out first (llama.cpp's `llama_state_seq_get_data`), and a later
prompt that starts the same way gets it back (`..._set_data`) rather than
evaluating those tokens again.

Each conversation is in one place: the live cache or this store. An entry
is taken out when it is restored, and the least recently used entries go
when the store is over its budget. Pure Python: the runner does the copying.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

# A state is worth saving, and worth restoring instead of the live cache,
# only past this many tokens: below it, evaluating again costs less than the
# copy and the bookkeeping.
MIN_SAVED_TOKENS = 32
DEFAULT_BUDGET_BYTES = 512 * 1024 * 1024

_ages = itertools.count()


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens two sequences share from the start."""
    shared = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        shared += 1
    return shared


@dataclass
class SavedState:
    tokens: tuple[int, ...]
    data: bytes
    last_used: int = field(default_factory=lambda: next(_ages))

    @property
    def size(self) -> int:
        return len(self.data)


class KvStateStore:
    """Saved sequence states, least recently used first out; one thread only."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.budget_bytes = budget_bytes
        self._entries: list[SavedState] = []

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return sum(entry.size for entry in self._entries)

    def best_match(self, prompt: Sequence[int]) -> tuple[SavedState | None, int]:
        """The entry sharing the longest start with `prompt`, and how many tokens it shares."""
        best: SavedState | None = None
        best_shared = 0
        for entry in self._entries:
            shared = shared_prefix(entry.tokens, prompt)
            if shared > best_shared:
                best, best_shared = entry, shared
        return best, best_shared

    def holds(self, tokens: Sequence[int]) -> bool:
        """Whether an entry already holds these tokens or more of the same conversation."""
        return any(
            len(entry.tokens) >= len(tokens) and shared_prefix(entry.tokens, tokens) == len(tokens)
            for entry in self._entries
        )

    def put(self, tokens: Sequence[int], data: bytes) -> bool:
        """Keeps a state; returns False when it is larger than the whole budget.

        Entries that this one extends (the same conversation, fewer tokens)
        are dropped: they hold nothing it does not.
        """
        if len(data) > self.budget_bytes or len(tokens) < MIN_SAVED_TOKENS:
            return False
        kept = tuple(tokens)
        self._entries = [
            entry
            for entry in self._entries
            if shared_prefix(entry.tokens, kept) < len(entry.tokens)
        ]
        self._entries.append(SavedState(kept, data))
        self._entries.sort(key=lambda entry: entry.last_used)
        while self.size_bytes > self.budget_bytes:
            self._entries.pop(0)
        return True

    def take(self, entry: SavedState) -> SavedState:
        """Removes an entry to restore it into the live cache."""
        self._entries.remove(entry)
        return entry

    def clear(self) -> None:
        self._entries.clear()
