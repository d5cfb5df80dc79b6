"""The settings dialog with the real bundled model: the projection follows the slider,
and applying a choice saves it and reloads the model with it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication, QFileDialog
from pytestqt.qtbot import QtBot

from kvchat.app.core.settings import Appearance, EngineSettings, Settings
from kvchat.app.core.settings_file import read_settings, settings_path, write_settings
from kvchat.app.presenters.controller import Controller
from kvchat.app.presenters.gui import build_window
from kvchat.app.presenters.settings_flow import SettingsFlow, appearance_of, choice_of
from kvchat.ui.main_window import MainWindow
from kvchat.ui.settings_dialog import AppearanceChoice, SettingsDialog
from kvchat.ui.theme import apply_scheme

WAIT_MS = 60_000


@pytest.fixture
def opened(
    qtbot: QtBot, data_dir: Path
) -> Iterator[tuple[MainWindow, Controller, SettingsFlow, SettingsDialog]]:
    window, controller = build_window(None, EngineSettings(), data_dir)
    if controller.model is None:
        with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS):
            pass
    flow = controller.settings_flow
    assert isinstance(flow, SettingsFlow)
    with qtbot.waitSignal(flow.projection_shown, timeout=WAIT_MS):
        dialog = flow.open()
    yield window, controller, flow, dialog
    dialog.close()
    window.close()
    window.deleteLater()
    qtbot.wait(1)
    _system_colours()


def _system_colours() -> None:
    """The palette is the test session's: a test that chose a theme gives it back."""
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    apply_scheme(app, "system")


def _record_appearance(window: MainWindow, monkeypatch: pytest.MonkeyPatch) -> list[Appearance]:
    """What the window is told to look like, passed on to the window's own method."""
    told: list[Appearance] = []
    original = window.apply_appearance

    def recording(appearance: Appearance) -> None:
        told.append(appearance)
        original(appearance)

    monkeypatch.setattr(window, "apply_appearance", recording)
    return told


def _window_is_dark() -> bool:
    return QApplication.palette().color(QPalette.ColorRole.Window).lightness() < 128


def _cpu_row(dialog: SettingsDialog) -> str:
    label, _bar = dialog._projection_widgets[0]
    return label.text()


def test_context_slider_moves_the_projection(
    qtbot: QtBot, opened: tuple[MainWindow, Controller, SettingsFlow, SettingsDialog]
) -> None:
    _, _, flow, dialog = opened
    first = flow.last_estimate
    assert first is not None
    assert first.projection.n_ctx == 4096
    cpu = first.projection.device("CPU")
    assert cpu.kv_bytes == 4096 * 23040  # SmolLM2-135M: 22.5 KiB a token in f16
    assert "KV 90.0 MiB" in _cpu_row(dialog)

    dialog.context_default.setChecked(False)
    dialog.context.setValue(8192)
    # At once, before any dry run: the KV cache doubles.
    assert "KV 180.0 MiB" in _cpu_row(dialog)
    assert dialog.projection_note.text().startswith("Updating")
    with qtbot.waitSignal(flow.projection_shown, timeout=WAIT_MS):
        pass
    exact = flow.last_estimate
    assert exact is not None and exact.projection.n_ctx == 8192
    assert exact.projection.device("CPU").kv_bytes == 8192 * 23040
    assert dialog.projection_note.text().startswith("It fits.")


def test_apply_saves_and_reloads_with_the_choice(
    qtbot: QtBot,
    opened: tuple[MainWindow, Controller, SettingsFlow, SettingsDialog],
    data_dir: Path,
) -> None:
    window, controller, _flow, dialog = opened
    dialog.context_default.setChecked(False)
    dialog.context.setValue(2048)
    dialog.numbers["temperature"].box.setValue(0.2)
    with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS) as loaded:
        dialog.applied.emit(dialog.choice())
    assert loaded.args[0].n_ctx == 2048
    assert window.context_label.text() == "context 2048 tokens"
    assert controller.settings_file.join(WAIT_MS / 1000)
    saved = json.loads((data_dir / "settings.json").read_text())
    assert saved["engine"]["n_ctx"] == 2048
    assert saved["engine"]["temperature"] == 0.2
    # A sampling-only change applies without reloading the model.
    dialog.numbers["temperature"].box.setValue(0.9)
    dialog.applied.emit(dialog.choice())
    assert controller.settings.temperature == 0.9
    assert controller.model is not None


def test_panel_shows_estimate_beside_actual_after_load(qtbot: QtBot, data_dir: Path) -> None:
    window, controller = build_window(None, EngineSettings(), data_dir)
    # Made once the window has been painted, before the engine starts.
    qtbot.waitUntil(lambda: controller.settings_flow is not None)
    flow = controller.settings_flow
    assert isinstance(flow, SettingsFlow)
    try:
        with qtbot.waitSignal(flow.loaded_estimate, timeout=WAIT_MS) as shown:
            pass
        result = shown.args[1]
        memory = controller.memory_monitor.memory
        assert memory is not None
        (actual,) = memory.buffers
        projected = result.projection.device("CPU")
        # The dry run before the load and llama.cpp's report of the load agree.
        assert projected.weights_bytes == pytest.approx(actual.weights_bytes, rel=0.01)
        assert projected.kv_bytes == pytest.approx(actual.kv_bytes, rel=0.01)
        assert projected.compute_bytes == pytest.approx(actual.compute_bytes, rel=0.10)
        window.memory_panel.refresh()
        text = window.memory_panel.estimate_label.text()
        assert "Estimate / actual" in text
        assert "90.0 / 90.0 MiB" in text  # the KV cache, 4096 tokens
    finally:
        window.close()
        window.deleteLater()
        qtbot.wait(1)


def test_apply_then_ok_makes_one_load(
    qtbot: QtBot, opened: tuple[MainWindow, Controller, SettingsFlow, SettingsDialog]
) -> None:
    """Apply, then OK within a second: the load Apply started is the only one."""
    _window, controller, _flow, dialog = opened
    started: list[object] = []
    original = controller.engine.switch

    def counting_switch(config: object) -> None:
        started.append(config)
        original(config)  # type: ignore[arg-type]

    controller.engine.switch = counting_switch  # type: ignore[method-assign]
    dialog.type_k.setCurrentText("q8_0")
    with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS):
        dialog.applied.emit(dialog.choice())  # Apply
        dialog.applied.emit(dialog.choice())  # OK, before the load has finished
    assert len(started) == 1
    assert controller.settings.type_k == "q8_0"


def test_a_model_picked_with_browse_gets_a_selected_row(
    qtbot: QtBot,
    opened: tuple[MainWindow, Controller, SettingsFlow, SettingsDialog],
    model_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _window, _controller, flow, dialog = opened
    picked = tmp_path / "elsewhere" / "picked.gguf"
    picked.parent.mkdir()
    picked.symlink_to(model_path)
    monkeypatch.setattr(
        QFileDialog, "getOpenFileName", staticmethod(lambda *_args: (str(picked), ""))
    )
    with qtbot.waitSignal(flow.model_described, timeout=WAIT_MS):
        dialog._browse()
    qtbot.waitUntil(lambda: str(picked) in dialog._paths)
    rows = dialog.models.selectionModel().selectedRows()
    assert [dialog._paths[r.row()] for r in rows] == [str(picked)]
    assert dialog.selected_path() == str(picked)


def test_the_fits_column_answers_for_the_choice_on_screen(
    qtbot: QtBot, opened: tuple[MainWindow, Controller, SettingsFlow, SettingsDialog]
) -> None:
    _window, controller, _flow, dialog = opened
    path = controller.model.path  # type: ignore[union-attr]

    def fits() -> str:
        if path not in dialog._paths:
            return ""
        item = dialog.models.item(dialog._paths.index(path), 6)
        return item.text() if item is not None else ""

    qtbot.waitUntil(lambda: fits().startswith("yes ("), timeout=WAIT_MS)
    before = fits()
    dialog.context_default.setChecked(False)
    dialog.context.setValue(8192)
    qtbot.waitUntil(lambda: fits() == "…", timeout=WAIT_MS)
    qtbot.waitUntil(lambda: fits().startswith("yes ("), timeout=WAIT_MS)
    assert fits() != before  # twice the KV cache: a larger total


def test_a_chat_template_chosen_for_a_model_is_saved_and_loaded_with_it(
    qtbot: QtBot,
    opened: tuple[MainWindow, Controller, SettingsFlow, SettingsDialog],
    data_dir: Path,
) -> None:
    _window, controller, _flow, dialog = opened
    path = controller.model.path  # type: ignore[union-attr]
    dialog.template.setCurrentIndex(dialog.template.findData("llama.cpp:chatml"))
    with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS) as loaded:
        dialog.applied.emit(dialog.choice())
    assert loaded.args[0].chat_template_source == "llama.cpp's chatml (chosen in settings)"
    assert controller.settings_file.join(WAIT_MS / 1000)
    saved = json.loads((data_dir / "settings.json").read_text())
    assert saved["engine"]["chat_templates"] == {path: "llama.cpp:chatml"}
    # Back to the model's own: the entry goes, and the model's template is used.
    dialog.template.setCurrentIndex(0)
    with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS) as loaded:
        dialog.applied.emit(dialog.choice())
    assert loaded.args[0].chat_template_source == "model"
    assert controller.settings_file.join(WAIT_MS / 1000)
    assert json.loads((data_dir / "settings.json").read_text())["engine"]["chat_templates"] == {}


def test_budgets_for_kept_states_are_saved_without_a_reload(
    qtbot: QtBot,
    opened: tuple[MainWindow, Controller, SettingsFlow, SettingsDialog],
    data_dir: Path,
) -> None:
    _window, controller, flow, dialog = opened
    assert dialog.numbers["kv_ram_budget_mib"].box.text() == "auto"
    dialog.numbers["kv_ram_budget_mib"].box.setValue(64)
    dialog.numbers["kv_disk_budget_mib"].box.setValue(0)
    loads: list[object] = []
    controller.engine.load_progress.connect(loads.append)
    flow.apply(dialog.choice())
    qtbot.wait(300)
    assert loads == []  # the next load takes them
    assert controller.settings.kv_ram_budget_mib == 64
    assert controller.settings.kv_disk_budget_mib == 0
    assert controller.settings_file.join(WAIT_MS / 1000)
    stored = read_settings(settings_path(data_dir)).settings.engine
    assert (stored.kv_ram_budget_mib, stored.kv_disk_budget_mib) == (64, 0)
    assert controller.settings.load_config("m").kv_ram_budget_bytes == 64 * 1024 * 1024


def test_settings_the_disk_refuses_still_apply_and_say_so(
    qtbot: QtBot,
    opened: tuple[MainWindow, Controller, SettingsFlow, SettingsDialog],
    data_dir: Path,
) -> None:
    window, controller, flow, dialog = opened
    assert controller.settings_file.join(WAIT_MS / 1000)
    # A newer kvchat's file is never written over: the writer refuses it.
    newer = '{"schema_version": 999, "engine": {"temperature": 0.3}}'
    settings_path(data_dir).write_text(newer)
    dialog.numbers["temperature"].box.setValue(0.7)
    flow.apply(dialog.choice())
    assert controller.settings.temperature == 0.7
    qtbot.waitUntil(lambda: "could not be saved" in window.banner.text(), timeout=WAIT_MS)
    assert "newer version of kvchat" in window.banner.text()
    assert settings_path(data_dir).read_text() == newer


def test_the_dialogs_appearance_is_the_settings_one() -> None:
    chosen = Appearance(theme="dark", chat_width=0, show_thinking=False)
    choice = choice_of("/m.gguf", EngineSettings(), chosen)
    assert choice.appearance == AppearanceChoice("dark", 0, False)
    assert appearance_of(choice) == chosen
    # Without one (a model loaded from Get models…), the choice says nothing of the look.
    assert appearance_of(choice_of("/m.gguf", EngineSettings())) is None


def test_apply_saves_the_appearance_and_shows_it(
    opened: tuple[MainWindow, Controller, SettingsFlow, SettingsDialog],
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    window, controller, flow, dialog = opened
    told = _record_appearance(window, monkeypatch)
    dialog.theme.setCurrentIndex(dialog.theme.findData("dark"))
    dialog.chat_width.set_value(600)
    dialog.show_thinking.setChecked(False)
    flow.apply(dialog.choice())
    chosen = Appearance(theme="dark", chat_width=600, show_thinking=False)
    assert told == [chosen]
    assert _window_is_dark()
    assert controller.settings_file.join(WAIT_MS / 1000)
    assert read_settings(settings_path(data_dir)).settings.appearance == chosen
    # A choice made without the dialog (Get models… loads a model) keeps it.
    flow.apply(choice_of(controller.model.path, controller.settings))  # type: ignore[union-attr]
    assert told == [chosen]
    assert controller.settings_file.join(WAIT_MS / 1000)
    assert read_settings(settings_path(data_dir)).settings.appearance == chosen


def test_the_saved_appearance_is_applied_at_start(
    qtbot: QtBot, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = Appearance(theme="dark", chat_width=500)
    write_settings(settings_path(data_dir), Settings(appearance=saved))
    window, controller = build_window(None, EngineSettings(), data_dir)
    told = _record_appearance(window, monkeypatch)  # before the flows are made
    try:
        qtbot.waitUntil(lambda: controller.settings_flow is not None, timeout=WAIT_MS)
        assert told == [saved]
        assert _window_is_dark()
    finally:
        window.close()
        window.deleteLater()
        qtbot.wait(1)
        _system_colours()
