"""The saved-state store's bookkeeping, without llama.cpp."""

from __future__ import annotations

from kvchat.engine.kv_store import MIN_SAVED_TOKENS, KvStateStore, shared_prefix

LONG = MIN_SAVED_TOKENS


def _tokens(start: int, count: int = LONG) -> list[int]:
    return list(range(start, start + count))


def test_shared_prefix_counts_from_the_start() -> None:
    assert shared_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert shared_prefix([], [1]) == 0
    assert shared_prefix([1, 2], [1, 2, 3]) == 2


def test_best_match_is_the_longest_shared_start() -> None:
    store = KvStateStore()
    a, b = _tokens(0, LONG + 10), _tokens(1000)
    store.put(a, b"a" * 10)
    store.put(b, b"b" * 10)
    entry, shared = store.best_match([*a[: LONG + 5], 99999])
    assert entry is not None and entry.tokens == tuple(a)
    assert shared == LONG + 5
    assert store.best_match([424242])[0] is None


def test_short_states_are_not_worth_keeping() -> None:
    store = KvStateStore()
    assert not store.put(_tokens(0, LONG - 1), b"x")
    assert len(store) == 0


def test_a_longer_state_of_the_same_conversation_replaces_the_shorter() -> None:
    store = KvStateStore()
    store.put(_tokens(0), b"x" * 5)
    store.put(_tokens(0, LONG + 20), b"y" * 8)
    assert len(store) == 1
    assert store.holds(_tokens(0))
    assert store.size_bytes == 8


def test_least_recently_used_go_first_over_the_budget() -> None:
    store = KvStateStore(budget_bytes=25)
    for n in range(3):
        store.put(_tokens(1000 * n), bytes(10))
    assert len(store) == 2
    assert store.best_match(_tokens(0))[0] is None
    assert store.best_match(_tokens(2000))[0] is not None
    assert not store.put(_tokens(5000), bytes(26))


def test_take_removes_the_entry() -> None:
    store = KvStateStore()
    store.put(_tokens(0), bytes(4))
    entry, _ = store.best_match(_tokens(0))
    assert entry is not None
    store.take(entry)
    assert len(store) == 0 and store.size_bytes == 0
