"""The header check: a real model passes, and every kind of bad file gets words."""

from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest

from engine.gguf_file import GgufInfo, ModelFileError, read_gguf


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
