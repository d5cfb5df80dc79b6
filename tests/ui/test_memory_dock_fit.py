"""The memory dock at the window's default size and at a small one: at 1280x760
the whole column shows without scrolling, and at 900x650 nothing is cut off
without a scroll bar to reach it."""

from dataclasses import replace

import pytest
from PySide6.QtCore import QPoint
from PySide6.QtWidgets import QApplication, QWidget
from pytestqt.qtbot import QtBot

from kvchat.ui.main_window import MainWindow
from kvchat.ui.memory_panel import PLOT_MIN_HEIGHT, DeviceView, KvView, MemoryPanel, SpeedView

MIB = 2**20
GIB = 2**30

# What the settings flow shows once a model has loaded: the dry run beside llama.cpp's report.
ESTIMATE = (
    "<b>Estimate / actual</b> (dry run before load / llama.cpp's report)"
    "<table cellspacing='6'><tr><td></td><td>weights</td><td>KV cache</td>"
    "<td>compute</td></tr>{rows}</table>"
)
ESTIMATE_ROW = "<tr><td><b>{}</b></td><td>{}</td><td>{}</td><td>{}</td></tr>"


def _fill(panel: MemoryPanel, gpu: bool, estimate: bool) -> None:
    """What a loaded model shows after a reply: host RAM, and a GPU if there is one."""
    kv = KvView(4096, 314, 314 * 23040, 4096 * 23040, 23040, "f16", "f16", "CPU", 0, 39)
    panel.set_kv(replace(kv, reused_tokens=0, evaluated_tokens=39), seconds=1.0)
    host = "Intel(R) Xeon(R) Processor"
    devices = [DeviceView("CPU", host, 23 * GIB, 22 * GIB, 92 * MIB, 90 * MIB, 98 * MIB)]
    rows = [ESTIMATE_ROW.format("CPU", "92.1 / 92.1 MiB", "90.0 / 90.0 MiB", "98.4 / 98.4 MiB")]
    note = "CPU-only build: the model runs in RAM."
    if gpu:
        card = "NVIDIA H100 80GB HBM3"
        devices.append(DeviceView("CUDA0", card, 80 * GIB, 60 * GIB, 14 * GIB, 2 * GIB, 512 * MIB))
        rows.append(
            ESTIMATE_ROW.format("CUDA0", "14.0 / 14.0 GiB", "2.0 / 2.0 GiB", "512.0 / 512.0 MiB")
        )
        note = ""
    panel.set_devices(devices, note, seconds=2.0, engine_bytes=280 * MIB)
    if estimate:
        panel.set_estimate(ESTIMATE.format(rows="".join(rows)))
    panel.set_speed(SpeedView(92.0, 9.2, 0.425, 103_800_000, None, "cpu"))
    panel.refresh()


def _window(qtbot: QtBot, width: int, height: int, gpu: bool, estimate: bool) -> MemoryPanel:
    window = MainWindow()
    qtbot.addWidget(window)
    window.resize(width, height)
    window.show()
    qtbot.waitExposed(window)
    # The plots are made after the first paint.
    qtbot.waitUntil(lambda: len(window.memory_panel.plot.plots) == 3)
    _fill(window.memory_panel, gpu, estimate)
    for _ in range(3):
        QApplication.processEvents()
    assert window.size().toTuple() == (width, height)
    return window.memory_panel


def _span(panel: MemoryPanel, widget: QWidget) -> tuple[int, int]:
    """A widget's top and bottom in the scroll area's viewport."""
    top = widget.mapTo(panel.viewport(), QPoint(0, 0)).y()
    return top, top + widget.height()


def _needed(widget: QWidget) -> int:
    """The height a panel needs at its width, word-wrapped lines included."""
    hfw = widget.heightForWidth(widget.width()) if widget.hasHeightForWidth() else 0
    return max(widget.minimumSizeHint().height(), hfw)


def _shown_plots(panel: MemoryPanel) -> list[QWidget]:
    live = panel.plot
    return [live.tabs.currentWidget()] if live.is_tabbed() else list(live.plots)


STATES = [(False, False), (False, True), (True, False), (True, True)]
IDS = ["cpu", "cpu+estimate", "cpu+gpu", "cpu+gpu+estimate"]


@pytest.mark.parametrize(("gpu", "estimate"), STATES, ids=IDS)
def test_the_default_window_shows_the_whole_column(qtbot: QtBot, gpu: bool, estimate: bool) -> None:
    panel = _window(qtbot, 1280, 760, gpu, estimate)
    assert panel.verticalScrollBar().maximum() == 0, (
        f"the column is {panel.widget().height()} px tall in a {panel.viewport().height()} px dock"
    )
    groups = [panel.kv_panel, panel.device_panel, panel.speed_panel]
    for widget in [*groups, *_shown_plots(panel)]:
        # Nothing past the dock's bottom...
        top, bottom = _span(panel, widget)
        assert top >= 0 and bottom <= panel.viewport().height()
    # ...and nothing squeezed below what it needs to be read.
    for group in groups:
        assert group.height() >= _needed(group)
    for plot in _shown_plots(panel):
        assert plot.height() >= PLOT_MIN_HEIGHT
    if not gpu:
        # A CPU-only machine, the usual first run: the three plots one above the other.
        assert not panel.plot.is_tabbed()


@pytest.mark.parametrize(("gpu", "estimate"), STATES, ids=IDS)
def test_a_small_window_scrolls_to_what_does_not_fit(
    qtbot: QtBot, gpu: bool, estimate: bool
) -> None:
    panel = _window(qtbot, 900, 650, gpu, estimate)
    bar = panel.verticalScrollBar()
    # Whatever the viewport cannot hold, the scroll bar reaches.
    assert panel.widget().height() <= panel.viewport().height() + bar.maximum()
    for group in [panel.kv_panel, panel.device_panel, panel.speed_panel]:
        assert group.height() >= _needed(group)
    bar.setValue(bar.maximum())
    QApplication.processEvents()
    for plot in _shown_plots(panel):
        top, bottom = _span(panel, plot)
        assert plot.height() >= PLOT_MIN_HEIGHT
        assert top >= 0 and bottom <= panel.viewport().height()
