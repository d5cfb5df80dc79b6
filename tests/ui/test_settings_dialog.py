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
        dataclasses.replace(SAVED, chat_template="llama.cpp:llama3"),
        dataclasses.replace(SAVED, chat_template="{{ messages[0]['content'] }}"),
    ],
)
def test_every_setting_comes_back_as_it_was_saved(qtbot: QtBot, saved: Choice) -> None:
    dialog = SettingsDialog(saved, max_threads=8)
    qtbot.addWidget(dialog)
    row = ModelRow("/models/a.gguf", "a", "llama", "1B", "Q4_K_M", "1 GiB", 32768)
    dialog.set_models([row], "/models/a.gguf")
    dialog.set_template_names(("chatml", "llama3"), "llama.cpp:")
    assert dialog.choice() == saved
    # The model's limits arrive after the dialog opened (its header is read
    # off the GUI thread): what was saved is still there.
    dialog.set_model_limits(trained_context=32768, layers=30, offload=True)
    assert dialog.choice() == saved


def test_each_model_keeps_its_own_chat_template(qtbot: QtBot) -> None:
    dialog = SettingsDialog(SAVED, max_threads=8)
    qtbot.addWidget(dialog)
    dialog.set_template_names(("chatml", "gemma"), "llama.cpp:")
    rows = [
        ModelRow(path, path[-6:-5], "llama", "1B", "Q4", "1 GiB", 4096)
        for path in ("/models/a.gguf", "/models/b.gguf")
    ]
    dialog.set_models(rows, "/models/a.gguf")
    dialog.set_saved_templates({"/models/b.gguf": "llama.cpp:gemma"})
    assert dialog.choice().chat_template == ""
    dialog.template.setCurrentIndex(dialog.template.findData("llama.cpp:chatml"))
    assert dialog.choice().chat_template == "llama.cpp:chatml"
    dialog.models.selectRow(1)
    assert dialog.choice().chat_template == "llama.cpp:gemma"
    dialog.models.selectRow(0)
    assert dialog.choice().chat_template == "llama.cpp:chatml"
