"""settings.json round trip, and every kind of bad file: kvchat starts anyway."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from kvchat.app.core import settings_file
from kvchat.app.core.settings import Appearance, EngineSettings, Settings
from kvchat.app.core.settings_file import (
    NewerSettingsError,
    SettingsFile,
    read_settings,
    write_settings,
)

WAIT_S = 60.0


def _backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob("settings.json.bad-*"))


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    loaded = read_settings(tmp_path / "settings.json")
    assert loaded.settings == Settings()
    assert loaded.notice == ""


def test_round_trip_and_written_only_when_changed(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    chosen = Settings(
        model_path="/models/a.gguf",
        model_folders=("/models",),
        engine=EngineSettings(
            n_ctx=2048, type_k="q8_0", temperature=0.2, system_prompt="Be brief."
        ),
        appearance=Appearance(theme="dark", chat_width=0, show_thinking=False),
    )
    assert write_settings(path, chosen) is True
    assert read_settings(path) == read_settings(path)
    assert read_settings(path).settings == chosen
    stamp = path.stat().st_mtime_ns
    assert write_settings(path, chosen) is False
    assert path.stat().st_mtime_ns == stamp
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_every_field_has_bounds_described() -> None:
    for model in (Settings, EngineSettings, Appearance):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("", "it is empty"),
        ('{"engine": {"n_ctx": 20', "it is not valid JSON"),
        ("[1, 2, 3]", "it does not hold settings"),
    ],
)
def test_unreadable_file_is_kept_aside(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "settings.json"
    path.write_text(content)
    loaded = read_settings(path)
    assert loaded.settings == Settings()
    assert reason in loaded.notice
    (backup,) = _backups(path)
    assert backup.read_text() == content
    assert backup.name in loaded.notice
    # The cleaned file is in place: the next start says nothing.
    assert read_settings(path).notice == ""


def test_bad_values_are_dropped_and_good_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    original = {
        "model_path": "/models/kept.gguf",
        "engine": {
            "n_ctx": 0,
            "n_gpu_layers": -5,
            "n_threads": "abc",
            "temperature": 0.3,
            "max_tokens": 10**9 * 10**9,
            "system_prompt": "kept",
        },
    }
    path.write_text(json.dumps(original))
    loaded = read_settings(path)
    engine = loaded.settings.engine
    assert loaded.settings.model_path == "/models/kept.gguf"
    assert (engine.temperature, engine.system_prompt) == (0.3, "kept")
    assert (engine.n_ctx, engine.n_gpu_layers, engine.n_threads) == (None, None, None)
    assert engine.max_tokens == EngineSettings().max_tokens
    for field in ("engine.n_ctx (0", "engine.n_gpu_layers (-5", 'engine.n_threads ("abc"'):
        assert field in loaded.notice
    (backup,) = _backups(path)
    assert json.loads(backup.read_text()) == original
    assert read_settings(path).notice == ""


@pytest.mark.parametrize("n_ctx", [-1, 10**9])
def test_context_out_of_range(tmp_path: Path, n_ctx: int) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"engine": {"n_ctx": n_ctx}}))
    loaded = read_settings(path)
    assert loaded.settings.engine.n_ctx is None
    assert f"engine.n_ctx ({n_ctx}" in loaded.notice


def test_unknown_keys_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"schema_version": 1, "colour": "red", "engine": {"top_k": 5}}))
    loaded = read_settings(path)
    assert loaded.settings.engine.top_k == 5
    assert 'colour ("red"' in loaded.notice


def test_a_newer_settings_file_is_kept_as_it_is(tmp_path: Path) -> None:
    """A newer kvchat's file: what this one understands is used, nothing is rewritten."""
    path = tmp_path / "settings.json"
    text = json.dumps({"schema_version": 7, "colour": "red", "engine": {"top_k": 5}})
    path.write_text(text)
    loaded = read_settings(path)
    assert loaded.settings.engine.top_k == 5
    assert loaded.notice.startswith(f"Your settings file {path} was written by a newer version")
    with pytest.raises(NewerSettingsError, match="written by a newer version of kvchat"):
        write_settings(path, loaded.settings.model_copy(update={"model_path": "/m.gguf"}))
    assert path.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]


def test_a_file_from_before_appearance_loads_as_it_is(tmp_path: Path) -> None:
    """A settings file written before the appearance group: its defaults, nothing said."""
    path = tmp_path / "settings.json"
    text = json.dumps({"schema_version": 1, "engine": {"top_k": 5}, "serve_port": 9000})
    path.write_text(text)
    loaded = read_settings(path)
    assert loaded.notice == ""
    assert loaded.settings.appearance == Appearance()
    assert (loaded.settings.engine.top_k, loaded.settings.serve_port) == (5, 9000)
    assert path.read_text() == text  # not rewritten: nothing was wrong
    assert _backups(path) == []


def test_a_bad_appearance_value_loses_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"appearance": {"theme": "blue", "chat_width": 640}}))
    loaded = read_settings(path)
    assert loaded.settings.appearance == Appearance(chat_width=640)
    assert 'appearance.theme ("blue"' in loaded.notice
    assert loaded.notice.count("appearance.") == 1
    assert read_settings(path).notice == ""


def test_an_appearance_that_is_not_a_group_takes_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"appearance": "dark", "engine": {"top_k": 5}}))
    loaded = read_settings(path)
    assert loaded.settings.appearance == Appearance()
    assert loaded.settings.engine.top_k == 5
    assert "appearance (not a group of settings)" in loaded.notice


def test_a_change_is_written_off_the_calling_thread_and_read_before_it_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A disk whose fsync waits until the test lets it go: a slow disk, held.
    held, entered = threading.Event(), threading.Event()
    writers: list[str] = []
    fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        writers.append(threading.current_thread().name)
        entered.set()
        held.wait(WAIT_S)
        fsync(fd)

    monkeypatch.setattr(settings_file.os, "fsync", slow_fsync)
    file = SettingsFile(tmp_path / "settings.json")
    file.change({"model_path": "/models/a.gguf"})
    file.change({"serve_on_localhost": True})
    assert entered.wait(WAIT_S)
    # Both are seen at once, though neither is on disk yet.
    assert not (tmp_path / "settings.json").exists()
    assert file.read().model_path == "/models/a.gguf" and file.read().serve_on_localhost
    held.set()
    assert file.join(WAIT_S)
    stored = read_settings(tmp_path / "settings.json").settings
    assert stored.model_path == "/models/a.gguf" and stored.serve_on_localhost
    assert writers and threading.current_thread().name not in writers


def test_a_change_keeps_what_another_kvchat_wrote_to_other_fields(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    file = SettingsFile(path)
    file.change({"model_path": "/models/a.gguf"})
    assert file.join(WAIT_S)
    write_settings(path, read_settings(path).settings.model_copy(update={"serve_port": 9000}))
    file.change({"serve_on_localhost": True})
    assert file.join(WAIT_S)
    stored = read_settings(path).settings
    assert (stored.model_path, stored.serve_port, stored.serve_on_localhost) == (
        "/models/a.gguf",
        9000,
        True,
    )


def test_a_change_the_disk_refuses_is_reported_and_later_ones_still_land(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"schema_version": 999}))
    file = SettingsFile(path)
    refused: list[OSError] = []
    file.change({"model_path": "/models/a.gguf"}, refused.append)
    assert file.join(WAIT_S)
    assert len(refused) == 1 and isinstance(refused[0], NewerSettingsError)
    assert file.read().model_path is None  # what did not land is not shown either
    path.unlink()
    file.change({"model_path": "/models/b.gguf"}, refused.append)
    assert file.join(WAIT_S)
    assert len(refused) == 1 and read_settings(path).settings.model_path == "/models/b.gguf"
