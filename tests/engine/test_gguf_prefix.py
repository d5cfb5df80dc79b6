"""Reading a header from its first bytes only, and a model split into parts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kvchat.engine.gguf_file import (
    HeaderIncompleteError,
    ModelFileError,
    read_gguf,
    read_model,
    split_part_names,
)
from tests.hub_fixture import write_split
from tests.model_factory import TINY, write_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(TINY, tmp_path_factory.mktemp("prefix") / "tiny.gguf")


def _sparse_copy(source: Path, target: Path, known: int) -> Path:
    """The first `known` bytes of `source` in a file of its full size, the rest a hole."""
    with open(source, "rb") as whole, open(target, "wb") as sparse:
        sparse.truncate(source.stat().st_size)
        sparse.write(whole.read(known))
    return target


def test_a_prefix_says_how_much_more_it_needs_until_the_header_is_whole(
    tiny: Path, tmp_path: Path
) -> None:
    full = read_gguf(tiny)
    known, steps = 64, 0
    while True:
        try:
            found = read_gguf(_sparse_copy(tiny, tmp_path / "part.gguf", known), known=known)
            break
        except HeaderIncompleteError as exc:
            assert exc.needed > known
            known, steps = exc.needed, steps + 1
    assert steps > 1
    assert known == full.data_offset
    assert found.metadata == full.metadata and found.tensors == full.tensors


def test_a_prefix_of_another_format_is_refused_at_once(tmp_path: Path) -> None:
    zip_start = tmp_path / "model.gguf"
    zip_start.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(ModelFileError, match="not a GGUF file: it starts with PK"):
        read_gguf(zip_start, known=64)


def test_a_split_model_reads_as_one_and_a_missing_part_is_named(tiny: Path, tmp_path: Path) -> None:
    parts = write_split(tiny, tmp_path / "tiny-Q8_0.gguf", 3)
    assert [p.name for p in parts] == split_part_names(parts[1].name)
    whole = read_model(parts[0])
    assert len(whole.tensors) == len(read_gguf(tiny).tensors)
    assert whole.file_size == sum(p.stat().st_size for p in parts)
    assert {t.part for t in whole.tensors} == {0, 1, 2}
    with pytest.raises(ModelFileError, match="opened by the first part"):
        read_model(parts[1])
    shutil.move(parts[2], tmp_path / "elsewhere.gguf")
    with pytest.raises(ModelFileError, match=r"part 3 of 3 is missing \(tiny-Q8_0-00003-of-00003"):
        read_model(parts[0])
