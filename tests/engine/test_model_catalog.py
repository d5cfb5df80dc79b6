"""Model discovery over a temporary tree with real and fake GGUF files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kvchat.engine.model_catalog import find_models


@pytest.fixture
def tree(tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    for env in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(env, raising=False)
    hub = home / ".cache/huggingface/hub/models--org--smol/snapshots/abc"
    hub.mkdir(parents=True)
    (hub / "smol-q4.gguf").symlink_to(model_path)
    studio = home / ".lmstudio/models/org/repo"
    studio.mkdir(parents=True)
    shutil.copyfile(model_path, studio / "copy.gguf")
    (studio / "fake.gguf").write_bytes(b"PK\x03\x04 not a model")
    (studio / "big-00002-of-00003.gguf").write_bytes(b"GGUF")
    (studio / "readme.txt").write_text("not a model")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "empty.gguf").write_bytes(b"")
    return home


def test_finds_models_in_the_usual_places(tree: Path, tmp_path: Path, model_path: Path) -> None:
    entries = find_models([tmp_path / "mine"], home=tree)
    by_name = {Path(e.path).name: e for e in entries}
    # The bundled model comes first; the hub's symlink to it is the same file, listed once.
    assert entries[0].source == "bundled"
    assert entries[0].path == str(model_path)
    assert "smol-q4.gguf" not in by_name
    assert set(by_name) == {model_path.name, "copy.gguf", "fake.gguf", "empty.gguf"}

    copy = by_name["copy.gguf"]
    assert copy.source == "LM Studio"
    assert (copy.architecture, copy.quantization, copy.context_length) == ("llama", "Q4_1", 8192)
    assert copy.parameter_count == 134_515_008
    assert copy.size_bytes == model_path.stat().st_size
    assert copy.problem == ""

    assert by_name["fake.gguf"].problem == "not a GGUF file: it starts with PK, a zip archive?"
    assert by_name["empty.gguf"].source == "your folder"
    assert "empty" in by_name["empty.gguf"].problem


def test_hub_cache_from_the_environment(
    tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = tmp_path / "elsewhere"
    hub.mkdir()
    shutil.copyfile(model_path, hub / "moved.gguf")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    entries = find_models(home=tmp_path / "nobody")
    assert [e.source for e in entries if e.path.endswith("moved.gguf")] == ["Hugging Face cache"]
