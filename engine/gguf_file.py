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

import contextlib
import os
import re
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

GGUF_MAGIC = b"GGUF"
# llama.cpp's split naming (llama_split_path): NAME-00001-of-00003.gguf.
SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Bounds that no real model comes near; a header beyond them is corrupt or
# hostile, and allocating for it would exhaust memory before failing.
MAX_TENSORS = 1 << 20
MAX_KV_PAIRS = 1 << 16
MAX_DIMS = 4
MAX_STRING_BYTES = 1 << 26
MAX_ARRAY_ITEMS = 1 << 26
MAX_KEY_BYTES = 1 << 16
# llama.cpp's GGML_MAX_NAME is 64 bytes, its terminating NUL included.
MAX_TENSOR_NAME_BYTES = 63
# Larger than any page size; real files use 32.
MAX_ALIGNMENT = 1 << 16
# llama.cpp counts a tensor's elements in a signed 64-bit integer.
MAX_ELEMENTS = (1 << 63) - 1
# llama.cpp's LLAMA_MAX_LAYERS: it aborts the process on a block count of 0 or above.
MAX_LAYERS = 512
# Strings up to this size are kept (chat templates run to tens of kilobytes).
KEEP_STRING_BYTES = 1 << 20
# Numeric arrays up to this length are kept (per-layer head counts and the
# like); longer arrays (vocabularies, merges) are summarised by their length.
KEEP_ARRAY_ITEMS = 1024
# What is kept of all values together; past it, values are summarised too.
KEEP_TOTAL_STRING_BYTES = 1 << 24
KEEP_TOTAL_ARRAY_ITEMS = 1 << 16

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


class HeaderIncompleteError(Error):
    """The header runs past the bytes known so far (a header still being fetched).

    `needed` is how many bytes from the start of the file the read needs at least.
    """

    def __init__(self, needed: int) -> None:
        super().__init__(f"the header needs at least {needed} bytes")
        self.needed = needed


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
    # Where the data starts in its file's data section, and which file of a
    # split model holds it (0 for a whole file).
    offset: int
    n_bytes: int
    part: int = 0


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


_U64 = struct.Struct("<Q")


class _Reader:
    """Reads little-endian values from the file at a moving position, checking every bound.

    The file is read with `os.pread` a window at a time rather than mapped:
    touching a mapped page of a file that someone truncated meanwhile raises
    SIGBUS, which would kill the process, and the GUI process reads headers
    when it lists models. A short read here is an error with words instead.
    """

    _WINDOW = 1 << 20

    def __init__(self, fd: int, size: int, known: int | None = None) -> None:
        self._fd = fd
        self._size = size
        # Only the first `known` bytes are real; past them lies a sparse file's
        # hole, the rest of a header that is still on its way.
        self._known = size if known is None else known
        self._base = 0
        self._window = b""
        self.pos = 0

    def need(self, n_bytes: int, what: str) -> None:
        """Checks that `n_bytes` from the current position lie inside the file."""
        if n_bytes < 0 or self.pos + n_bytes > self._size:
            raise ModelFileError(
                f"the file is truncated or corrupt: {what} at byte {self.pos} "
                f"runs past the end of the file ({self._size} bytes)"
            )
        if self.pos + n_bytes > self._known:
            raise HeaderIncompleteError(self.pos + n_bytes)

    def skip(self, n_bytes: int, what: str) -> None:
        self.need(n_bytes, what)
        self.pos += n_bytes

    def take(self, n_bytes: int, what: str) -> tuple[bytes, int]:
        """The buffer holding the next `n_bytes`, and where they start in it; advances."""
        self.need(n_bytes, what)
        start = self.pos - self._base
        if self.pos < self._base or start + n_bytes > len(self._window):
            data = os.pread(self._fd, max(n_bytes, self._WINDOW), self.pos)
            if len(data) < n_bytes:
                raise ModelFileError(
                    f"the file shrank while it was being read (now {self.pos + len(data)} "
                    f"bytes, {self._size} a moment ago): is it still being written or copied?"
                )
            self._base, self._window, start = self.pos, data, 0
        self.pos += n_bytes
        return self._window, start

    def scalars(self, code: str, count: int, what: str) -> tuple[int | float | bool, ...]:
        fmt = f"<{count}{code}"
        buffer, start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, buffer, start)

    def u32(self, what: str) -> int:
        return int(self.scalars("I", 1, what)[0])

    def u64(self, what: str) -> int:
        return int(self.scalars("Q", 1, what)[0])

    def string(self, what: str, limit: int = MAX_STRING_BYTES) -> str:
        """A length-prefixed UTF-8 string of at most `limit` bytes."""
        return self.string_or_skip(what, keep_up_to=limit, limit=limit) or ""

    def skip_strings(self, count: int, what: str, limit: int = MAX_STRING_BYTES) -> None:
        """Steps over `count` length-prefixed strings, checking their bounds.

        A tokenizer's vocabulary and merges are tens of thousands of strings
        each: they are walked in one tight loop over the window read, and only
        a string the window cuts, or one at fault, goes the way of
        `string_or_skip` (which reads on, and says what is wrong).
        """
        unpack = _U64.unpack_from
        index = 0
        while index < count:
            window, offset = self._window, self.pos - self._base
            # What is real of the window: a sparse file's hole is not.
            end = min(len(window), self._known - self._base) if offset >= 0 else 0
            while index < count and offset + 8 <= end:
                (length,) = unpack(window, offset)
                if length > limit or offset + 8 + length > end:
                    break
                offset += 8 + length
                index += 1
            if offset >= 0:
                self.pos = self._base + offset
            if index < count:
                self.string_or_skip(f"item {index} of {what}", keep_up_to=0, limit=limit)
                index += 1

    def string_or_skip(
        self, what: str, keep_up_to: int, limit: int = MAX_STRING_BYTES
    ) -> str | None:
        """A string, or None past `keep_up_to` bytes (then only its bounds are checked)."""
        length = self.u64(f"the length of {what}")
        if length > limit:
            raise ModelFileError(
                f"the header is corrupt: {what} is {length} bytes long, "
                f"and kvchat accepts at most {limit}"
            )
        if length > keep_up_to:
            self.skip(length, what)
            return None
        buffer, start = self.take(length, what)
        try:
            return buffer[start : start + length].decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFileError(f"the header is corrupt: {what} is not valid UTF-8 text") from None


# Value types by struct code; strings and arrays are read by their own rules.
_SCALAR_CODES: dict[GGUFValueType, str] = {
    value_type: fmt[1:] for value_type, fmt in _SCALAR_FORMATS.items()
}

# Keys llama.cpp reads with accessors that abort the process (GGML_ASSERT)
# when the stored type differs, rather than failing the load: a wrong type
# here is refused before llama.cpp sees it. Values: (type, item type of an array).
_REQUIRED_TYPES: dict[str, tuple[GGUFValueType, GGUFValueType | None]] = {
    "general.alignment": (GGUFValueType.UINT32, None),
    "general.architecture": (GGUFValueType.STRING, None),
    "tokenizer.ggml.model": (GGUFValueType.STRING, None),
    "tokenizer.chat_template": (GGUFValueType.STRING, None),
    "tokenizer.ggml.tokens": (GGUFValueType.ARRAY, GGUFValueType.STRING),
    "tokenizer.ggml.scores": (GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
    "tokenizer.ggml.token_type": (GGUFValueType.ARRAY, GGUFValueType.INT32),
    "tokenizer.ggml.merges": (GGUFValueType.ARRAY, GGUFValueType.STRING),
}


def _type_name(value_type: GGUFValueType, item_type: GGUFValueType | None) -> str:
    if item_type is None:
        return value_type.name.lower()
    return f"array of {item_type.name.lower()}"


def _shown(name: str) -> str:
    """A key or name quoted for a message, shortened: a hostile key can be 64 kB long."""
    return repr(name if len(name) <= 80 else f"{name[:60]}...")


def _value_type(code: int, key: str) -> GGUFValueType:
    try:
        return GGUFValueType(code)
    except ValueError:
        raise ModelFileError(
            f"the header is corrupt: metadata {key} has unknown value type {code}"
        ) from None


class _Metadata:
    """Reads the key/value section, keeping small values and summarising large ones.

    What is kept is bounded in total, not only per value, so that a file of
    many mid-sized values cannot make the reader hold gigabytes of objects.
    """

    def __init__(self, reader: _Reader) -> None:
        self._reader = reader
        self.values: dict[str, object] = {}
        self.types: dict[str, tuple[GGUFValueType, GGUFValueType | None]] = {}
        self._kept_items = 0
        self._kept_bytes = 0

    def read_entry(self, index: int) -> None:
        reader = self._reader
        name = reader.string(f"metadata key {index}", limit=MAX_KEY_BYTES)
        key = _shown(name)
        if name in self.values:
            raise ModelFileError(f"the header is corrupt: metadata key {key} appears twice")
        value_type = _value_type(reader.u32(f"the type of {key}"), key)
        item_type: GGUFValueType | None = None
        if value_type == GGUFValueType.ARRAY:
            item_type = _value_type(reader.u32(f"the item type of {key}"), key)
            value = self._read_array(key, item_type)
        elif value_type == GGUFValueType.STRING:
            value = self._read_string(f"metadata {key}")
        else:
            value = reader.scalars(_SCALAR_CODES[value_type], 1, f"metadata {key}")[0]
        required = _REQUIRED_TYPES.get(name)
        if required is not None and required != (value_type, item_type):
            raise ModelFileError(
                f"the header is corrupt: metadata {key} is stored as "
                f"{_type_name(value_type, item_type)}, where llama.cpp expects "
                f"{_type_name(*required)}"
            )
        self.values[name] = value
        self.types[name] = (value_type, item_type)

    def _read_string(self, what: str) -> str | None:
        room = min(KEEP_STRING_BYTES, KEEP_TOTAL_STRING_BYTES - self._kept_bytes)
        text = self._reader.string_or_skip(what, keep_up_to=room)
        self._kept_bytes += len(text or "")
        return text

    def _read_array(self, key: str, item_type: GGUFValueType) -> object:
        reader = self._reader
        length = reader.u64(f"the length of {key}")
        if item_type == GGUFValueType.ARRAY:
            raise ModelFileError(f"the header is corrupt: metadata {key} nests arrays")
        # Every string item has at least its 8-byte length.
        item_size = 8 if item_type == GGUFValueType.STRING else _SCALAR_SIZES[item_type]
        if length > MAX_ARRAY_ITEMS:
            raise ModelFileError(f"the header is corrupt: metadata {key} claims {length} items")
        # Checked before the walk over the items, which could take long.
        reader.need(length * item_size, f"the {length} items of {key}")
        if item_type == GGUFValueType.STRING:
            reader.skip_strings(length, key)
            return ArraySummary(item_type.name, length)
        if length > KEEP_ARRAY_ITEMS or self._kept_items + length > KEEP_TOTAL_ARRAY_ITEMS:
            reader.skip(item_size * length, f"metadata {key}")
            return ArraySummary(item_type.name, length)
        self._kept_items += length
        return list(reader.scalars(_SCALAR_CODES[item_type], length, f"metadata {key}"))


_SCALAR_SIZES: dict[GGUFValueType, int] = {
    value_type: struct.calcsize(fmt) for value_type, fmt in _SCALAR_FORMATS.items()
}


def _alignment(metadata: _Metadata) -> int:
    alignment = metadata.values.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or not 0 < alignment <= MAX_ALIGNMENT:
        raise ModelFileError(
            f"the header is corrupt: it asks for tensor data aligned to {alignment!r} bytes "
            f"(kvchat accepts 1 to {MAX_ALIGNMENT})"
        )
    if alignment & (alignment - 1):
        raise ModelFileError(
            f"the header is corrupt: it asks for tensor data aligned to {alignment} bytes, "
            "which is not a power of two"
        )
    return alignment


def _check_hyperparameters(values: dict[str, object]) -> None:
    """Refuses the few hyperparameters llama.cpp asserts on instead of failing the load.

    Most bad values (a head count that does not match the tensors, say)
    make llama.cpp refuse the file with a message; these abort the process.
    """
    architecture = values.get("general.architecture")
    layers = values.get(f"{architecture}.block_count")
    if isinstance(layers, int) and not 0 < layers <= MAX_LAYERS:
        raise ModelFileError(
            f"the header is corrupt: it says the model has {layers} layers "
            f"({architecture}.block_count); llama.cpp loads 1 to {MAX_LAYERS}"
        )


def _tensor_bytes(shape: tuple[int, ...], type_code: int, name: str) -> tuple[str, int]:
    try:
        ggml_type = GGMLQuantizationType(type_code)
    except ValueError:
        raise ModelFileError(
            f"tensor {name!r} has type {type_code}, which this version of kvchat does not know"
        ) from None
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    if 0 in shape:
        raise ModelFileError(f"the header is corrupt: tensor {name!r} has a dimension of 0")
    count = 1
    for dim in shape:
        count *= dim
    # llama.cpp counts elements in a signed 64-bit integer.
    if count >= MAX_ELEMENTS:
        raise ModelFileError(
            f"the header is corrupt: tensor {name!r} has shape "
            f"{' x '.join(map(str, shape))}, too many elements to count"
        )
    if shape[0] % block_size:
        raise ModelFileError(
            f"the header is corrupt: tensor {name!r} has {shape[0]} columns, "
            f"not a multiple of {ggml_type.name}'s block of {block_size}"
        )
    return ggml_type.name, count // block_size * type_size


def _read_tensor(reader: _Reader, index: int, alignment: int) -> TensorInfo:
    name = reader.string(f"the name of tensor {index}", limit=MAX_TENSOR_NAME_BYTES)
    label = name or f"#{index}"
    n_dims = reader.u32(f"the dimension count of tensor {label!r}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise ModelFileError(
            f"the header is corrupt: tensor {label!r} has {n_dims} dimensions "
            f"(tensors have 1 to {MAX_DIMS})"
        )
    shape = tuple(int(d) for d in reader.scalars("Q", n_dims, f"the shape of {label!r}"))
    type_name, n_bytes = _tensor_bytes(shape, reader.u32(f"the type of {label!r}"), label)
    offset = reader.u64(f"the offset of {label!r}")
    if offset % alignment:
        raise ModelFileError(
            f"the header is corrupt: tensor {label!r} is not aligned to {alignment} bytes"
        )
    return TensorInfo(name, shape, type_name, offset, n_bytes)


def read_gguf(path: str | os.PathLike[str], known: int | None = None) -> GgufInfo:
    """Checks a GGUF file's header and returns what it says.

    Any file at all, however malformed, either passes or gets a
    ModelFileError: the checks cover every length, count and offset that
    llama.cpp would otherwise trust.

    Args:
        path: the file.
        known: how many bytes from the start are real, for a sparse file of
            the model's full size whose header is still being fetched; all
            of the file by default.

    Raises:
        ModelFileError: the file is missing, unreadable, not GGUF, of an
            unsupported version, truncated, or its header is inconsistent.
        HeaderIncompleteError: the header runs past the `known` bytes.
    """
    with _opened(Path(path)) as (fd, size):
        return _parse(Path(path), fd, size, known)


def check_start(path: str | os.PathLike[str]) -> None:
    """What `read_gguf` checks first, without the walk over the header: the
    file is there, a plain file, and GGUF of a version kvchat reads. For a
    caller that leaves the rest to a process of its own (the estimate's dry
    run); a few system calls.

    Raises:
        ModelFileError: as `read_gguf`, for those checks.
    """
    with _opened(Path(path)) as (fd, size):
        _start(fd, size, None)


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[tuple[int, int]]:
    """The file's descriptor and size, for a plain file that is not empty."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ModelFileError(f"the file does not exist ({path})") from None
    except IsADirectoryError:
        raise ModelFileError(f"it is a folder, not a model file ({path})") from None
    except PermissionError:
        raise ModelFileError(f"permission denied: {path} cannot be read") from None
    except OSError as exc:
        raise ModelFileError(f"it cannot be read: {exc.strerror or exc}") from None
    except ValueError:  # a NUL byte in the path
        raise ModelFileError(f"the file name is not valid ({path!r})") from None
    try:
        status = os.fstat(fd)
        if stat.S_ISDIR(status.st_mode):
            raise ModelFileError(f"it is a folder, not a model file ({path})")
        # A FIFO or a device would block or never end; a model is a plain file.
        if not stat.S_ISREG(status.st_mode):
            raise ModelFileError(f"it is not a regular file ({path})")
        if status.st_size == 0:
            raise ModelFileError("not a GGUF file: the file is empty")
        yield fd, status.st_size
    except OSError as exc:
        raise ModelFileError(f"it cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _start(fd: int, size: int, known: int | None) -> tuple[_Reader, int]:
    """A reader past the magic and the version, and the version."""
    head = os.pread(fd, min(64, size if known is None else known), 0)
    if not head.startswith(GGUF_MAGIC):
        if known is not None and len(head) < 64 and GGUF_MAGIC.startswith(head[:4]):
            raise HeaderIncompleteError(64)
        raise ModelFileError(f"not a GGUF file: {describe_start(head)}")
    reader = _Reader(fd, size, known)
    reader.skip(len(GGUF_MAGIC), "the magic")
    version = reader.u32("the version")
    if version not in SUPPORTED_VERSIONS:
        raise ModelFileError(
            f"it is GGUF version {version}; kvchat reads versions "
            f"{' and '.join(map(str, SUPPORTED_VERSIONS))}"
        )
    return reader, version


def _parse(path: Path, fd: int, size: int, known: int | None) -> GgufInfo:
    reader, version = _start(fd, size, known)
    n_tensors = reader.u64("the tensor count")
    n_kv = reader.u64("the metadata count")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV_PAIRS:
        raise ModelFileError(
            f"the header is corrupt: it claims {n_tensors} tensors and {n_kv} metadata entries"
        )

    metadata = _Metadata(reader)
    for index in range(n_kv):
        metadata.read_entry(index)
    alignment = _alignment(metadata)
    _check_hyperparameters(metadata.values)

    tensors: list[TensorInfo] = []
    names: set[str] = set()
    for index in range(n_tensors):
        tensor = _read_tensor(reader, index, alignment)
        if tensor.name in names:
            raise ModelFileError(f"the header is corrupt: tensor {tensor.name!r} appears twice")
        names.add(tensor.name)
        tensors.append(tensor)

    data_offset = -(-reader.pos // alignment) * alignment
    # llama.cpp requires the tensors' data back to back, in table order, each
    # padded to the alignment; anything else is a corrupt or hostile table
    # (overlapping tensors, gaps).
    expected = 0
    for tensor in tensors:
        if tensor.offset != expected:
            raise ModelFileError(
                f"the header is corrupt: tensor {tensor.name!r} starts at offset "
                f"{tensor.offset} of the data, where the tensors before it end at {expected}"
            )
        end = data_offset + tensor.offset + tensor.n_bytes
        if end > size:
            raise ModelFileError(
                f"the file is truncated: tensor {tensor.name!r} ends at byte {end}, "
                f"but the file has {size} bytes (an unfinished download?)"
            )
        expected += -(-tensor.n_bytes // alignment) * alignment
    if known is not None and known < min(data_offset, size):
        # The padding before the data belongs to the header a fetch must bring.
        raise HeaderIncompleteError(min(data_offset, size))
    return GgufInfo(path, version, size, data_offset, metadata.values, tuple(tensors))


def split_part_names(name: str) -> list[str] | None:
    """The file names of every part of a split model, from any part's name; None if not split."""
    match = SPLIT_NAME.match(name)
    if match is None or int(match["count"]) < 1:
        return None
    count = int(match["count"])
    return [f"{match['prefix']}-{no:05d}-of-{count:05d}.gguf" for no in range(1, count + 1)]


def read_model(path: str | os.PathLike[str]) -> GgufInfo:
    """A model's header, all its parts read when it is split: what llama.cpp would load.

    A split model (`split.count` above 1) is opened by its first part, and
    llama.cpp finds the others by name beside it. The answer holds every
    part's tensors (each marked with its part) and the size of all parts.

    Raises:
        ModelFileError: `read_gguf`'s reasons, for any part, or a part that is
            missing or does not belong.
    """
    path = Path(path)
    first = read_gguf(path)
    count = first.metadata.get("split.count")
    if not isinstance(count, int) or count <= 1:
        return first
    names = split_part_names(path.name)
    if names is None or len(names) != count or names[0] != path.name:
        raise ModelFileError(
            f"it is part of a model split into {count} files, and is opened by the first "
            f"part, named like NAME-00001-of-{count:05d}.gguf"
        )
    tensors = list(first.tensors)
    size = first.file_size
    for number, name in enumerate(names[1:], start=1):
        part_path = path.with_name(name)
        if not part_path.exists():
            raise ModelFileError(f"part {number + 1} of {count} is missing ({name})")
        try:
            part = read_gguf(part_path)
        except ModelFileError as exc:
            raise ModelFileError(f"part {number + 1} of {count} ({name}): {exc}") from None
        if part.metadata.get("split.no") != number or part.metadata.get("split.count") != count:
            raise ModelFileError(f"{name} is not part {number + 1} of this model")
        tensors.extend(replace(tensor, part=number) for tensor in part.tensors)
        size += part.file_size
    return replace(first, file_size=size, tensors=tuple(tensors))
