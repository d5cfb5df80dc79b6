"""The marker that keeps a model whose load never finished from loading at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvchat.app.core.load_marker import FILE_NAME, LoadMarker


def test_a_load_is_marked_until_it_finishes(tmp_path: Path) -> None:
    marker = LoadMarker(tmp_path)
    assert marker.read() is None
    marker.begin("/models/big.gguf")
    unfinished = marker.read()
    assert unfinished is not None and unfinished.model_path == "/models/big.gguf"
    assert unfinished.crash == ""
    assert "the load never finished" in unfinished.explain()
    marker.crashed("the engine crashed with SIGSEGV")
    unfinished = marker.read()
    assert unfinished is not None and unfinished.crash == "the engine crashed with SIGSEGV"
    assert unfinished.explain().startswith("big.gguf was not loaded automatically")
    assert "(the engine crashed with SIGSEGV)" in unfinished.explain()
    marker.finish()
    assert marker.read() is None
    assert not (tmp_path / FILE_NAME).exists()


@pytest.mark.parametrize("text", ["", "{", "[]", '"x"', '{"model_path": 1}', '{"started_at": 1}'])
def test_an_unreadable_marker_counts_as_none(tmp_path: Path, text: str) -> None:
    (tmp_path / FILE_NAME).write_text(text, encoding="utf-8")
    assert LoadMarker(tmp_path).read() is None


def test_a_folder_that_refuses_writes_never_stops_a_load(tmp_path: Path) -> None:
    marker = LoadMarker(tmp_path / "missing-folder")
    marker.begin("/models/a.gguf")  # nothing raised
    marker.crashed("x")
    marker.finish()
    assert marker.read() is None
