import math
from dataclasses import replace

import pyqtgraph as pg
import pytest
from PySide6.QtWidgets import QApplication, QGraphicsView
from pytestqt.qtbot import QtBot

from kvchat.ui.memory_panel import (
    PLOT_EVERY,
    DeviceView,
    KvView,
    LivePlot,
    MemoryPanel,
    SpeedView,
    format_bytes,
    format_rate,
)

MIB = 2**20


def _kv(tokens: int, n_ctx: int = 4096) -> KvView:
    return KvView(
        n_ctx=n_ctx,
        tokens=tokens,
        bytes_used=tokens * 23040,
        bytes_allocated=n_ctx * 23040,
        bytes_per_token=23040,
        type_k="f16",
        type_v="q8_0",
        device="CPU",
        system_tokens=30,
        history_tokens=100,
        reused_tokens=120,
        evaluated_tokens=15,
    )


def test_units() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(23040) == "22.5 KiB"
    assert format_bytes(90 * MIB) == "90.0 MiB"
    assert format_rate(3.35e12) == "3.35 TB/s"


def test_kv_panel_shows_fill_parts_and_cost(qtbot: QtBot) -> None:
    panel = MemoryPanel()
    qtbot.addWidget(panel)
    panel.show()
    panel.set_kv(_kv(1000), seconds=1.0)
    panel.refresh()
    kv = panel.kv_panel
    assert kv.fill_label.text() == "1,000 of 4,096 tokens (24%)"
    assert [value for value, _label in kv.fill_bar.segments()] == [30, 100, 870, 0]
    assert kv.bytes_label.text() == "22.0 MiB used of 90.0 MiB allocated · 22.5 KiB per token"
    assert kv.types_label.text() == "K f16, V q8_0 · on CPU"
    assert kv.turn_label.text() == "Last prompt: 120 tokens from the cache, 15 evaluated"
    assert kv.warning_label.isHidden()
    # A reasoning model's thinking is a part of this turn, with its share of the context.
    panel.set_kv(replace(_kv(1000), thinking_tokens=409), seconds=2.0)
    panel.refresh()
    assert kv.fill_bar.segments()[2:] == [
        (461, "this turn 461 tokens"),
        (409, "thinking 409 tokens (10% of the context)"),
    ]


def test_warning_as_the_context_nears_full(qtbot: QtBot) -> None:
    panel = MemoryPanel()
    qtbot.addWidget(panel)
    panel.show()
    panel.set_kv(_kv(3900), seconds=1.0)
    panel.refresh()
    warning = panel.kv_panel.warning_label
    assert not warning.isHidden()
    assert "95% full" in warning.text()
    assert "the reply stops" in warning.text()


def test_device_rows_split_the_memory(qtbot: QtBot) -> None:
    panel = MemoryPanel()
    qtbot.addWidget(panel)
    panel.show()
    host = DeviceView("CPU", "AMD EPYC", 24 * 1024 * MIB, 20 * 1024 * MIB, 0, 0, 10 * MIB)
    gpu = DeviceView(
        "CUDA0",
        "NVIDIA H100",
        80 * 1024 * MIB,
        60 * 1024 * MIB,
        14 * 1024 * MIB,
        2 * 1024 * MIB,
        512 * MIB,
    )
    panel.set_devices([host, gpu], "", seconds=2.0, engine_bytes=17 * 1024 * MIB)
    panel.refresh()
    rows = panel.device_panel.rows()
    assert len(rows) == 2
    assert rows[1].title.text() == "<b>CUDA0</b> VRAM · NVIDIA H100"
    assert [v for v, _ in rows[1].bar.segments()] == [
        14 * 1024 * MIB,
        2 * 1024 * MIB,
        512 * MIB,
        3.5 * 1024 * MIB,
    ]
    assert "free 60.0 GiB of 80.0 GiB" in rows[1].detail.text()
    assert panel.device_panel.note_label.isHidden()


def test_a_load_shown_at_the_refresh_keeps_the_figures_set_after_it(qtbot: QtBot) -> None:
    """show_loading drops the last engine's figures when it is called; the
    refresh that says it drops nothing set since."""
    panel = MemoryPanel()
    qtbot.addWidget(panel)
    panel.show()
    old = DeviceView("CPU", "AMD EPYC", 24 * 1024 * MIB, 20 * 1024 * MIB, 0, 0, 10 * MIB)
    panel.set_devices([old], "", seconds=1.0, engine_bytes=None)
    panel.show_loading("Loading a model.")
    panel.refresh()
    assert panel.device_panel.rows() == []
    assert panel.device_panel.note_label.text() == "Loading a model."
    panel.show_loading("Loading another model.")
    new = DeviceView("CPU", "AMD EPYC", 24 * 1024 * MIB, 19 * 1024 * MIB, 0, 0, 20 * MIB)
    panel.set_devices([new], "", seconds=2.0, engine_bytes=None)
    panel.refresh()
    (row,) = panel.device_panel.rows()
    assert "free 19.0 GiB" in row.detail.text()


def test_speed_panel_shows_bandwidth_against_peak(qtbot: QtBot) -> None:
    panel = MemoryPanel()
    qtbot.addWidget(panel)
    panel.show()
    panel.set_speed(SpeedView(2500.0, 100.0, 0.05, 10**10, 3.35e12, "gpu"))
    panel.refresh()
    labels = panel.speed_panel.labels
    assert labels["decode"].text() == "100.0 tokens/s"
    assert labels["ttft"].text() == "50 ms"
    # One unit system on the line: decimal bytes beside a decimal rate.
    assert labels["bandwidth"].text().startswith("1.00 TB/s (10.0 GB per token × 100.0 tokens/s)")
    assert "iB" not in labels["bandwidth"].text()
    assert "30% of the 3.35 TB/s peak" in labels["bandwidth"].text()
    # A one-token reply has no decode speed, and so no memory-read rate.
    panel.set_speed(SpeedView(2500.0, 0.0, 0.05, 10**10, 3.35e12, "gpu"))
    panel.refresh()
    assert labels["decode"].text() == "– (one token: nothing to time)"
    assert labels["bandwidth"].text() == "–"


def test_speed_panel_says_how_many_threads_decoded_and_why(qtbot: QtBot) -> None:
    panel = MemoryPanel()
    qtbot.addWidget(panel)
    panel.show()
    view = SpeedView(500.0, 50.0, 0.1, 10**8, None, "cpu", decode_threads=2)
    panel.set_speed(view)
    panel.refresh()
    decode = panel.speed_panel.labels["decode"]
    assert decode.text() == "50.0 tokens/s · 2 threads"
    panel.set_speed(
        replace(view, decode_threads=1, threads_note="2 → 1: another process is using a core")
    )
    panel.refresh()
    assert decode.text() == "50.0 tokens/s · 1 thread (2 → 1: another process is using a core)"
    panel.set_speed(replace(view, decode_threads=0))  # a server elsewhere
    panel.refresh()
    assert decode.text() == "50.0 tokens/s"


def test_hidden_panel_does_no_work(qtbot: QtBot) -> None:
    panel = MemoryPanel()
    qtbot.addWidget(panel)
    panel.set_kv(_kv(10), seconds=1.0)
    panel.refresh()  # not shown: nothing is drawn
    assert panel.kv_panel.fill_label.text() == ""
    panel.show()
    panel.refresh()
    assert "10" in panel.kv_panel.fill_label.text()


def test_plots_start_at_zero_keep_gaps_and_name_their_units(qtbot: QtBot) -> None:
    plot = LivePlot()
    qtbot.addWidget(plot)
    plot.build()
    plot.redraw()
    for each in plot.plots:
        low, high = each.getPlotItem().viewRange()[1]
        assert low == 0.0 and high > 0.0  # an empty plot: no -0.4…0.4 MiB axis
        assert each.getPlotItem().getAxis("bottom").labelText == "s since load"
    # A flat engine memory with a few KiB of noise stays flat on the axis.
    for second, mib in enumerate((500.0, 500.01, 500.02, 500.01)):
        plot.add_process(float(second), int(mib * 2**20))
    # Two replies with idle time between: the line does not cross the gap.
    for second in (1.0, 1.5, 2.0, 30.0, 30.5):
        plot.add_speed(second, 90.0)
    plot.redraw()
    low, high = plot.plots[1].getPlotItem().viewRange()[1]
    assert low == 0.0 and high >= 500.0
    _kv_curve, _engine_curve, speed_curve = plot.curves()
    _xs, ys = speed_curve.getData()
    assert sum(1 for y in ys if math.isnan(y)) == 1


def _own_time_axis(plot: pg.PlotWidget) -> bool:
    axis = plot.getPlotItem().getAxis("bottom")
    return bool(axis.label.isVisible() and axis.style["showValues"])


def test_plots_stack_on_one_time_axis_or_go_into_tabs(qtbot: QtBot) -> None:
    live = LivePlot()
    qtbot.addWidget(live)
    live.build()
    live.resize(380, live.stacked_height() + 40)
    live.show()
    qtbot.waitExposed(live)
    *upper, last = live.plots
    live.add_kv(12.0, 5 * MIB)
    live.redraw()
    times = {tuple(each.getPlotItem().viewRange()[0]) for each in live.plots}
    assert times == {(12.0, 17.0)}  # one time range, from the first point
    # Room for all three: one above the other, the time axis drawn once under the last.
    assert not live.is_tabbed()
    assert all(each.isVisible() for each in live.plots)
    assert _own_time_axis(last) and not any(_own_time_axis(each) for each in upper)
    # Too short for three: a tab each, every plot with its own time axis.
    live.resize(380, live.minimumHeight())
    qtbot.waitUntil(live.is_tabbed)
    assert live.tabs.count() == 3 and live.tabs.currentWidget().isVisible()
    assert all(_own_time_axis(each) for each in live.plots)
    live.tabs.setCurrentIndex(2)
    assert last.isVisible() and last.height() >= last.minimumHeight()
    # And back, with every plot shown again.
    live.resize(380, live.stacked_height() + 40)
    qtbot.waitUntil(lambda: not live.is_tabbed())
    assert all(each.isVisible() for each in live.plots)
    assert not any(_own_time_axis(each) for each in upper)


def test_the_plots_are_drawn_a_turn_of_the_event_loop_apart(qtbot: QtBot) -> None:
    live = LivePlot()
    qtbot.addWidget(live)
    live.build()
    live.add_kv(1.0, 10 * MIB)
    live.add_process(1.0, 300 * MIB)
    live.add_speed(1.0, 40.0)
    live.redraw_in_turns()
    drawn = [
        len(curve.getData()[0] if curve.getData()[0] is not None else []) for curve in live.curves()
    ]
    assert drawn == [0, 0, 0]  # from the next turn on, one a turn
    qtbot.waitUntil(
        lambda: all(
            curve.getData()[0] is not None and len(curve.getData()[0]) for curve in live.curves()
        )
    )
    assert {tuple(each.getPlotItem().viewRange()[0]) for each in live.plots} == {(1.0, 6.0)}


def test_size_axes_keep_few_labels(qtbot: QtBot) -> None:
    plot = LivePlot()
    qtbot.addWidget(plot)
    plot.build()
    # Two to four labels on a size axis, whatever its span: a short plot has room for them.
    for mib in (0.0, 90.0, 950.0, 17_000.0):
        plot.add_kv(1.0, int(mib * 2**20))
        plot.redraw()
        step = plot.plots[0].getPlotItem().getAxis("left").tickSpacing(0, 1, 1)[0][0]
        high = plot.plots[0].getPlotItem().viewRange()[1][1]
        assert 2 <= int(high // step) + 1 <= 4


def test_points_from_before_the_plots_exist_are_drawn_when_they_are_built(qtbot: QtBot) -> None:
    panel = MemoryPanel()
    qtbot.addWidget(panel)
    panel.show()
    qtbot.waitExposed(panel)
    # What the engine reports while the window waits for pyqtgraph.
    panel.set_kv(_kv(100), seconds=1.0)
    panel.set_kv(_kv(200), seconds=2.0)
    panel.set_devices([], "", seconds=1.5, engine_bytes=300 * MIB)
    panel.add_speed_point(2.0, 40.0)
    for _ in range(PLOT_EVERY):
        panel.refresh()
    assert panel.plot.plots == []
    assert "200" in panel.kv_panel.fill_label.text()  # the figures do not wait
    panel.plot.build()
    kv, engine, speed = (list(zip(*curve.getData(), strict=True)) for curve in panel.plot.curves())
    assert kv == [(1.0, 100 * 23040 / MIB), (2.0, 200 * 23040 / MIB)]
    assert engine == [(1.5, 300.0)]
    assert speed == [(2.0, 40.0)]
    # And the points after the build join them.
    panel.set_kv(_kv(300), seconds=3.0)
    for _ in range(PLOT_EVERY):
        panel.refresh()
    qtbot.waitUntil(lambda: len(panel.plot.curves()[0].getData()[0]) == 3)
    xs, _ys = panel.plot.curves()[0].getData()
    assert list(xs) == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("height", [700, 420], ids=["stacked", "tabbed"])
def test_the_plots_take_the_places_of_their_stand_ins(qtbot: QtBot, height: int) -> None:
    panel = MemoryPanel()
    qtbot.addWidget(panel)
    panel.resize(380, height)
    panel.show()
    qtbot.waitExposed(panel)
    live = panel.plot
    tabbed = live.is_tabbed()
    assert tabbed == (height == 420)
    if tabbed:
        live.tabs.setCurrentIndex(2)

    def layout() -> list[object]:
        shown = [w for w in live.findChildren(QGraphicsView) if w.isVisible()]
        return [
            panel.widget().size(),
            live.geometry(),
            live.sizeHint(),
            live.minimumSizeHint(),
            sorted(w.geometry().getRect() for w in shown),
        ]

    QApplication.processEvents()
    before = layout()
    live.build()
    QApplication.processEvents()
    assert layout() == before
    assert live.is_tabbed() == tabbed
    if tabbed:
        assert live.tabs.count() == 3
        assert live.tabs.currentWidget() is live.plots[2]
    assert all(each.isVisible() for each in live.plots) or tabbed
