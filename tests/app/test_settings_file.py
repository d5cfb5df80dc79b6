"""settings.json round trip, and every kind of bad file: kvchat starts anyway."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvchat.app.core.settings import Appearance, EngineSettings, Settings
from kvchat.app.core.settings_file import NewerSettingsError, read_settings, write_settings


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
