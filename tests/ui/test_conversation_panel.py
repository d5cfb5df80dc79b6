"""One conversation's own settings: shown over the defaults and marked, edits
announced once finished with exactly the values that differ, ranges read
from the settings' fields."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
from PySide6.QtCore import QEvent, Qt
from PySide6.QtGui import QFocusEvent
from PySide6.QtWidgets import QApplication, QDoubleSpinBox, QScrollArea, QSpinBox
from pytestqt.qtbot import QtBot

from kvchat.app.core.settings import SAMPLING_FIELDS, EngineSettings
from kvchat.ui.conversation_panel import SYSTEM_PROMPT, ConversationPanel
from tests.ui.field_bounds import spin_box_range

DEFAULTS = EngineSettings(system_prompt="Be kind.", temperature=0.7, top_k=40)
Changes = list[tuple[str, dict[str, object]]]


@pytest.fixture
def panel(qtbot: QtBot) -> ConversationPanel:
    panel = ConversationPanel()
    qtbot.addWidget(panel)
    panel.resize(300, 600)
    return panel


def _record(panel: ConversationPanel) -> Changes:
    changes: Changes = []
    panel.changed.connect(lambda prompt, overrides: changes.append((prompt, overrides)))
    return changes


def _show(
    panel: ConversationPanel,
    overrides: Mapping[str, object],
    model: str = "a.gguf",
    loaded: str = "a.gguf",
) -> None:
    panel.show_conversation("Be brief.", overrides, DEFAULTS, model, loaded)


def _marked(panel: ConversationPanel) -> set[str]:
    return {name for name, label in panel.labels.items() if label.property("changed") is True}


def _finish(panel: ConversationPanel, name: str, value: float | None) -> None:
    """Types a value into a box the way a person does: set, then Enter or leaving it."""
    panel.fields[name].set_value(value)
    panel.fields[name].box.editingFinished.emit()


def test_a_conversation_shows_its_own_values_over_the_defaults_marked(
    panel: ConversationPanel,
) -> None:
    _show(panel, {"temperature": 0.3, "seed": 7})
    values = {name: setting.value() for name, setting in panel.fields.items()}
    assert values == {
        "temperature": 0.3,
        "top_k": 40,
        "top_p": 0.95,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
        "max_tokens": 1024,
        "seed": 7,
    }
    assert panel.system_prompt.toPlainText() == "Be brief."
    assert _marked(panel) == {"temperature", "seed", SYSTEM_PROMPT}
    assert "the default (in Settings) is 0.70" in panel.labels["temperature"].toolTip()
    assert "the default (in Settings) is random" in panel.labels["seed"].toolTip()
    assert "“Be kind.”" in panel.labels[SYSTEM_PROMPT].toolTip()
    assert "The default, 40," in panel.labels["top_k"].toolTip()
    assert panel.reset_button.isEnabled()


def test_an_edit_announces_exactly_the_values_that_differ(panel: ConversationPanel) -> None:
    _show(panel, {"temperature": 0.3})
    changes = _record(panel)
    _finish(panel, "top_k", 50)
    assert changes == [("Be brief.", {"temperature": 0.3, "top_k": 50})]
    assert type(changes[0][1]["top_k"]) is int
    assert "top_k" in _marked(panel)
    # Back to the default: no longer this conversation's own.
    _finish(panel, "top_k", 40)
    assert changes[-1] == ("Be brief.", {"temperature": 0.3})
    assert "top_k" not in _marked(panel)
    # Leaving a box without changing it says nothing new.
    panel.fields["top_k"].box.editingFinished.emit()
    assert len(changes) == 2


def test_a_random_seed_over_a_fixed_default_is_an_override(panel: ConversationPanel) -> None:
    defaults = DEFAULTS.model_copy(update={"seed": 42})
    panel.show_conversation("", {}, defaults, "a", "a")
    changes = _record(panel)
    _finish(panel, "seed", None)
    assert panel.fields["seed"].box.text() == "random"
    assert changes == [("", {"seed": None})]


def test_arrow_steps_are_announced_once_after_a_pause(
    qtbot: QtBot, panel: ConversationPanel
) -> None:
    _show(panel, {})
    changes = _record(panel)
    box = panel.fields["top_k"].box
    for _ in range(3):
        box.stepUp()
    assert changes == []  # not per step
    assert "top_k" in _marked(panel)  # but marked at once
    with qtbot.waitSignal(panel.changed) as blocker:
        pass
    assert blocker.args == ["Be brief.", {"top_k": 43}]
    assert changes == [("Be brief.", {"top_k": 43})]


def test_typing_a_system_prompt_is_announced_when_it_is_left(
    qtbot: QtBot, panel: ConversationPanel
) -> None:
    _show(panel, {})
    changes = _record(panel)
    panel.system_prompt.moveCursor(panel.system_prompt.textCursor().MoveOperation.End)
    qtbot.keyClicks(panel.system_prompt, " Very.")
    assert changes == []  # never per keystroke
    QApplication.sendEvent(
        panel.system_prompt, QFocusEvent(QEvent.Type.FocusOut, Qt.FocusReason.TabFocusReason)
    )
    assert changes == [("Be brief. Very.", {})]


def test_a_pause_in_typing_announces_the_system_prompt(
    qtbot: QtBot, panel: ConversationPanel
) -> None:
    _show(panel, {})
    qtbot.keyClicks(panel.system_prompt, "x")
    with qtbot.waitSignal(panel.changed) as blocker:
        pass
    assert blocker.args[0] == "xBe brief."


def test_use_the_defaults_clears_this_conversations_changes(panel: ConversationPanel) -> None:
    _show(panel, {"temperature": 0.3, "max_tokens": 99})
    changes = _record(panel)
    panel.reset_button.click()
    assert changes == [("Be kind.", {})]
    assert panel.fields["temperature"].value() == 0.7
    assert panel.fields["max_tokens"].value() == 1024
    assert _marked(panel) == set()
    assert not panel.reset_button.isEnabled()
    # The conversation's own prompt is one undo away.
    panel.system_prompt.undo()
    assert panel.system_prompt.toPlainText() == "Be brief."


def test_the_ranges_are_the_settings_fields(panel: ConversationPanel) -> None:
    panel.set_new_conversation(DEFAULTS)
    assert tuple(panel.fields) == SAMPLING_FIELDS
    for name, setting in panel.fields.items():
        low, high = spin_box_range(EngineSettings, name)
        assert (setting.box.minimum(), setting.box.maximum()) == pytest.approx((low, high)), name
        description = EngineSettings.model_fields[name].description
        assert description and description in setting.box.toolTip()
    # Past a C int, the seed is held in a double box, exactly.
    assert isinstance(panel.fields["seed"].box, QDoubleSpinBox)
    assert isinstance(panel.fields["top_k"].box, QSpinBox)
    _finish(panel, "seed", 2**32 - 1)
    assert panel.fields["seed"].value() == 2**32 - 1


def test_the_load_button_shows_only_when_the_models_differ(
    qtbot: QtBot, panel: ConversationPanel
) -> None:
    _show(panel, {}, model="a.gguf", loaded="a.gguf")
    assert panel.model_box.isVisibleTo(panel)
    assert not panel.load_button.isVisibleTo(panel)
    assert not panel.model_note.isVisibleTo(panel)

    _show(panel, {}, model="a.gguf", loaded="b.gguf")
    assert panel.load_button.isVisibleTo(panel)
    assert panel.load_button.text() == "Load a.gguf"
    assert panel.model_note.text() == "Replies now come from b.gguf, the model loaded now."
    with qtbot.waitSignal(panel.load_model_requested):
        panel.load_button.click()

    _show(panel, {}, model="a.gguf", loaded="")
    assert panel.model_note.text() == "No model is loaded now."


def test_a_long_model_name_fits_a_narrow_panel(qtbot: QtBot, panel: ConversationPanel) -> None:
    name = "Qwen2.5-Coder-32B-Instruct-abliterated-Q4_K_M-00001-of-00003.gguf"
    _show(panel, {"seed": 4_000_000_000}, model=name, loaded="b.gguf")
    panel.resize(260, 600)
    panel.show()
    qtbot.waitExposed(panel)
    assert panel.minimumSizeHint().width() <= 260
    assert panel.load_button.text() != f"Load {name}"  # shortened…
    assert panel.load_button.text().startswith("Load Qwen")
    assert panel.load_button.toolTip() == f"Load {name} and reply with it again"  # …not lost
    assert (
        panel.load_button.fontMetrics().horizontalAdvance(panel.load_button.text())
        < panel.load_button.width()
    )


def test_everything_fits_the_side_of_a_900_by_650_window(
    qtbot: QtBot, panel: ConversationPanel
) -> None:
    """The dock beside the chat is about 500 px tall there: no scrolling, the
    system prompt takes what the rows leave."""
    _show(panel, {}, model="a.gguf", loaded="b.gguf")
    panel.resize(300, 500)
    panel.show()
    qtbot.waitExposed(panel)
    scroll = panel.findChild(QScrollArea)
    assert scroll is not None
    assert scroll.widget().height() == scroll.viewport().height()
    assert scroll.verticalScrollBar().maximum() == 0
    assert panel.system_prompt.height() >= 4 * panel.system_prompt.fontMetrics().lineSpacing()


def test_a_new_conversation_shows_the_defaults_and_takes_edits(panel: ConversationPanel) -> None:
    panel.set_new_conversation(DEFAULTS)
    assert panel.title.text() == "The next conversation"
    assert not panel.model_box.isVisibleTo(panel)
    assert panel.system_prompt.toPlainText() == "Be kind."
    assert _marked(panel) == set()
    changes = _record(panel)
    _finish(panel, "temperature", 1.25)
    assert changes == [("Be kind.", {"temperature": 1.25})]
    # Edits already made for it show again, marked.
    panel.set_new_conversation(DEFAULTS, "Be terse.", {"temperature": 1.25})
    assert panel.fields["temperature"].value() == 1.25
    assert _marked(panel) == {"temperature", SYSTEM_PROMPT}


def test_values_that_are_not_numbers_are_left_out(panel: ConversationPanel) -> None:
    _show(panel, {"temperature": "hot", "top_k": True, "min_p": math.nan, "colour": 3})
    assert panel.fields["temperature"].value() == 0.7
    assert panel.fields["top_k"].value() == 40
    assert panel.fields["min_p"].value() == 0.05
    assert _marked(panel) == {SYSTEM_PROMPT}


def test_showing_the_same_conversation_again_keeps_an_edit_under_way(
    qtbot: QtBot, panel: ConversationPanel
) -> None:
    _show(panel, {"temperature": 0.3})
    changes = _record(panel)
    qtbot.keyClicks(panel.system_prompt, "x")
    # The loaded model changed while the person typed: the same conversation, told
    # again (a stored value equal to its default is no change of its own).
    _show(panel, {"temperature": 0.3, "top_k": 40}, loaded="b.gguf")
    assert panel.system_prompt.toPlainText() == "xBe brief."
    assert panel.load_button.isVisibleTo(panel)
    # Another conversation: the unfinished edit was for the one before, and is not announced.
    panel.show_conversation("Other.", {}, DEFAULTS, "c.gguf", "c.gguf")
    assert panel.system_prompt.toPlainText() == "Other."
    assert panel.title.text() == "This conversation"
    QApplication.sendEvent(
        panel.system_prompt, QFocusEvent(QEvent.Type.FocusOut, Qt.FocusReason.TabFocusReason)
    )
    assert changes == []
