"""The header check: a real model passes, and every kind of bad file gets words."""

from __future__ import annotations

import os
import shutil
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest

from kvchat.engine import gguf_file
from kvchat.engine.client import HostProcess
from kvchat.engine.gguf_file import (
    MAX_STRING_BYTES,
    ArraySummary,
    GgufInfo,
    ModelFileError,
    read_gguf,
)
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


def test_bundled_model_header(model_path: Path) -> None:
    info = read_gguf(model_path)
    assert info.version == 3
    assert info.architecture == "llama"
    assert info.context_length == 8192
    assert len(info.tensors) == 272
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template
    assert info.name == "SmolLM2-135M-Instruct.Q4_1"
    # Every tensor lies inside the file, the last one ending near its end.
    last_end = max(info.data_offset + t.offset + t.n_bytes for t in info.tensors)
    assert info.file_size - 64 <= last_end <= info.file_size


def _write_small_gguf(path: Path, *, rows: int = 8, cols: int = 64) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny test model")
    writer.add_context_length(256)
    writer.add_chat_template("{{ messages[0]['content'] }}")
    writer.add_token_list(["<s>", "a", "b"])
    writer.add_tensor("token_embd.weight", np.ones((rows, cols), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_small_written_model(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    _write_small_gguf(path)
    info = read_gguf(path)
    assert isinstance(info, GgufInfo)
    assert info.context_length == 256
    assert info.metadata["general.name"] == "tiny test model"
    assert info.chat_template == "{{ messages[0]['content'] }}"
    (tensor,) = info.tensors
    assert tensor.name == "token_embd.weight"
    assert tensor.type_name == "F32"
    assert tensor.n_bytes == 8 * 64 * 4
    assert info.parameter_count == 8 * 64


def _expect(path: Path, *fragments: str) -> None:
    with pytest.raises(ModelFileError) as caught:
        read_gguf(path)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message


def test_missing_file(tmp_path: Path) -> None:
    _expect(tmp_path / "nope.gguf", "does not exist")


def test_folder(tmp_path: Path) -> None:
    _expect(tmp_path, "is a folder")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    _expect(path, "not a GGUF file", "empty")


def test_zip_archive(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weights.bin", b"\0" * 100)
    _expect(path, "not a GGUF file: it starts with PK, a zip archive?")


def test_git_lfs_pointer(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    _expect(path, "Git LFS pointer")


def test_html_page(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    _expect(path, "web page")


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("just some notes\n")
    _expect(path, "not a GGUF file", "text file", "just some")


def test_truncated_in_tensor_data(model_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "half.gguf"
    with model_path.open("rb") as source, path.open("wb") as target:
        target.write(source.read(model_path.stat().st_size // 2))
    _expect(path, "truncated", "unfinished download")


def test_truncated_in_header(model_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "stub.gguf"
    with model_path.open("rb") as source:
        path.write_bytes(source.read(4000))
    _expect(path, "truncated or corrupt", "runs past the end of the file")


def _patched_copy(model_path: Path, tmp_path: Path, offset: int, data: bytes) -> Path:
    path = tmp_path / "patched.gguf"
    shutil.copyfile(model_path, path)
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(data)
    return path


def test_unsupported_version(model_path: Path, tmp_path: Path) -> None:
    _expect(_patched_copy(model_path, tmp_path, 4, struct.pack("<I", 99)), "GGUF version 99")


def test_absurd_tensor_count(model_path: Path, tmp_path: Path) -> None:
    path = _patched_copy(model_path, tmp_path, 8, struct.pack("<Q", 1 << 40))
    _expect(path, "header is corrupt", str(1 << 40))


def test_unknown_value_type(tmp_path: Path) -> None:
    path = tmp_path / "odd.gguf"
    key = b"general.odd"
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
    path.write_bytes(header + struct.pack("<I", 77) + b"\0" * 32)
    _expect(path, "unknown value type 77")


def test_string_longer_than_file(tmp_path: Path) -> None:
    path = tmp_path / "long.gguf"
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1000) + b"abc"
    path.write_bytes(header)
    _expect(path, "runs past the end of the file")


def test_tensor_past_end_of_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    _write_small_gguf(path, rows=64, cols=64)
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(size - 100)
    _expect(path, "truncated", "token_embd.weight")


# Files built byte by byte, for the checks a GGUFWriter would never trip.

_U32, _F32, _STRING, _ARRAY, _U8, _I32 = 4, 6, 8, 9, 0, 5


def _text(value: bytes) -> bytes:
    return struct.pack("<Q", len(value)) + value


def _kv(key: str, value_type: int, payload: bytes) -> bytes:
    return _text(key.encode()) + struct.pack("<I", value_type) + payload


def _tensor(name: bytes, dims: tuple[int, ...], type_code: int = 0, offset: int = 0) -> bytes:
    shape = struct.pack(f"<I{len(dims)}Q", len(dims), *dims)
    return _text(name) + shape + struct.pack("<IQ", type_code, offset)


def _raw_gguf(
    path: Path,
    entries: list[bytes],
    tensors: list[bytes] = (),  # type: ignore[assignment]
    data_bytes: int = 256,
    alignment: int = 32,
) -> Path:
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(entries))
    header += b"".join(entries) + b"".join(tensors)
    header += b"\0" * (-len(header) % alignment)
    path.write_bytes(header + b"\0" * data_bytes)
    return path


def test_raw_builder_makes_a_valid_file(tmp_path: Path) -> None:
    # The tests below change one thing each; this proves the rest is valid.
    path = _raw_gguf(
        tmp_path / "ok.gguf",
        [_kv("general.alignment", _U32, struct.pack("<I", 32))],
        [_tensor(b"a", (8,)), _tensor(b"b", (4, 2), offset=32)],
    )
    info = read_gguf(path)
    assert [t.name for t in info.tensors] == ["a", "b"]
    assert [t.n_bytes for t in info.tensors] == [32, 32]


def test_duplicate_key(tmp_path: Path) -> None:
    entry = _kv("general.name", _STRING, _text(b"x"))
    _expect(_raw_gguf(tmp_path / "m.gguf", [entry, entry]), "'general.name' appears twice")


def test_duplicate_tensor_name(tmp_path: Path) -> None:
    tensors = [_tensor(b"w", (8,)), _tensor(b"w", (8,), offset=32)]
    _expect(_raw_gguf(tmp_path / "m.gguf", [], tensors), "tensor 'w' appears twice")


def test_alignment_of_the_wrong_type(tmp_path: Path) -> None:
    # llama.cpp asserts (aborts the process) on an alignment that is not u32.
    entry = _kv("general.alignment", _U8, b"\x20")
    _expect(
        _raw_gguf(tmp_path / "m.gguf", [entry]),
        "'general.alignment' is stored as uint8, where llama.cpp expects uint32",
    )


@pytest.mark.parametrize(
    ("alignment", "fragment"),
    [(48, "not a power of two"), (0, "aligned to 0 bytes"), (1 << 20, "accepts 1 to 65536")],
)
def test_bad_alignment(tmp_path: Path, alignment: int, fragment: str) -> None:
    entry = _kv("general.alignment", _U32, struct.pack("<I", alignment))
    _expect(_raw_gguf(tmp_path / "m.gguf", [entry]), "header is corrupt", fragment)


def test_tensor_offset_not_aligned(tmp_path: Path) -> None:
    tensors = [_tensor(b"w", (8,), offset=4)]
    _expect(_raw_gguf(tmp_path / "m.gguf", [], tensors), "'w' is not aligned to 32 bytes")


def test_overlapping_tensors(tmp_path: Path) -> None:
    tensors = [_tensor(b"a", (16,)), _tensor(b"b", (16,), offset=32)]
    _expect(
        _raw_gguf(tmp_path / "m.gguf", [], tensors),
        "tensor 'b' starts at offset 32 of the data, where the tensors before it end at 64",
    )


def test_gap_between_tensors(tmp_path: Path) -> None:
    tensors = [_tensor(b"a", (8,)), _tensor(b"b", (8,), offset=96)]
    _expect(_raw_gguf(tmp_path / "m.gguf", [], tensors), "'b' starts at offset 96")


@pytest.mark.parametrize(
    ("dims", "fragment"),
    [
        ((), "has 0 dimensions"),
        ((1, 1, 1, 1, 1), "has 5 dimensions"),
        ((8, 0), "has a dimension of 0"),
        ((1 << 32, 1 << 32), "too many elements"),
        ((2**64 - 1,), "too many elements"),
    ],
)
def test_bad_shape(tmp_path: Path, dims: tuple[int, ...], fragment: str) -> None:
    _expect(_raw_gguf(tmp_path / "m.gguf", [], [_tensor(b"w", dims)]), "'w'", fragment)


def test_tensor_name_longer_than_llama_cpp_allows(tmp_path: Path) -> None:
    path = _raw_gguf(tmp_path / "m.gguf", [], [_tensor(b"x" * 64, (8,))])
    _expect(path, "the name of tensor 0", "64 bytes long", "at most 63")


def test_vocabulary_of_the_wrong_type(tmp_path: Path) -> None:
    # llama.cpp reads the token list with an accessor that aborts on another type.
    tokens = _kv("tokenizer.ggml.tokens", _ARRAY, struct.pack("<IQ", _I32, 2) + b"\0" * 8)
    _expect(
        _raw_gguf(tmp_path / "m.gguf", [tokens]),
        "'tokenizer.ggml.tokens' is stored as array of int32, "
        "where llama.cpp expects array of string",
    )


def test_array_longer_than_the_file(tmp_path: Path) -> None:
    entry = _kv("x.scores", _ARRAY, struct.pack("<IQ", _F32, 1 << 24))
    _expect(
        _raw_gguf(tmp_path / "m.gguf", [entry]), "the 16777216 items of 'x.scores'", "runs past"
    )


@pytest.mark.parametrize("window", [64, 4096])
def test_a_vocabulary_the_read_window_cuts_reads_the_same(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    # Tens of thousands of tokens and merges, walked a window at a time.
    whole = read_gguf(model_path)
    monkeypatch.setattr(gguf_file._Reader, "_WINDOW", window)
    assert read_gguf(model_path) == whole


def test_a_vocabulary_item_longer_than_allowed_is_named(tmp_path: Path) -> None:
    items = _text(b"a") + _text(b"b") + struct.pack("<Q", MAX_STRING_BYTES + 1) + b"c" * 64
    tokens = _kv("tokenizer.ggml.tokens", _ARRAY, struct.pack("<IQ", _STRING, 3) + items)
    _expect(
        _raw_gguf(tmp_path / "m.gguf", [tokens]),
        "item 2 of 'tokenizer.ggml.tokens' is 67108865 bytes long",
    )


def test_a_vocabulary_past_the_end_of_the_file_is_named(tmp_path: Path) -> None:
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
    items = _text(b"a") + struct.pack("<Q", 50) + b"bc"
    path = tmp_path / "m.gguf"
    path.write_bytes(
        header + _kv("tokenizer.ggml.tokens", _ARRAY, struct.pack("<IQ", _STRING, 2) + items)
    )
    _expect(path, "item 1 of 'tokenizer.ggml.tokens'", "runs past the end of the file")


def test_kept_arrays_are_bounded_in_total(tmp_path: Path) -> None:
    # Many mid-sized arrays: the first are kept, the rest summarised, not all held.
    entries = [
        _kv(f"k{i}", _ARRAY, struct.pack("<IQ", _U8, 1000) + b"\1" * 1000) for i in range(80)
    ]
    info = read_gguf(_raw_gguf(tmp_path / "m.gguf", entries))
    assert info.metadata["k0"] == [1] * 1000
    assert info.metadata["k79"] == ArraySummary("UINT8", 1000)


def test_fifo_is_not_opened_for_reading_forever(tmp_path: Path) -> None:
    path = tmp_path / "pipe.gguf"
    os.mkfifo(path)
    _expect(path, "not a regular file")


def test_path_with_a_nul_byte() -> None:
    _expect(Path("model\0.gguf"), "not valid")


def test_path_too_long(tmp_path: Path) -> None:
    _expect(tmp_path / ("x" * 300), "cannot be read")


@pytest.mark.parametrize("layers", [0, 513, 2**32 - 1])
def test_layer_count_llama_cpp_would_abort_on(tmp_path: Path, layers: int) -> None:
    entries = [
        _kv("general.architecture", _STRING, _text(b"llama")),
        _kv("llama.block_count", _U32, struct.pack("<I", layers)),
    ]
    _expect(_raw_gguf(tmp_path / "m.gguf", entries), f"{layers} layers", "1 to 512")


# A model file that changes under a loaded model. llama.cpp maps the file
# into memory: a deleted file stays mapped until the model is freed, while a
# truncated one loses the pages past its new end, and touching them raises
# SIGBUS in the engine host. Either way the test process (the window) lives
# on, and the next load of the path says what happened to the file.

HOST_TIMEOUT_S = 60.0


def _host_event(host: HostProcess, *kinds: type) -> Event:
    while True:
        event = host.receive(HOST_TIMEOUT_S)
        assert event is not None, "the engine went silent"
        if isinstance(event, (*kinds, HostExited)):
            return event


@pytest.fixture
def loaded_copy(
    model_factory: ModelFactory, tmp_path: Path, data_dir: Path
) -> Iterator[tuple[HostProcess, Path]]:
    path = tmp_path / "copy.gguf"
    shutil.copyfile(model_factory.path(TINY), path)
    host = HostProcess(data_dir / "logs" / "engine.log")
    try:
        host.send(LoadModel(LoadConfig(str(path))))
        assert isinstance(_host_event(host, ModelLoaded, LoadFailed), ModelLoaded)
        yield host, path
    finally:
        host.close()


def _turn(host: HostProcess, request_id: int) -> Event:
    host.send(Chat(request_id, (ChatMessage("user", "Hi"),), Sampling(max_tokens=4)))
    return _host_event(host, TurnFinished, ChatFailed)


def test_model_file_deleted_while_loaded(loaded_copy: tuple[HostProcess, Path]) -> None:
    host, path = loaded_copy
    path.unlink()
    # The mapping keeps the deleted file's data: chatting goes on.
    assert isinstance(_turn(host, 1), TurnFinished)
    host.send(LoadModel(LoadConfig(str(path))))
    failed = _host_event(host, ModelLoaded, LoadFailed)
    assert isinstance(failed, LoadFailed), failed
    assert failed.message == f"the file does not exist ({path})"
    # The model in memory stays loaded and usable.
    assert failed.loaded is not None
    assert isinstance(_turn(host, 2), TurnFinished)


def test_model_file_truncated_while_loaded(
    loaded_copy: tuple[HostProcess, Path], data_dir: Path
) -> None:
    host, path = loaded_copy
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    outcome = _turn(host, 1)
    if isinstance(outcome, HostExited):
        # The weights past the cut were touched (on Linux with the weights
        # mapped, this is what happens): the host died, and said how. The
        # fixture closes the dead host; the next load goes to a fresh one.
        assert outcome.description.startswith("the engine crashed with SIGBUS"), outcome
        host = HostProcess(data_dir / "logs" / "engine-2.log")
    else:
        # Weights copied off the file (all on a GPU, say) never touch the cut.
        assert isinstance(outcome, TurnFinished), outcome
    try:
        host.send(LoadModel(LoadConfig(str(path))))
        failed = _host_event(host, ModelLoaded, LoadFailed)
        assert isinstance(failed, LoadFailed), failed
        assert "the file is truncated" in failed.message
        assert "unfinished download?" in failed.message
    finally:
        host.close()
