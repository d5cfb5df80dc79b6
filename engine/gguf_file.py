"""Reading and checking a GGUF file's header before llama.cpp sees it.

llama.cpp aborts the whole process on some malformed files, and its messages
are written for developers. This module walks the header in Python, checks
every length and offset against the file's size, and explains a bad file in
words a person understands ("it starts with PK, a zip archive?").

It reads only the header: key/value metadata and the tensor table. Tensor
data is never touched, so checking a multi-gigabyte model takes milliseconds.
The `gguf` package supplies the format's constants (value types, the block
sizes of quantized tensor types); its reader parses every array into numpy
objects, which takes seconds on a model with a large vocabulary, so the walk
here is our own.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Bounds that no real model comes near; a header beyond them is corrupt or
# hostile, and allocating for it would exhaust memory before failing.
MAX_TENSORS = 1 << 20
MAX_KV_PAIRS = 1 << 16
MAX_DIMS = 4
MAX_STRING_BYTES = 1 << 26
MAX_ARRAY_ITEMS = 1 << 26
# Strings up to this size are kept (chat templates run to tens of kilobytes).
KEEP_STRING_BYTES = 1 << 20
# Numeric arrays up to this length are kept (per-layer head counts and the
# like); longer arrays (vocabularies, merges) are summarised by their length.
KEEP_ARRAY_ITEMS = 1024

_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


class Error(Exception):
    """Base class of this module's errors."""


class ModelFileError(Error):
    """A model file that cannot be used; the message is meant for a person."""


@dataclass(frozen=True)
class ArraySummary:
    """A metadata array too long to keep: its element type and length."""

    item_type: str
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type_name: str
    offset: int
    n_bytes: int


@dataclass(frozen=True)
class GgufInfo:
    """What the header of a valid GGUF file says."""

    path: Path
    version: int
    file_size: int
    data_offset: int
    metadata: dict[str, object] = field(repr=False)
    tensors: tuple[TensorInfo, ...] = field(repr=False)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def name(self) -> str:
        """The file's name without its suffix: the name the person chose the model by.

        (`general.name` in the metadata is often a training run's label.)
        """
        return self.path.stem

    @property
    def context_length(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.context_length")
        return int(value) if isinstance(value, int) else None

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    @property
    def parameter_count(self) -> int:
        total = 0
        for tensor in self.tensors:
            count = 1
            for dim in tensor.shape:
                count *= dim
            total += count
        return total


def describe_start(head: bytes) -> str:
    """Says in words what a file that is not GGUF appears to be."""
    if not head:
        return "the file is empty"
    shown = head[:8].decode("latin-1")
    printable = shown[: next((i for i, ch in enumerate(shown) if not ch.isprintable()), 8)]
    label = printable.strip() or f"bytes {head[:4].hex(' ')}"
    guesses: list[tuple[bytes, str]] = [
        (b"PK\x03\x04", "a zip archive?"),
        (b"\x1f\x8b", "a gzip archive?"),
        (
            b"version https://git-lfs",
            "a Git LFS pointer, not the model itself: run `git lfs pull`?",
        ),
        (b"<!DOCTYPE", "a web page saved instead of the model?"),
        (b"<html", "a web page saved instead of the model?"),
        (b"{", "a JSON file?"),
        (b"\x80", "a PyTorch pickle? Convert it to GGUF first"),
        (b"lmgg", "the old GGML format: convert it to GGUF"),
        (b"tjgg", "the old GGJT format: convert it to GGUF"),
        (b"fmgg", "the old GGMF format: convert it to GGUF"),
    ]
    for prefix, guess in guesses:
        if head.lower().startswith(prefix.lower()):
            return f"it starts with {label}, {guess}"
    if len(head) >= 10 and head[8:10] == b'{"':
        return f"it starts with {label}, a safetensors file? Convert it to GGUF first"
    text = head[:16].decode("utf-8", errors="ignore")
    if text.strip() and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return f"it is a text file starting with {text.strip()[:12]!r}"
    return f"it starts with bytes {head[:4].hex(' ')}, not with GGUF"


class _Cursor:
    """Reads little-endian values from a buffer, checking every bound."""

    def __init__(self, buffer: mmap.mmap | bytes, size: int) -> None:
        self._buffer = buffer
        self._size = size
        self.pos = 0

    def _need(self, n_bytes: int, what: str) -> None:
        if n_bytes < 0 or self.pos + n_bytes > self._size:
            raise ModelFileError(
                f"the file is truncated or corrupt: {what} at byte {self.pos} "
                f"runs past the end of the file ({self._size} bytes)"
            )

    def scalar(self, fmt: str, what: str) -> int | float | bool:
        n_bytes = struct.calcsize(fmt)
        self._need(n_bytes, what)
        (value,) = struct.unpack_from(fmt, self._buffer, self.pos)
        self.pos += n_bytes
        return value  # type: ignore[no-any-return]

    def u32(self, what: str) -> int:
        return int(self.scalar("<I", what))

    def u64(self, what: str) -> int:
        return int(self.scalar("<Q", what))

    def string(self, what: str, keep: bool = True) -> str | None:
        length = self.u64(f"the length of {what}")
        if length > MAX_STRING_BYTES:
            raise ModelFileError(f"the header is corrupt: {what} claims {length} bytes")
        self._need(length, what)
        start = self.pos
        self.pos += length
        if not keep or length > KEEP_STRING_BYTES:
            return None
        raw = bytes(self._buffer[start : self.pos])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelFileError(f"the header is corrupt: {what} is not valid UTF-8") from exc


def _value_type(code: int, key: str) -> GGUFValueType:
    try:
        return GGUFValueType(code)
    except ValueError:
        raise ModelFileError(
            f"the header is corrupt: metadata {key!r} has unknown value type {code}"
        ) from None


def _read_value(cursor: _Cursor, value_type: GGUFValueType, key: str) -> object:
    if value_type == GGUFValueType.STRING:
        return cursor.string(f"metadata {key!r}")
    if value_type == GGUFValueType.ARRAY:
        item_type = _value_type(cursor.u32(f"the item type of {key!r}"), key)
        length = cursor.u64(f"the length of {key!r}")
        if length > MAX_ARRAY_ITEMS:
            raise ModelFileError(f"the header is corrupt: metadata {key!r} claims {length} items")
        if item_type == GGUFValueType.ARRAY:
            raise ModelFileError(f"the header is corrupt: metadata {key!r} nests arrays")
        if item_type == GGUFValueType.STRING:
            for index in range(length):
                cursor.string(f"item {index} of {key!r}", keep=False)
            return ArraySummary(item_type.name, length)
        fmt = _SCALAR_FORMATS[item_type]
        item_size = struct.calcsize(fmt)
        if length > KEEP_ARRAY_ITEMS:
            cursor._need(item_size * length, f"metadata {key!r}")
            cursor.pos += item_size * length
            return ArraySummary(item_type.name, length)
        return [cursor.scalar(fmt, f"item {index} of {key!r}") for index in range(length)]
    return cursor.scalar(_SCALAR_FORMATS[value_type], f"metadata {key!r}")


def _tensor_bytes(shape: tuple[int, ...], type_code: int, name: str) -> tuple[str, int]:
    try:
        ggml_type = GGMLQuantizationType(type_code)
    except ValueError:
        raise ModelFileError(
            f"tensor {name!r} has type {type_code}, which this version of kvchat does not know"
        ) from None
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    count = 1
    for dim in shape:
        count *= dim
    if shape and shape[0] % block_size:
        raise ModelFileError(
            f"the header is corrupt: tensor {name!r} has {shape[0]} columns, "
            f"not a multiple of {ggml_type.name}'s block of {block_size}"
        )
    return ggml_type.name, count // block_size * type_size


def read_gguf(path: str | os.PathLike[str]) -> GgufInfo:
    """Checks a GGUF file's header and returns what it says.

    Raises:
        ModelFileError: the file is missing, unreadable, not GGUF, of an
            unsupported version, truncated, or its header is inconsistent.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"the file does not exist ({path})")
    if path.is_dir():
        raise ModelFileError(f"it is a folder, not a model file ({path})")
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                raise ModelFileError("not a GGUF file: the file is empty")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                return _parse(path, view, size)
    except PermissionError:
        raise ModelFileError(f"permission denied: {path} cannot be read") from None
    except OSError as exc:
        raise ModelFileError(f"it cannot be read: {exc.strerror or exc}") from None


def _parse(path: Path, view: mmap.mmap, size: int) -> GgufInfo:
    head = bytes(view[:64])
    if not head.startswith(GGUF_MAGIC):
        raise ModelFileError(f"not a GGUF file: {describe_start(head)}")
    cursor = _Cursor(view, size)
    cursor.pos = len(GGUF_MAGIC)
    version = cursor.u32("the version")
    if version not in SUPPORTED_VERSIONS:
        raise ModelFileError(
            f"it is GGUF version {version}; kvchat reads versions "
            f"{' and '.join(map(str, SUPPORTED_VERSIONS))}"
        )
    n_tensors = cursor.u64("the tensor count")
    n_kv = cursor.u64("the metadata count")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV_PAIRS:
        raise ModelFileError(
            f"the header is corrupt: it claims {n_tensors} tensors and {n_kv} metadata entries"
        )

    metadata: dict[str, object] = {}
    for index in range(n_kv):
        key = cursor.string(f"metadata key {index}") or ""
        value_type = _value_type(cursor.u32(f"the type of {key!r}"), key)
        metadata[key] = _read_value(cursor, value_type, key)

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ModelFileError(f"the header is corrupt: alignment {alignment!r}")

    raw_tensors: list[tuple[str, tuple[int, ...], str, int, int]] = []
    for index in range(n_tensors):
        name = cursor.string(f"the name of tensor {index}") or f"#{index}"
        n_dims = cursor.u32(f"the dimension count of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise ModelFileError(f"the header is corrupt: tensor {name!r} has {n_dims} dimensions")
        shape = tuple(cursor.u64(f"a dimension of {name!r}") for _ in range(n_dims))
        type_name, n_bytes = _tensor_bytes(shape, cursor.u32(f"the type of {name!r}"), name)
        offset = cursor.u64(f"the offset of {name!r}")
        if offset % alignment:
            raise ModelFileError(
                f"the header is corrupt: tensor {name!r} is not aligned to {alignment} bytes"
            )
        raw_tensors.append((name, shape, type_name, offset, n_bytes))

    data_offset = -(-cursor.pos // alignment) * alignment
    for name, _shape, _type, offset, n_bytes in raw_tensors:
        end = data_offset + offset + n_bytes
        if end > size:
            raise ModelFileError(
                f"the file is truncated: tensor {name!r} ends at byte {end}, "
                f"but the file has {size} bytes (an unfinished download?)"
            )
    tensors = tuple(TensorInfo(*fields) for fields in raw_tensors)
    return GgufInfo(path, version, size, data_offset, metadata, tensors)
