"""The saved-state store's bookkeeping, without llama.cpp."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from kvchat.engine.kv_store import (
    MIN_SAVED_TOKENS,
    RESTORING,
    SUFFIX,
    DiskStates,
    KvStateStore,
    disk_budget,
    ram_budget,
    shared_prefix,
)

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


# On disk.


def _disk(
    folder: Path, model: Path, key: str = "k1", **options: object
) -> tuple[DiskStates, list[str]]:
    lines: list[str] = []
    return DiskStates(folder, key, str(model), log=lines.append, **options), lines  # type: ignore[arg-type]


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(64))
    return path


def test_a_state_on_disk_comes_back_after_a_restart(tmp_path: Path, model_file: Path) -> None:
    folder = tmp_path / "kv"
    disk, _ = _disk(folder, model_file)
    assert disk.put(_tokens(0), b"state bytes")
    again, lines = _disk(folder, model_file)  # a new engine, a new app
    entry, shared = again.best_match([*_tokens(0), 7])
    assert entry is not None and shared == LONG
    with again.opened(entry) as state:
        assert state is not None and bytes(state.data) == b"state bytes"
    assert len(again) == 0  # it moved to the live cache
    assert lines == []


def test_a_state_used_in_part_stays_on_disk_under_its_name(
    tmp_path: Path, model_file: Path
) -> None:
    folder = tmp_path / "kv"
    disk, _ = _disk(folder, model_file)
    disk.put(_tokens(0), b"system prompt state")
    path = _only_file(folder)
    entry, _ = disk.best_match(_tokens(0))
    assert entry is not None
    with disk.opened(entry, keep=True) as state:
        assert state is not None and bytes(state.data) == b"system prompt state"
        assert not path.exists()  # under another name while it is read
    assert _only_file(folder) == path
    assert not list(folder.glob("*" + RESTORING))
    assert disk.best_match(_tokens(0))[0] is not None


def test_a_state_whose_restore_ended_its_engine_is_not_restored_again(
    tmp_path: Path, model_file: Path
) -> None:
    folder = tmp_path / "kv"
    disk, _ = _disk(folder, model_file)
    disk.put(_tokens(0), b"state that crashes llama.cpp")
    entry, _ = disk.best_match(_tokens(0))
    assert entry is not None
    opened = disk.opened(entry)
    opened.__enter__()  # and the engine dies inside: no __exit__
    (restoring,) = folder.glob("*" + RESTORING)
    again, lines = _disk(folder, model_file)  # its restart, at once
    assert again.best_match(_tokens(0))[0] is None
    assert restoring.exists() and lines == []  # perhaps another kvchat's restore under way
    old = restoring.stat().st_mtime - 120
    os.utime(restoring, (old, old))
    _, lines = _disk(folder, model_file)  # a later start
    assert not restoring.exists()
    assert lines == [f"kv cache: deleted {restoring.name}: its engine stopped while restoring it"]


def _only_file(folder: Path) -> Path:
    (path,) = folder.glob("*" + SUFFIX)
    return path


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda b: b[:-30], "checksum"),  # truncated inside the data
        (lambda b: b[:-3] + b"xyz", "checksum"),  # a changed byte
        (lambda b: b[:20], "unreadable"),  # truncated inside the header
        (lambda b: b"NOTKVCHAT" + b[9:], "unreadable"),  # not ours at all
        (lambda b: b.replace(b'"version": 2', b'"version": 9'), "unreadable"),  # a later kvchat
        (lambda b: b.replace(b'"version": 2', b'"version": 1'), "unreadable"),  # an earlier one
    ],
)
def test_a_damaged_file_is_deleted_never_loaded(
    tmp_path: Path, model_file: Path, damage: Callable[[bytes], bytes], why: str
) -> None:
    folder = tmp_path / "kv"
    disk, _ = _disk(folder, model_file)
    disk.put(_tokens(0), b"0123456789" * 10)
    path = _only_file(folder)
    path.write_bytes(damage(path.read_bytes()))
    again, lines = _disk(folder, model_file)
    entry, _ = again.best_match(_tokens(0))
    if entry is not None:  # the header survived: the data is checked as it loads
        with again.opened(entry) as state:
            assert state is None
    assert not path.exists()
    assert any(why in line and path.name in line for line in lines)


def test_other_settings_are_left_alone_and_a_changed_model_invalidates(
    tmp_path: Path, model_file: Path
) -> None:
    folder = tmp_path / "kv"
    disk, _ = _disk(folder, model_file, key="ctx4096")
    disk.put(_tokens(0), b"x" * 10)
    other, _ = _disk(folder, model_file, key="ctx8192")
    assert other.best_match(_tokens(0))[0] is None
    assert _only_file(folder).exists()  # another setting's state: kept for it
    os.utime(model_file, ns=(1, 1))  # the model file changed
    changed, lines = _disk(folder, model_file, key="changed")
    assert not list(folder.glob("*" + SUFFIX))
    assert any("model file has changed" in line for line in lines)
    assert changed.best_match(_tokens(0))[0] is None


def test_the_disk_budget_deletes_the_least_recently_used(tmp_path: Path, model_file: Path) -> None:
    folder = tmp_path / "kv"
    disk, _ = _disk(folder, model_file)
    sizes = []
    for n in range(3):
        disk.put(_tokens(1000 * n), bytes(1000))
        path = max(folder.glob("*" + SUFFIX), key=lambda p: p.stat().st_mtime_ns)
        os.utime(path, ns=(n * 10**9, n * 10**9))
        sizes.append(path.stat().st_size)
    disk.budget_bytes = max(sizes) * 2 + 100  # room for two files
    disk.put(_tokens(5000), bytes(1000))
    assert disk.best_match(_tokens(0))[0] is None
    assert disk.best_match(_tokens(1000))[0] is None
    assert disk.best_match(_tokens(2000))[0] is not None
    assert disk.best_match(_tokens(5000))[0] is not None


def test_a_disk_that_fails_is_said_once_and_caching_goes_on_in_ram(
    tmp_path: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk, lines = _disk(tmp_path / "kv", model_file)

    def full(*_args: object, **_kwargs: object) -> object:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "open", full)
    assert not disk.put(_tokens(0), b"x")
    assert not disk.put(_tokens(100), b"y")
    assert lines == ["kv cache: not kept on disk (No space left on device)"]
    monkeypatch.undo()
    blocked = tmp_path / "a file"
    blocked.write_text("")
    _, lines = _disk(blocked / "kv", model_file)
    assert len(lines) == 1 and "not kept on disk" in lines[0]


def test_default_budgets_are_sized_to_the_machine() -> None:
    gib = 1024**3
    assert ram_budget(24 * gib) == 2 * gib  # at most 2 GiB
    assert ram_budget(1 * gib) == 256 * 1024**2  # at least 256 MiB
    assert ram_budget(8 * gib) == 8 * gib // 10
    assert disk_budget(10 * gib) == gib
    assert disk_budget(500 * gib) == 4 * gib
