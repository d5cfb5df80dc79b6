"""Hostile headers: thousands of mutants of real GGUF files, then llama.cpp on what passes.

The header check (`read_gguf`) must answer every file with a GgufInfo or a
ModelFileError whose message is text for a person; nothing else may escape
it. The mutants it lets through then go to real llama.cpp in a real engine
host, which must answer each with a loaded model, a load failure with a
message, or its own death reported as HostExited; this process survives all.

Mutations are drawn from the file's own structure: every count, length,
type, dimension and offset in the header (found with the `gguf` package's
reader) is set to a boundary value, bytes are flipped and overwritten, the
file is cut short at any point, and bytes are inserted and deleted. The
examples are derandomized, so a run in CI sees the same files as the last.
Run with `-s` to see the counts.
"""

from __future__ import annotations

import collections
import random
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import gguf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvchat.engine.client import HostProcess
from kvchat.engine.gguf_file import GgufInfo, ModelFileError, read_gguf
from kvchat.engine.protocol import (
    Chat,
    ChatFailed,
    ChatMessage,
    Event,
    HostExited,
    LoadConfig,
    LoadFailed,
    LoadModel,
    ModelLoaded,
    Sampling,
    TurnFinished,
)
from tests.model_factory import TINY, ModelFactory, model_factory

__all__ = ["model_factory"]  # a fixture, imported so that pytest finds it

T = TypeVar("T")

# Values that break code which trusts a field: empty, one, just below and at
# the limits of signed and unsigned 32- and 64-bit integers (-1 is the last).
BOUNDARY_VALUES = (0, 1, 2, 3, 4, 5, 8, 31, 32, 64, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1)
BOUNDARY_VALUES_64 = (*BOUNDARY_VALUES, 2**32, 2**63 - 1, 2**63, 2**64 - 1)

TINY_EXAMPLES = 3000
BUNDLED_EXAMPLES = 60
# Mutants read_gguf accepts that go on to llama.cpp, and how many tries find them.
LLAMA_MUTANTS = 30
LLAMA_TRIES = 20_000
EVENT_TIMEOUT_S = 30.0

FUZZ_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

counts: collections.Counter[str] = collections.Counter()


class Chooser(Protocol):
    """Where a mutation's choices come from: hypothesis (which shrinks) or a seeded RNG."""

    def integer(self, low: int, high: int) -> int: ...

    def choice(self, options: Sequence[T]) -> T: ...


class DrawChooser:
    def __init__(self, data: st.DataObject) -> None:
        self._data = data

    def integer(self, low: int, high: int) -> int:
        return self._data.draw(st.integers(low, high))

    def choice(self, options: Sequence[T]) -> T:
        return self._data.draw(st.sampled_from(options))


class RandomChooser:
    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self._rng.randint(low, high)

    def choice(self, options: Sequence[T]) -> T:
        return self._rng.choice(options)


@dataclass(frozen=True)
class Seed:
    """A valid file to mutate: its bytes, where its header ends, and its integer fields."""

    data: bytes
    header_end: int
    fields: tuple[tuple[int, int], ...]  # (offset, width in bytes)


def integer_fields(path: Path) -> tuple[tuple[int, int], ...]:
    """Where every count, length, type, dimension, offset and number sits in the header.

    Long arrays contribute only their first items: the vocabulary's thousands
    of string lengths would otherwise drown out the few fields that shape
    the file.
    """
    reader = gguf.GGUFReader(path)
    base = reader.data.ctypes.data
    parts = [part for field in reader.fields.values() for part in field.parts[:8]]
    parts += [part for tensor in reader.tensors for part in tensor.field.parts]
    found = set()
    for part in parts:
        width = part.dtype.itemsize
        if part.dtype.kind in "uif" and width in (4, 8):
            start = part.ctypes.data - base
            found.update((start + index * width, width) for index in range(part.size))
    return tuple(sorted(found))


def make_seed(path: Path) -> Seed:
    info = read_gguf(path)
    with path.open("rb") as handle:
        data = handle.read(info.data_offset)
    return Seed(data, info.data_offset, integer_fields(path))


def mutate(seed: Seed, chooser: Chooser) -> bytes:
    """The seed's header after one to three mutations."""
    data = bytearray(seed.data)
    for _ in range(chooser.integer(1, 3)):
        kind = chooser.choice(
            ("integer", "integer", "integer", "flip", "overwrite", "cut", "insert", "delete")
        )
        if not data:
            break
        if kind == "integer":
            offset, width = chooser.choice(seed.fields)
            values = BOUNDARY_VALUES_64 if width == 8 else BOUNDARY_VALUES
            value = chooser.choice((*values, chooser.integer(0, 2 ** (8 * width) - 1)))
            data[offset : offset + width] = value.to_bytes(width, "little")
            continue
        position = chooser.integer(0, len(data) - 1)
        if kind == "flip":
            data[position] ^= chooser.integer(1, 255)
        elif kind == "overwrite":
            data[position : position + 8] = struct.pack("<Q", chooser.integer(0, 2**64 - 1))
        elif kind == "cut":
            del data[position:]
        elif kind == "insert":
            data[position:position] = bytes(chooser.integer(0, 255) for _ in range(4))
        else:
            del data[position : position + chooser.integer(1, 16)]
    return bytes(data)


def write_mutant(path: Path, header: bytes, seed_path: Path, seed: Seed) -> None:
    """The mutated header followed by the seed's tensor data, as llama.cpp would read it.

    A header cut short stays short: the file ends where the cut was.
    """
    with path.open("wb") as target:
        target.write(header)
        if len(header) >= seed.header_end - 64:
            with seed_path.open("rb") as source:
                source.seek(seed.header_end)
                target.write(source.read())


def write_sparse_mutant(path: Path, header: bytes, seed: Seed, file_size: int) -> None:
    """The mutated header and a hole as large as the seed's tensor data.

    Copying the bundled model's 135 MB per example would take the whole time
    budget; read_gguf never reads tensor data, only the file's size.
    """
    with path.open("wb") as target:
        target.write(header)
        if len(header) >= seed.header_end - 64:
            target.truncate(file_size - seed.header_end + len(header))


def check(path: Path, kind: str) -> GgufInfo | None:
    """read_gguf's answer, which must be a GgufInfo or a ModelFileError for a person."""
    try:
        info = read_gguf(path)
    except ModelFileError as exc:
        message = str(exc)
        assert message.strip(), "a ModelFileError without a message"
        assert len(message) < 600, f"a message no one can read: {message[:200]}..."
        counts[f"{kind}: refused"] += 1
        return None
    counts[f"{kind}: accepted"] += 1
    return info


@pytest.fixture(scope="module")
def tiny_path(model_factory: ModelFactory) -> Path:
    return model_factory.path(TINY)


@pytest.fixture(scope="module")
def tiny_seed(tiny_path: Path) -> Seed:
    return make_seed(tiny_path)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mutants")


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Iterator[None]:
    yield
    print("\nheader fuzz:", dict(sorted(counts.items())))


def test_seed_is_valid_and_every_field_is_found(tiny_seed: Seed, tiny_path: Path) -> None:
    # The fields the mutations aim at: version, counts, each key's length and
    # type, the scalar values, each tensor's name length, dims, type, offset.
    info = read_gguf(tiny_path)
    expected_at_least = 3 + 3 * len(info.metadata) + 4 * len(info.tensors)
    assert len(tiny_seed.fields) >= expected_at_least
    assert (4, 4) in tiny_seed.fields and (8, 8) in tiny_seed.fields


def test_header_check_answers_every_mutant_of_a_small_model(
    tiny_seed: Seed, tiny_path: Path, scratch: Path
) -> None:
    path = scratch / "tiny-mutant.gguf"

    @settings(FUZZ_SETTINGS, max_examples=TINY_EXAMPLES)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        write_mutant(path, mutate(tiny_seed, DrawChooser(data)), tiny_path, tiny_seed)
        check(path, "small model")

    run()
    assert counts["small model: refused"] > TINY_EXAMPLES // 4
    assert counts["small model: accepted"] > 0


def test_header_check_answers_mutants_of_the_bundled_model(model_path: Path, scratch: Path) -> None:
    seed = make_seed(model_path)
    size = model_path.stat().st_size
    path = scratch / "bundled-mutant.gguf"

    @settings(FUZZ_SETTINGS, max_examples=BUNDLED_EXAMPLES)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        write_sparse_mutant(path, mutate(seed, DrawChooser(data)), seed, size)
        check(path, "bundled model")

    run()
    assert counts["bundled model: refused"] > 0


def _outcome(host: HostProcess, *finals: type) -> Event:
    """The first event of the given kinds, or HostExited; fails after a silence."""
    while True:
        event = host.receive(EVENT_TIMEOUT_S)
        assert event is not None, "the engine went silent: a load or a turn hangs"
        if isinstance(event, (*finals, HostExited)):
            return event


def test_mutants_the_check_accepts_meet_real_llama_cpp(
    tiny_seed: Seed, tiny_path: Path, scratch: Path, tmp_path: Path
) -> None:
    """Each accepted mutant is loaded in a host and, if it loads, asked for a short reply.

    A host that dies is reported as HostExited with a description, and the
    next mutant gets a fresh host; this process must outlive all of them.
    """
    chooser = RandomChooser(6)
    accepted: dict[bytes, Path] = {}
    tries = 0
    while len(accepted) < LLAMA_MUTANTS and tries < LLAMA_TRIES:
        tries += 1
        header = mutate(tiny_seed, chooser)
        if header in accepted:
            continue
        path = scratch / f"llama-mutant-{len(accepted)}.gguf"
        write_mutant(path, header, tiny_path, tiny_seed)
        if check(path, "for llama.cpp") is not None:
            accepted[header] = path
    counts["for llama.cpp: tried"] = tries
    assert len(accepted) == LLAMA_MUTANTS, f"only {len(accepted)} of {tries} mutants passed"

    outcomes: collections.Counter[str] = collections.Counter()
    log = tmp_path / "engine.log"
    host = HostProcess(log)
    try:
        for path in accepted.values():
            host.send(LoadModel(LoadConfig(str(path))))
            loaded = _outcome(host, ModelLoaded, LoadFailed)
            if isinstance(loaded, ModelLoaded):
                host.send(Chat(1, (ChatMessage("user", "hi"),), Sampling(max_tokens=4)))
                turn = _outcome(host, TurnFinished, ChatFailed)
                outcome = {
                    TurnFinished: "loaded and replied",
                    ChatFailed: "loaded, reply failed",
                    HostExited: "loaded, crashed in the reply",
                }[type(turn)]
                if isinstance(turn, ChatFailed):
                    assert turn.message.strip()
            elif isinstance(loaded, LoadFailed):
                assert loaded.message.strip(), "a load failure without words"
                outcome = "refused by llama.cpp"
            else:
                outcome = "crashed while loading"
            if isinstance(loaded, HostExited) or outcome.endswith("the reply"):
                exited = loaded if isinstance(loaded, HostExited) else turn
                assert isinstance(exited, HostExited)
                assert exited.description.startswith("the engine"), exited
                if "SIGABRT" in exited.description:
                    # llama.cpp's reason, not a gdb backtrace, ends the log the person sees.
                    reasons = ("GGML_ASSERT", "what():", "error")
                    assert any(reason in exited.log_tail for reason in reasons), exited
                counts[f"llama.cpp crash: {exited.description}"] += 1
                host.close()
                host = HostProcess(log)
            outcomes[outcome] += 1
    finally:
        host.close()
    counts.update({f"llama.cpp: {name}": n for name, n in outcomes.items()})
    assert sum(outcomes.values()) == LLAMA_MUTANTS
