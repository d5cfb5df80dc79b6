from pathlib import Path

import pytest
from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtWidgets import QFileDialog
from pytestqt.qtbot import QtBot

from kvchat.ui.main_window import MainWindow


def test_message_waits_while_the_model_loads(qtbot: QtBot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    sent: list[str] = []
    window.message_submitted.connect(sent.append)
    window.show_loading("model.gguf")
    assert window.loading_panel.isVisibleTo(window)
    qtbot.keyClicks(window.composer, "early question")
    qtbot.keyClick(window.composer, Qt.Key.Key_Return)
    assert sent == []
    assert window.composer.toPlainText() == "early question"
    window.set_loading_progress(0.5)
    # Shown at the loading timer's next tick.
    qtbot.waitUntil(lambda: window.loading_bar.value() == 500)
    assert "50%" in window.loading_label.text()

    window.show_model("model", "details", "context 4096 tokens")
    assert not window.loading_panel.isVisibleTo(window)
    qtbot.keyClick(window.composer, Qt.Key.Key_Return)
    assert sent == ["early question"]
    assert window.model_label.text() == "model"
    assert window.context_label.text() == "context 4096 tokens"


def test_stop_only_while_busy(qtbot: QtBot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    window.show_model("model", "", "")
    stops: list[bool] = []
    window.stop_requested.connect(lambda: stops.append(True))
    window.stop_action.trigger()
    assert stops == []
    window.set_busy(True)
    assert not window.send_button.isEnabled()
    window.stop_action.trigger()
    qtbot.mouseClick(window.stop_button, Qt.MouseButton.LeftButton)
    assert stops == [True, True]
    window.set_busy(False)
    assert window.send_button.isEnabled()
    assert not window.stop_button.isEnabled()


def test_editing_a_message_resends_it_under_its_key(qtbot: QtBot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    window.show_model("model", "", "")
    window.chat_view.add_message("You", "first try", from_person=True, key="u1")
    edits: list[tuple[str, str]] = []
    sent: list[str] = []
    window.message_edited.connect(lambda key, text: edits.append((key, text)))
    window.message_submitted.connect(sent.append)
    window.chat_view.edit_requested.emit("u1")
    assert window.composer.toPlainText() == "first try"
    assert window.editing_key == "u1"
    assert window.edit_label.isVisibleTo(window)
    qtbot.keyClicks(window.composer, ", better")
    qtbot.keyClick(window.composer, Qt.Key.Key_Return)
    assert edits == [("u1", "first try, better")]
    assert sent == []
    window.accept_message()
    assert window.editing_key == "" and not window.edit_label.isVisibleTo(window)


def test_a_message_given_back_does_not_replace_a_new_one(qtbot: QtBot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    window.return_message("too long")
    assert window.composer.toPlainText() == "too long"
    window.composer.setPlainText("something new")
    window.return_message("too long")
    assert window.composer.toPlainText() == "something new"


def test_the_models_view_shows_in_the_status_bar_when_it_is_not_all(qtbot: QtBot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    window.show_model_view("the model sees messages 5–12 of 12")
    assert window.view_label.isVisible()
    assert window.view_label.text() == "the model sees messages 5–12 of 12"
    window.show_model_view("")
    assert not window.view_label.isVisible()


@pytest.mark.parametrize(
    ("width", "height", "list_shown"), [(900, 650, False), (1000, 700, False), (1280, 760, True)]
)
def test_the_chat_keeps_at_least_half_the_width(
    qtbot: QtBot, width: int, height: int, list_shown: bool
) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    window.resize(width, height)
    qtbot.waitUntil(lambda: window.width() == width)
    qtbot.wait(20)
    chat = window.centralWidget()
    assert chat.width() >= width // 2
    for dock in (window.memory_dock, window.conversations_dock):
        if dock.isVisible():
            assert dock.width() >= dock.minimumSizeHint().width()
    # The list folds away only where it must, and comes back with the room.
    assert window.conversations_dock.isVisible() == list_shown
    window.resize(1280, 760)
    qtbot.waitUntil(lambda: window.width() == 1280)
    assert window.conversations_dock.isVisible()


def test_file_dialogs_start_in_the_models_folder_or_home(
    qtbot: QtBot, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Never in whatever folder the process was started from."""
    started: list[str] = []

    def fake_open(_parent: object, _title: str, folder: str, _filter: str) -> tuple[str, str]:
        started.append(folder)
        return "", ""

    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(fake_open))
    monkeypatch.chdir(tmp_path)
    window = MainWindow()
    qtbot.addWidget(window)
    window.open_action.trigger()
    window.model_folder = "/models/here"
    window.open_action.trigger()
    assert started == [str(Path.home()), "/models/here"]


def test_one_model_file_is_one_entry_in_the_toolbar(qtbot: QtBot, tmp_path: Path) -> None:
    model = tmp_path / "models" / "a.gguf"
    model.parent.mkdir()
    model.write_bytes(b"GGUF")
    link = tmp_path / "a-link.gguf"
    link.symlink_to(model)
    window = MainWindow()
    qtbot.addWidget(window)
    window.select_model_choice(str(tmp_path / "models" / ".." / "models" / "a.gguf"))
    window.set_model_choices([("a · 4 B", str(model)), ("a again", str(link))], str(link))
    window.select_model_choice(str(model))
    assert window.model_switcher.count() == 1
    assert window.model_switcher.currentText() == "a · 4 B"


class _Paints(QObject):
    """Counts the paint events a widget receives."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Paint:
            self.count += 1
        return False


def test_first_painted_follows_the_first_paint_and_the_plots_follow_it(qtbot: QtBot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    painted, chat_painted = _Paints(), _Paints()
    window.installEventFilter(painted)
    window.chat_view.viewport().installEventFilter(chat_painted)
    seen: list[tuple[bool, bool, int]] = []
    window.first_painted.connect(
        lambda: seen.append(
            (painted.count > 0, chat_painted.count > 0, len(window.memory_panel.plot.plots))
        )
    )
    window.show()
    with qtbot.waitSignal(window.first_painted):
        pass
    # The window and what it holds had been drawn; the plots were not waited for.
    assert seen == [(True, True, 0)]
    qtbot.waitUntil(lambda: len(window.memory_panel.plot.plots) == 3)
    before = painted.count
    window.update()
    qtbot.waitUntil(lambda: painted.count > before)
    assert len(seen) == 1  # once


def test_a_long_system_prompt_never_widens_the_small_window(qtbot: QtBot) -> None:
    from kvchat.app.core.settings import EngineSettings

    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    prompt = "You are a careful assistant who answers in full sentences. " * 4
    window.show_conversation_settings(
        prompt, {"temperature": 0.2, "top_k": 5}, EngineSettings(), "m", "m"
    )
    qtbot.wait(10)  # the layout takes the new text's measure
    window.resize(900, 650)
    qtbot.wait(10)
    assert window.minimumSizeHint().width() <= 900
    assert window.size().toTuple() == (900, 650)
    summary = window.system_label.text()
    assert summary.startswith("System prompt: You are a careful assistant")
    assert summary.endswith("· 2 sampling values of its own")
    assert window.system_label.toolTip() == prompt
