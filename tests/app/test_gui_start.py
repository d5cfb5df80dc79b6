"""What waits for the window's first paint (app.gui.after_first_paint): it runs
once, after what waits for the paint itself, and never for a closed window."""

from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from kvchat.app.presenters.gui import after_first_paint
from kvchat.ui.main_window import MainWindow


def test_the_work_runs_once_after_the_first_paint(qtbot: QtBot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    order: list[str] = []
    after_first_paint(window, lambda: order.append("work"))
    window.first_painted.connect(lambda: order.append("painted"))
    window.show()
    qtbot.waitUntil(lambda: "work" in order)
    qtbot.waitUntil(lambda: len(window.memory_panel.plot.plots) == 3)
    # A slot connected after the work still ran before it: the launch's timing does.
    assert order == ["painted", "work"]


def test_a_window_that_is_not_painted_gets_the_work_in_the_end(qtbot: QtBot) -> None:
    window = MainWindow()  # never shown: never painted
    qtbot.addWidget(window)
    ran: list[bool] = []
    after_first_paint(window, lambda: ran.append(True), wait_ms=10)
    qtbot.waitUntil(lambda: ran == [True])


def test_a_closed_window_gets_no_work(qtbot: QtBot) -> None:
    window = MainWindow()
    qtbot.addWidget(window)
    ran: list[bool] = []
    after_first_paint(window, lambda: ran.append(True), wait_ms=0)
    window.show()
    window.close()
    for _ in range(3):
        QApplication.processEvents()
    assert ran == []
