"""The settings dialog gives back exactly what it was given, for every control."""

from __future__ import annotations

import dataclasses

import pytest
from pytestqt.qtbot import QtBot

from kvchat.ui.settings_dialog import Choice, ModelRow, SettingsDialog

SAVED = Choice(
    model_path="/models/a.gguf",
    n_ctx=8192,
    n_gpu_layers=17,
    n_threads=3,
    n_batch=1024,
    flash_attention="on",
    type_k="q8_0",
    type_v="q4_0",
    temperature=0.35,
    top_p=0.8,
    top_k=33,
    min_p=0.07,
    repeat_penalty=1.15,
    max_tokens=1234,
    seed=42,
    system_prompt="Be brief.\nAnd kind.",
)


@pytest.mark.parametrize(
    "saved",
    [
        SAVED,
        dataclasses.replace(SAVED, n_ctx=6000),  # off the slider's steps, as --ctx allows
        dataclasses.replace(SAVED, n_ctx=32768, n_gpu_layers=30),
        dataclasses.replace(SAVED, n_ctx=None, n_gpu_layers=None, n_threads=None, seed=None),
    ],
)
def test_every_setting_comes_back_as_it_was_saved(qtbot: QtBot, saved: Choice) -> None:
    dialog = SettingsDialog(saved, max_threads=8)
    qtbot.addWidget(dialog)
    row = ModelRow("/models/a.gguf", "a", "llama", "1B", "Q4_K_M", "1 GiB", 32768)
    dialog.set_models([row], "/models/a.gguf")
    assert dialog.choice() == saved
    # The model's limits arrive after the dialog opened (its header is read
    # off the GUI thread): what was saved is still there.
    dialog.set_model_limits(trained_context=32768, layers=30, offload=True)
    assert dialog.choice() == saved
