from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from ui.main_window import MainWindow


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
    assert window.loading_bar.value() == 500
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
