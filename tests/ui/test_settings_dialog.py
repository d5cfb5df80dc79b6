"""The settings dialog gives back exactly what it was given, for every control,
and takes its ranges from the settings' fields."""

from __future__ import annotations

import dataclasses

import pytest
from PySide6.QtWidgets import QGroupBox
from pytestqt.qtbot import QtBot

from kvchat.app.core.settings import Appearance, EngineSettings
from kvchat.ui.settings_dialog import AppearanceChoice, Choice, ModelRow, SettingsDialog
from tests.ui.field_bounds import spin_box_range

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
    appearance=AppearanceChoice(theme="dark", chat_width=640, show_thinking=False),
)


def _dialog(qtbot: QtBot, choice: Choice) -> SettingsDialog:
    dialog = SettingsDialog(choice, 8, EngineSettings, Appearance)
    qtbot.addWidget(dialog)
    return dialog


@pytest.mark.parametrize(
    "saved",
    [
        SAVED,
        dataclasses.replace(SAVED, n_ctx=6000),  # off the slider's steps, as --ctx allows
        dataclasses.replace(SAVED, n_ctx=32768, n_gpu_layers=30),
        dataclasses.replace(SAVED, n_ctx=None, n_gpu_layers=None, n_threads=None, seed=None),
        dataclasses.replace(SAVED, chat_template="llama.cpp:llama3"),
        dataclasses.replace(SAVED, chat_template="{{ messages[0]['content'] }}"),
        dataclasses.replace(SAVED, appearance=AppearanceChoice("light", 0, True)),
        dataclasses.replace(SAVED, appearance=AppearanceChoice("system", 3840, True)),
        dataclasses.replace(SAVED, kv_ram_budget_mib=0, kv_disk_budget_mib=1 << 24),
    ],
)
def test_every_setting_comes_back_as_it_was_saved(qtbot: QtBot, saved: Choice) -> None:
    dialog = _dialog(qtbot, saved)
    row = ModelRow("/models/a.gguf", "a", "llama", "1B", "Q4_K_M", "1 GiB", 32768)
    dialog.set_models([row], "/models/a.gguf")
    dialog.set_template_names(("chatml", "llama3"), "llama.cpp:")
    assert dialog.choice() == saved
    # The model's limits arrive after the dialog opened (its header is read
    # off the GUI thread): what was saved is still there.
    dialog.set_model_limits(trained_context=32768, layers=30, offload=True)
    assert dialog.choice() == saved


def test_each_model_keeps_its_own_chat_template(qtbot: QtBot) -> None:
    dialog = _dialog(qtbot, SAVED)
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


def test_the_appearance_section_shows_and_gives_back_the_look(qtbot: QtBot) -> None:
    dialog = _dialog(qtbot, SAVED)
    assert dialog.theme.currentData() == "dark"
    assert dialog.chat_width.box.text() == "640 px"
    assert not dialog.show_thinking.isChecked()
    dialog.theme.setCurrentIndex(dialog.theme.findData("light"))
    dialog.chat_width.box.setValue(0)
    dialog.show_thinking.setChecked(True)
    assert dialog.chat_width.box.text() == "no limit"
    assert dialog.choice().appearance == AppearanceChoice("light", 0, True)
    # The choices are the field's, in its order.
    offered = [dialog.theme.itemData(i) for i in range(dialog.theme.count())]
    assert offered == ["system", "light", "dark"]


def test_a_choice_without_appearance_leaves_it_out(qtbot: QtBot) -> None:
    """A choice made elsewhere (a model loaded from Get models…) says nothing of the look."""
    dialog = _dialog(qtbot, dataclasses.replace(SAVED, appearance=None))
    assert dialog.appearance_box.isHidden()
    assert dialog.choice().appearance is None


def test_sampling_and_system_prompt_are_labelled_as_the_defaults(qtbot: QtBot) -> None:
    dialog = _dialog(qtbot, SAVED)
    titles = {box.title(): box for box in dialog.findChildren(QGroupBox)}
    defaults = titles["Defaults for new conversations"]
    assert defaults.isAncestorOf(dialog.system_prompt)
    assert defaults.isAncestorOf(dialog.numbers["temperature"].box)
    assert "Appearance" in titles


def test_every_spin_box_range_is_its_fields(qtbot: QtBot) -> None:
    dialog = _dialog(qtbot, SAVED)
    for name, setting in dialog.numbers.items():
        box = setting.box
        assert (box.minimum(), box.maximum()) == pytest.approx(
            spin_box_range(EngineSettings, name)
        ), name
        assert box.toolTip().startswith(EngineSettings.model_fields[name].description or "?")
    box = dialog.chat_width.box
    assert (box.minimum(), box.maximum()) == spin_box_range(Appearance, "chat_width")
    # The exclusive bounds, spelled out: top_p > 0, seed < 2**32.
    assert dialog.numbers["top_p"].box.minimum() == pytest.approx(0.001)
    assert dialog.numbers["seed"].box.maximum() == 2**32 - 1
