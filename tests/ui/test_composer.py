from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from kvchat.ui.composer import Composer


def test_enter_submits_and_keeps_the_text(qtbot: QtBot) -> None:
    composer = Composer()
    qtbot.addWidget(composer)
    qtbot.keyClicks(composer, "hello there")
    with qtbot.waitSignal(composer.submitted) as blocker:
        qtbot.keyClick(composer, Qt.Key.Key_Return)
    assert blocker.args == ["hello there"]
    # The owner clears it once the message is taken, so nothing is lost before.
    assert composer.toPlainText() == "hello there"


def test_shift_enter_adds_a_line(qtbot: QtBot) -> None:
    composer = Composer()
    qtbot.addWidget(composer)
    submitted: list[str] = []
    composer.submitted.connect(submitted.append)
    qtbot.keyClicks(composer, "first")
    qtbot.keyClick(composer, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(composer, "second")
    assert composer.toPlainText() == "first\nsecond"
    qtbot.keyClick(composer, Qt.Key.Key_Enter)
    assert submitted == ["first\nsecond"]


def test_whitespace_is_not_submitted(qtbot: QtBot) -> None:
    composer = Composer()
    qtbot.addWidget(composer)
    submitted: list[str] = []
    composer.submitted.connect(submitted.append)
    qtbot.keyClicks(composer, "  \t ")
    qtbot.keyClick(composer, Qt.Key.Key_Return)
    assert submitted == []
