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

import contextlib
import hashlib
import itertools
import json
import mmap
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar

# A state is worth saving, and worth restoring instead of the live cache,
# only past this many tokens: below it, evaluating again costs less than the
# copy and the bookkeeping.
MIN_SAVED_TOKENS = 32
MIB = 1024 * 1024
DEFAULT_BUDGET_BYTES = 512 * MIB


def ram_budget(total_ram_bytes: int) -> int:
    """The default RAM budget: a tenth of the machine's RAM, from 256 MiB to 2 GiB."""
    return max(256 * MIB, min(2048 * MIB, total_ram_bytes // 10))


def disk_budget(free_disk_bytes: int) -> int:
    """The default disk budget: a tenth of the free space, at most 4 GiB."""
    return min(4096 * MIB, free_disk_bytes // 10)


_ages = itertools.count()


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens two sequences share from the start."""
    shared = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        shared += 1
    return shared


class _Entry(Protocol):
    tokens: tuple[int, ...]


AnyEntry = TypeVar("AnyEntry", bound=_Entry)


def _best_match(entries: Sequence[AnyEntry], prompt: Sequence[int]) -> tuple[AnyEntry | None, int]:
    best: AnyEntry | None = None
    best_shared = 0
    for entry in entries:
        shared = shared_prefix(entry.tokens, prompt)
        if shared > best_shared:
            best, best_shared = entry, shared
    return best, best_shared


def _holds(entries: Sequence[_Entry], tokens: Sequence[int]) -> bool:
    return any(
        len(entry.tokens) >= len(tokens) and shared_prefix(entry.tokens, tokens) == len(tokens)
        for entry in entries
    )


@dataclass
class SavedState:
    tokens: tuple[int, ...]
    # A bytearray, so that llama.cpp reads and writes it in place (no copies
    # of what may be hundreds of MiB); a state from disk is a view of the
    # file's mapping (DiskStates.opened).
    data: bytearray | memoryview
    last_used: int = field(default_factory=lambda: next(_ages))

    @property
    def size(self) -> int:
        return len(self.data)


class KvStateStore:
    """Saved sequence states, least recently used first out; one thread only."""

    def __init__(
        self,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        on_evict: Callable[[SavedState], None] = lambda _state: None,
    ) -> None:
        """`on_evict` hears of each state that leaves for lack of room (to keep it on disk)."""
        self.budget_bytes = budget_bytes
        self.on_evict = on_evict
        self._entries: list[SavedState] = []

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return sum(entry.size for entry in self._entries)

    def best_match(self, prompt: Sequence[int]) -> tuple[SavedState | None, int]:
        """The entry sharing the longest start with `prompt`, and how many tokens it shares."""
        return _best_match(self._entries, prompt)

    def holds(self, tokens: Sequence[int]) -> bool:
        """Whether an entry already holds these tokens or more of the same conversation."""
        return _holds(self._entries, tokens)

    def put(self, tokens: Sequence[int], data: bytearray) -> bool:
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
            self.on_evict(self._entries.pop(0))
        return True

    def drain(self) -> list[SavedState]:
        """Removes and returns every entry (to keep them on disk as the model unloads)."""
        entries, self._entries = self._entries, []
        return entries

    def take(self, entry: SavedState) -> SavedState:
        """Removes an entry to restore it into the live cache."""
        self._entries.remove(entry)
        return entry

    def clear(self) -> None:
        self._entries.clear()


# On disk: a conversation's state outlives the engine and the app.

MAGIC = b"KVCHATKV"
FORMAT_VERSION = 2  # 2: CRC-32 of the data, not SHA-256
SUFFIX = ".kvstate"
DEFAULT_DISK_BUDGET_BYTES = 4 * 1024 * 1024 * 1024
_HEADER_LENGTH = struct.Struct("<I")
STALE_PARTIAL_S = 60.0
RESTORING = ".restoring"  # a state file while llama.cpp reads it


def cache_key(model_path: str, shape: dict[str, object]) -> str:
    """What a state was made by: the model file as it is on disk (its path,
    size and modification time) and every load setting that shapes the cache.

    A state under another key is never restored; one whose model file has
    changed since can never match again.
    """
    stat = os.stat(model_path)
    identity = [os.path.realpath(model_path), stat.st_size, stat.st_mtime_ns, sorted(shape.items())]
    return hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()[:32]


@dataclass
class DiskState:
    path: Path
    tokens: tuple[int, ...]
    size: int
    last_used: float


class DiskStates:
    """Saved states in a folder, one file each, for one cache key.

    A file holds a header (the format version, the key, the model's path,
    the tokens, the data's CRC-32) and the state's bytes. A file that
    cannot be read, is of another format, or whose data does not match its
    checksum is deleted and logged, never handed to llama.cpp. Files of other
    keys are left alone (another model's, or other settings'), except those
    of this model file as it was before it changed, which are deleted.
    The budget counts every file in the folder.
    """

    def __init__(
        self,
        folder: Path,
        key: str,
        model_path: str,
        budget_bytes: int = DEFAULT_DISK_BUDGET_BYTES,
        log: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self.folder = folder
        self.key = key
        self.model_path = os.path.realpath(model_path)
        self.budget_bytes = budget_bytes
        self._log = log
        self.unusable = ""  # why nothing is written (a full or read-only disk), once said
        self._entries: list[DiskState] = []
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            names = sorted(folder.glob(f"*{SUFFIX}"))
        except OSError as exc:
            self._give_up(exc)
            return
        for path in names:
            self._index(path)
        # A write that a killed engine left half done (not one under way now,
        # by another kvchat on the same folder).
        for partial in folder.glob("*.partial"):
            with contextlib.suppress(OSError):
                if time.time() - partial.stat().st_mtime > STALE_PARTIAL_S:
                    partial.unlink()
        # A state that was being restored when its engine ended: if it made
        # llama.cpp crash, it would again, so it goes.
        for restoring in folder.glob(f"*{RESTORING}"):
            with contextlib.suppress(OSError):
                if time.time() - restoring.stat().st_mtime > STALE_PARTIAL_S:
                    self._drop(restoring, "its engine stopped while restoring it")

    def _give_up(self, exc: OSError) -> None:
        if not self.unusable:
            self.unusable = exc.strerror or str(exc)
            self._log(f"kv cache: not kept on disk ({self.unusable})")

    def _index(self, path: Path) -> None:
        try:
            header = _read_header(path)
        except (OSError, ValueError) as exc:
            self._drop(path, f"unreadable ({exc})")
            return
        if header["key"] == self.key:
            stat = path.stat()
            tokens = tuple(int(t) for t in header["tokens"])
            self._entries.append(DiskState(path, tokens, stat.st_size, stat.st_mtime))
        elif header.get("model_path") == self.model_path and header.get("model_mtime_ns") != (
            _mtime_ns(self.model_path)
        ):
            self._drop(path, "its model file has changed since")

    def _drop(self, path: Path, why: str) -> None:
        self._log(f"kv cache: deleted {path.name}: {why}")
        with contextlib.suppress(OSError):
            path.unlink()
        self._entries = [e for e in self._entries if e.path != path]

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return sum(entry.size for entry in self._entries)

    def best_match(self, prompt: Sequence[int]) -> tuple[DiskState | None, int]:
        return _best_match(self._entries, prompt)

    def holds(self, tokens: Sequence[int]) -> bool:
        return _holds(self._entries, tokens)

    def put(self, tokens: Sequence[int], data: bytes | bytearray | memoryview) -> bool:
        """Writes a state; False when it is not kept (too small, too large, a disk that fails)."""
        if self.unusable or len(tokens) < MIN_SAVED_TOKENS or len(data) > self.budget_bytes:
            return False
        kept = tuple(tokens)
        header = json.dumps(
            {
                "version": FORMAT_VERSION,
                "key": self.key,
                "model_path": self.model_path,
                "model_mtime_ns": _mtime_ns(self.model_path),
                "tokens": list(kept),
                "crc32": zlib.crc32(data),
                "data_bytes": len(data),
            }
        ).encode()
        name = hashlib.sha256(self.key.encode() + repr(kept).encode()).hexdigest()[:40]
        path = self.folder / f"{name}{SUFFIX}"
        partial = path.with_suffix(".partial")
        try:
            with partial.open("wb") as file:
                file.write(MAGIC + _HEADER_LENGTH.pack(len(header)) + header)
                file.write(data)
            os.replace(partial, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            self._give_up(exc)
            return False
        for entry in [e for e in self._entries if shared_prefix(e.tokens, kept) == len(e.tokens)]:
            if entry.path != path:
                self._drop(entry.path, "a longer state of the same conversation replaced it")
        self._entries = [e for e in self._entries if e.path != path]
        self._entries.append(DiskState(path, kept, path.stat().st_size, time.time()))
        self._evict()
        return True

    def _evict(self) -> None:
        """Deletes the least recently used files of the folder (of any key) over the budget."""
        try:
            files = [
                (p.stat().st_mtime, p.stat().st_size, p) for p in self.folder.glob(f"*{SUFFIX}")
            ]
        except OSError:
            return
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.budget_bytes:
                break
            self._drop(path, "the disk budget is full (least recently used)")
            total -= size

    @contextlib.contextmanager
    def opened(self, entry: DiskState, keep: bool = False) -> Iterator[SavedState | None]:
        """The state, its data checked against its checksum; None (and the file gone) if bad.

        The data is the file's mapping, not a copy: llama.cpp reads it
        straight from the page cache, and the checksum is the only other
        pass over it (CRC-32 catches a damaged or truncated file; a header's
        key and tokens catch one of another model or conversation). It is
        valid inside the `with` only. Unless `keep` (only part of it is
        used), the file goes afterwards: the state moves to the live cache.
        """
        # Under another name while llama.cpp reads it: if the engine crashes
        # during the restore, the file is not restored again at its restart.
        restoring = entry.path.with_suffix(RESTORING)
        try:
            os.replace(entry.path, restoring)
            with restoring.open("rb") as file:
                header, start = _read_header_from(file)
                mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as exc:
            self._forget(entry, restoring, f"unreadable ({exc})")
            yield None
            return
        view = memoryview(mapping)[start:]
        good = (
            header["key"] == self.key
            and tuple(header["tokens"]) == entry.tokens
            and len(view) > 0
            and len(view) == header.get("data_bytes")
            and zlib.crc32(view) == header.get("crc32")
        )
        try:
            yield SavedState(entry.tokens, view) if good else None
        finally:
            view.release()
            mapping.close()
            if not good:
                self._forget(entry, restoring, "its data does not match its checksum")
            elif keep:
                with contextlib.suppress(OSError):
                    os.replace(restoring, entry.path)
                    os.utime(entry.path)  # recently used
            else:
                self._forget(entry, restoring)

    def _forget(self, entry: DiskState, restoring: Path, why: str = "") -> None:
        """Deletes a state being restored (logged with `why`, unless it moved to the live cache)."""
        if why:
            self._log(f"kv cache: deleted {entry.path.name}: {why}")
        for path in (restoring, entry.path):
            with contextlib.suppress(OSError):
                path.unlink()
        self._entries = [e for e in self._entries if e.path != entry.path]

    def _drop_quietly(self, entry: DiskState) -> None:
        with contextlib.suppress(OSError):
            entry.path.unlink()
        self._entries = [e for e in self._entries if e.path != entry.path]

    def clear(self) -> None:
        for entry in list(self._entries):
            self._drop_quietly(entry)


def _mtime_ns(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _read_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as file:
        return _read_header_from(file)[0]


def _read_header_from(file: BinaryIO) -> tuple[dict[str, Any], int]:
    """A file's header, and where its data starts; ValueError if it is not one of ours."""
    start = file.read(len(MAGIC) + _HEADER_LENGTH.size)
    if len(start) < len(MAGIC) + _HEADER_LENGTH.size or not start.startswith(MAGIC):
        raise ValueError("not a kvchat cache file")
    size = int(_HEADER_LENGTH.unpack(start[len(MAGIC) :])[0])
    if size > 64 * 1024 * 1024:
        raise ValueError("header too large")
    raw = file.read(size)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError("damaged header") from exc
    if not isinstance(header, dict) or header.get("version") != FORMAT_VERSION:
        raise ValueError("another format version")
    if not isinstance(header.get("tokens"), list) or not isinstance(header.get("key"), str):
        raise ValueError("damaged header")
    return header, len(start) + size
