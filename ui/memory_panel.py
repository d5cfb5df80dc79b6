"""The panels that show where the memory goes: KV cache, devices, speed, and a live plot.

They render plain values handed to them (the views below) and never ask
the engine for anything. Updates arrive as often as tokens do, so each
setter only records the new values, and a timer repaints at most four times
a second: the cost of the panels does not grow with the decode speed.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from PySide6.QtCore import QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPainter, QPaintEvent, QPalette, QResizeEvent
from PySide6.QtWidgets import (
    QFrame,
    QGraphicsScene,
    QGraphicsView,
    QGridLayout,
    QGroupBox,
    QLabel,
    QLayout,
    QScrollArea,
    QSizePolicy,
    QStackedLayout,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from kvchat.ui.background_import import import_then

if TYPE_CHECKING:
    import pyqtgraph as pg

# Numbers repaint four times a second and the plot once: on a machine whose
# cores all decode, every repaint takes time from llama.cpp's threads.
REFRESH_MS = 250
# The KV cache panel's line while no model is in memory (MemoryPanel._clear).
LOADING_HEADLINE = "Loading a model…"
STOPPED_HEADLINE = "No model in memory"
PLOT_EVERY = 4
# How long after one plot is drawn the next one is: long enough for the first
# to be painted, and for the event loop to run its timers, in between.
PLOT_TURN_MS = 5
PLOT_POINTS = 600

WEIGHTS = QColor("#3b82f6")
KV = QColor("#f59e0b")
COMPUTE = QColor("#8b5cf6")
OTHER = QColor("#9ca3af")
SYSTEM = QColor("#10b981")
EARLIER = QColor("#3b82f6")
CURRENT = QColor("#f59e0b")
THINKING = QColor("#ec4899")


def format_bytes(value: float) -> str:
    """1536 -> "1.5 KiB": binary units, as llama.cpp and the OS report them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_decimal_bytes(value: float) -> str:
    """97_900_000 -> "97.9 MB": decimal units, to sit beside a rate in GB/s."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f} B"


def format_rate(bytes_per_s: float) -> str:
    """Bandwidth in decimal units, as memory data sheets give it: "3.35 TB/s"."""
    for unit, scale in (("TB/s", 1e12), ("GB/s", 1e9), ("MB/s", 1e6)):
        if bytes_per_s >= scale:
            return f"{bytes_per_s / scale:.2f} {unit}"
    return f"{bytes_per_s:.0f} B/s"


@dataclass(frozen=True)
class KvView:
    n_ctx: int
    tokens: int
    bytes_used: int
    bytes_allocated: int
    bytes_per_token: int
    type_k: str
    type_v: str
    device: str
    system_tokens: int = 0
    history_tokens: int = 0
    reused_tokens: int | None = None
    evaluated_tokens: int | None = None
    # Which messages the model still sees, when the oldest left the context.
    view_note: str = ""
    # Of the reused tokens, those restored from a saved conversation: from where, how fast.
    restored_tokens: int = 0
    restored_from: str = ""
    restore_ms: float = 0.0
    # The conversations kept aside ("2 in RAM, 8.0 MiB · 1 on disk, 4.0 MiB"), "" if none.
    saved_note: str = ""
    # Of this turn's tokens, the reply's thinking (a reasoning model's).
    thinking_tokens: int = 0


@dataclass(frozen=True)
class DeviceView:
    """One device's memory: what this model holds there, what the rest use, what is free."""

    name: str
    description: str
    total_bytes: int
    free_bytes: int
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int

    @property
    def model_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes

    @property
    def other_bytes(self) -> int:
        return max(self.total_bytes - self.free_bytes - self.model_bytes, 0)


@dataclass(frozen=True)
class SpeedView:
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    time_to_first_token_s: float
    bytes_read_per_token: int
    peak_bandwidth_bytes_per_s: float | None
    device_kind: str
    # The CPU threads decode ended with (0: not known, a server elsewhere),
    # and why they differ from the machine's default ("" when they do not).
    decode_threads: int = 0
    threads_note: str = ""


class SegmentBar(QWidget):
    """A horizontal bar split into coloured parts of a whole; the rest is empty."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._segments: list[tuple[float, QColor, str]] = []
        self._total = 1.0
        self.setFixedHeight(14)

    def sizeHint(self) -> QSize:
        return QSize(220, 16)

    def set_segments(self, segments: Sequence[tuple[float, QColor, str]], total: float) -> None:
        self._segments = list(segments)
        self._total = max(total, 1.0)
        self.setToolTip(
            "\n".join(f"{label}: {value / self._total:.1%}" for value, _c, label in segments)
        )
        self.update()

    def segments(self) -> list[tuple[float, str]]:
        return [(value, label) for value, _color, label in self._segments]

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        painter.setPen(self.palette().color(QPalette.ColorRole.Mid))
        painter.setBrush(self.palette().color(QPalette.ColorRole.Base))
        painter.drawRoundedRect(rect, 3, 3)
        x = rect.left()
        painter.setPen(Qt.PenStyle.NoPen)
        for value, color, _label in self._segments:
            width = rect.width() * min(value / self._total, 1.0)
            if width <= 0:
                continue
            painter.setBrush(color)
            painter.drawRect(QRectF(x, rect.top(), min(width, rect.right() - x), rect.height()))
            x += width
        painter.end()


class LiveText(QWidget):
    """One line of text that changes while tokens stream.

    A QLabel asks its layout to recompute on every new text, which costs a
    millisecond or more in a panel this size; this only repaints itself. Rich
    text is not supported: the text is drawn as given, elided to the width.
    """

    def __init__(self, bold: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._text = ""
        if bold:
            font = self.font()
            font.setBold(True)
            self.setFont(font)
        self.setFixedHeight(self.fontMetrics().height() + 2)

    def text(self) -> str:
        return self._text

    def setText(self, text: str) -> None:
        if text != self._text:
            self._text = text
            self.setToolTip(text)
            self.update()

    def sizeHint(self) -> QSize:
        return QSize(self.fontMetrics().horizontalAdvance(self._text), self.height())

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
        elided = self.fontMetrics().elidedText(
            self._text, Qt.TextElideMode.ElideRight, self.width()
        )
        painter.drawText(
            self.rect(), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, elided
        )
        painter.end()


def _legend(items: Sequence[tuple[QColor, str]]) -> QLabel:
    parts = [f'<span style="color:{color.name()}">■</span> {text}' for color, text in items]
    label = QLabel(" &nbsp; ".join(parts))
    label.setTextFormat(Qt.TextFormat.RichText)
    label.setWordWrap(True)
    return label


def _keyed(color: QColor, text: str) -> str:
    """A figure with its colour in the bar before it: the key and the value in one place."""
    # Non-breaking: a line never ends between a square, its name and its figure.
    text = text.replace(" ", "&nbsp;")
    return f'<span style="color:{color.name()}">■</span>&nbsp;{text}'


def _value_label() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def _tight(layout: QLayout) -> QLayout:
    """Little space between the lines of a panel: the whole column fits a 760 px window."""
    layout.setContentsMargins(8, 4, 8, 6)
    layout.setSpacing(2)
    return layout


class KvCachePanel(QGroupBox):
    """How full the KV cache is, what fills it, and what it costs.

    Signals:
        clear_saved_requested(): the person asked to forget the conversations kept aside.
    """

    WARN_AT = 0.85
    clear_saved_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("KV cache", parent)
        self.fill_bar = SegmentBar()
        self.fill_label = LiveText(bold=True)
        self.bytes_label = LiveText()
        self.types_label = _value_label()
        self.types_label.setTextFormat(Qt.TextFormat.RichText)
        self.types_label.linkActivated.connect(lambda _link: self.clear_saved_requested.emit())
        self.turn_label = _value_label()
        self.view_label = _value_label()
        self.view_label.hide()
        self.warning_label = _value_label()
        self.warning_label.setObjectName("contextWarning")
        self.warning_label.hide()
        layout = QVBoxLayout(self)
        _tight(layout)
        layout.addWidget(self.fill_label)
        layout.addWidget(self.fill_bar)
        layout.addWidget(
            _legend(
                [
                    (SYSTEM, "system prompt"),
                    (EARLIER, "earlier turns"),
                    (CURRENT, "this turn"),
                    (THINKING, "thinking"),
                ]
            )
        )
        layout.addWidget(self.bytes_label)
        layout.addWidget(self.types_label)
        layout.addWidget(self.turn_label)
        layout.addWidget(self.view_label)
        layout.addWidget(self.warning_label)

    def show_kv(self, view: KvView) -> None:
        fraction = view.tokens / view.n_ctx if view.n_ctx else 0.0
        self.fill_label.setText(f"{view.tokens:,} of {view.n_ctx:,} tokens ({fraction:.0%})")
        system = min(view.system_tokens, view.tokens)
        earlier = min(view.history_tokens, view.tokens - system)
        thinking = min(view.thinking_tokens, view.tokens - system - earlier)
        current = view.tokens - system - earlier - thinking
        share = f" ({thinking / view.n_ctx:.0%} of the context)" if view.n_ctx else ""
        self.fill_bar.set_segments(
            [
                (system, SYSTEM, f"system prompt {system:,} tokens"),
                (earlier, EARLIER, f"earlier turns {earlier:,} tokens"),
                (current, CURRENT, f"this turn {current:,} tokens"),
                (thinking, THINKING, f"thinking {thinking:,} tokens{share}"),
            ],
            view.n_ctx,
        )
        self.bytes_label.setText(
            f"{format_bytes(view.bytes_used)} used of {format_bytes(view.bytes_allocated)} "
            f"allocated · {format_bytes(view.bytes_per_token)} per token"
        )
        types = f"K {view.type_k}, V {view.type_v} · on {view.device}"
        if view.saved_note:
            # A link, not a button: no extra line in a column that must fit the window.
            types += f" · kept aside: {view.saved_note} · <a href='clear'>clear</a>"
        self.types_label.setText(types)
        self._show_warning(view, fraction)
        self.view_label.setText(view.view_note)
        self.view_label.setVisible(bool(view.view_note))
        if view.reused_tokens is not None and view.evaluated_tokens is not None:
            restored = (
                f" ({view.restored_tokens:,} restored from {view.restored_from} "
                f"in {view.restore_ms:.0f} ms)"
                if view.restored_tokens
                else ""
            )
            self.turn_label.setText(
                f"Last prompt: {view.reused_tokens:,} tokens from the cache{restored}, "
                f"{view.evaluated_tokens:,} evaluated"
            )

    def show_server_kv(self, view: ServerView) -> None:
        """The cache of a model on a server elsewhere, as far as that server says."""
        if view.kv_tokens is not None and view.n_ctx:
            fraction = view.kv_tokens / view.n_ctx
            text = f"{view.kv_tokens:,} of {view.n_ctx:,} tokens ({fraction:.0%}), the server says"
        elif view.kv_fraction is not None:
            fraction = view.kv_fraction
            text = f"{fraction:.0%} full, the server says"
        else:
            self.show_empty("Not reported by the server.")
            return
        self.fill_label.setText(text)
        self.fill_bar.set_segments([(fraction, CURRENT, text)], 1.0)
        self.bytes_label.setText("Its bytes are the server's: see the figures below.")
        for label in (self.types_label, self.turn_label, self.view_label):
            label.setText("")
        self.warning_label.hide()

    def show_empty(self, text: str) -> None:
        """No cache exists (the engine is not running): say so instead of figures."""
        self.fill_label.setText(text)
        self.fill_bar.set_segments([], 1)
        for label in (self.bytes_label, self.types_label, self.turn_label, self.view_label):
            label.setText("")
        self.warning_label.hide()

    def _show_warning(self, view: KvView, fraction: float) -> None:
        if fraction >= self.WARN_AT:
            self.warning_label.setText(
                f"⚠ The context is {fraction:.0%} full. When it fills, the reply stops "
                f"(“context full”), and a conversation longer than {view.n_ctx:,} tokens "
                "cannot be sent: start a new conversation or load with a larger context."
            )
            self.warning_label.show()
        else:
            self.warning_label.hide()


class DeviceRow(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = QLabel()
        self.bar = SegmentBar()
        self.detail = _value_label()
        self.detail.setTextFormat(Qt.TextFormat.RichText)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 2)
        layout.setSpacing(2)
        layout.addWidget(self.title)
        layout.addWidget(self.bar)
        layout.addWidget(self.detail)

    def show_device(self, view: DeviceView, is_host: bool) -> None:
        kind = "RAM" if is_host else "VRAM"
        self.title.setText(f"<b>{view.name}</b> {kind} · {view.description}")
        self.bar.set_segments(
            [
                (view.weights_bytes, WEIGHTS, f"weights {format_bytes(view.weights_bytes)}"),
                (view.kv_bytes, KV, f"KV cache {format_bytes(view.kv_bytes)}"),
                (view.compute_bytes, COMPUTE, f"compute {format_bytes(view.compute_bytes)}"),
                (view.other_bytes, OTHER, f"everything else {format_bytes(view.other_bytes)}"),
            ],
            view.total_bytes,
        )
        # Each part carries its colour, so the panel needs no legend line of its own.
        self.detail.setText(
            f"this model {format_bytes(view.model_bytes)}: "
            f"{_keyed(WEIGHTS, f'weights {format_bytes(view.weights_bytes)}')}, "
            f"{_keyed(KV, f'KV {format_bytes(view.kv_bytes)}')}, "
            f"{_keyed(COMPUTE, f'compute {format_bytes(view.compute_bytes)}')} · "
            f"{_keyed(OTHER, f'everything else {format_bytes(view.other_bytes)}')} · "
            f"free {format_bytes(view.free_bytes)} of {format_bytes(view.total_bytes)}"
        )


class DeviceMemoryPanel(QGroupBox):
    """Per device: total, this model's weights/KV/compute, everything else, free."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Memory", parent)
        self.note_label = _value_label()
        self.note_label.setObjectName("memoryNote")
        self._rows_layout = QVBoxLayout()
        self._rows: list[DeviceRow] = []
        self._rows_layout.setSpacing(0)
        layout = QVBoxLayout(self)
        _tight(layout)
        layout.addWidget(self.note_label)
        layout.addLayout(self._rows_layout)

    def show_devices(self, devices: Sequence[DeviceView], note: str) -> None:
        while len(self._rows) < len(devices):
            row = DeviceRow()
            self._rows.append(row)
            self._rows_layout.addWidget(row)
        for index, row in enumerate(self._rows):
            row.setVisible(index < len(devices))
            if index < len(devices):
                row.show_device(devices[index], is_host=index == 0)
        self.note_label.setText(note)
        self.note_label.setVisible(bool(note))

    def rows(self) -> list[DeviceRow]:
        return [row for row in self._rows if not row.isHidden()]


@dataclass(frozen=True)
class ServerView:
    """What a server that runs the model elsewhere reports about its memory.

    `rows` are (figure, value, where it came from); `kv_tokens`, `n_ctx` and
    `kv_fraction` fill the KV cache panel when the server says them and the
    model's own KV figures are not known here (None: not reported).
    """

    server: str
    rows: tuple[tuple[str, str, str], ...]
    note: str = ""
    kv_tokens: int | None = None
    n_ctx: int | None = None
    kv_fraction: float | None = None
    # Whether the KV cache panel shows the server's own kvchat figures.
    local_kv: bool = False


class ServerPanel(QGroupBox):
    """The figures a server elsewhere reports, each with its source; hidden for a local model."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Server", parent)
        self.server_label = _value_label()
        self.rows_label = _value_label()
        self.rows_label.setTextFormat(Qt.TextFormat.RichText)
        self.note_label = _value_label()
        layout = QVBoxLayout(self)
        _tight(layout)
        layout.addWidget(self.server_label)
        layout.addWidget(self.rows_label)
        layout.addWidget(self.note_label)

    def show_server(self, view: ServerView) -> None:
        # In a label that wraps, not the title: a long address must not widen the column.
        self.server_label.setText(f"Reported by {view.server}")
        muted = self.palette().color(QPalette.ColorRole.PlaceholderText).name()
        lines = [
            f"{html.escape(label)}: <b>{html.escape(value)}</b> "
            f"<span style='color:{muted}'>({html.escape(source)})</span>"
            for label, value, source in view.rows
        ]
        self.rows_label.setText("<br>".join(lines))
        self.rows_label.setVisible(bool(lines))
        self.note_label.setText(view.note)
        self.note_label.setVisible(bool(view.note))


class SpeedPanel(QGroupBox):
    """The figures that matter instead of a "GPU utilisation %" gauge."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Speed (last reply)", parent)
        self.labels: dict[str, QLabel] = {}
        grid = QGridLayout(self)
        _tight(grid)
        grid.setHorizontalSpacing(8)
        # Prefill and first token, the prompt's two figures, share a line: one
        # line less in a column that has to fit a 760 px window.
        cells = [
            ("prefill", "Prefill", 0, 0, 1),
            ("ttft", "First token", 0, 2, 1),
            ("decode", "Decode", 1, 0, 3),
            ("bandwidth", "Memory read", 2, 0, 3),
        ]
        for key, title, row, column, span in cells:
            grid.addWidget(QLabel(title), row, column, Qt.AlignmentFlag.AlignTop)
            label = _value_label()
            grid.addWidget(label, row, column + 1, 1, span)
            self.labels[key] = label
            label.setText("–")
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)

    def show_speed(self, view: SpeedView) -> None:
        self.labels["prefill"].setText(
            f"{view.prefill_tokens_per_s:,.0f} tokens/s" if view.prefill_tokens_per_s else "–"
        )
        self.labels["ttft"].setText(f"{view.time_to_first_token_s * 1000:,.0f} ms")
        if view.decode_tokens_per_s <= 0:
            # A reply of one token has no time between tokens to measure.
            self.labels["decode"].setText("– (one token: nothing to time)")
            self.labels["bandwidth"].setText("–")
            return
        self.labels["decode"].setText(f"{view.decode_tokens_per_s:,.1f} tokens/s{_threads(view)}")
        if not view.bytes_read_per_token:
            # A model on a server elsewhere: its weights' size is the server's to say.
            self.labels["bandwidth"].setText("– (the model runs on another server)")
            return
        achieved = view.bytes_read_per_token * view.decode_tokens_per_s
        text = (
            # One unit system on the line: decimal, as bandwidth is quoted.
            f"{format_rate(achieved)} ({format_decimal_bytes(view.bytes_read_per_token)} "
            "per token × "
            f"{view.decode_tokens_per_s:,.1f} tokens/s)"
        )
        if view.peak_bandwidth_bytes_per_s:
            text += (
                f", {achieved / view.peak_bandwidth_bytes_per_s:.0%} of the "
                f"{format_rate(view.peak_bandwidth_bytes_per_s)} peak"
            )
        else:
            text += f"; the {view.device_kind.upper()}'s peak is not known"
        self.labels["bandwidth"].setText(text)


def _threads(view: SpeedView) -> str:
    """ " · 2 threads", and why they were fewer: the line takes a second line then."""
    count = view.decode_threads
    if not count:
        return ""  # a server elsewhere keeps its threads to itself
    text = f" · {count} thread{'' if count == 1 else 's'}"
    return f"{text} ({view.threads_note})" if view.threads_note else text


# The least an axis shows, so an empty or flat plot has a sensible scale.
MIN_SPAN_MIB = 1.0
MIN_SPAN_TOKENS_PER_S = 10.0
# Points of the decode speed further apart than this are separate replies.
SPEED_GAP_S = 3.0
# The least the time axis shows.
MIN_SPAN_S = 5.0


# A plot is never shorter than this: its title, and a data area that still
# shows a trend. Above it, the plots share what the figures leave of the column.
PLOT_MIN_HEIGHT = 60
# A plot that reads its own time axis (the bottom one, or one in a tab) needs
# this much more for the axis's values and unit.
TIME_AXIS_HEIGHT = 34


def _tick_step(span: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that cuts an axis of this span in at most
    three: two to four labels, which a short plot has room for."""
    target = span / 3
    power = 10.0 ** math.floor(math.log10(target))
    return next(f * power for f in (1, 2, 5, 10) if f * power >= target)


def _steady_range(
    low: float, high: float, least_span: float, snap: float = 1.0
) -> tuple[float, float, float]:
    """An axis range of at least `least_span` that holds `low`..`high`, its ends
    rounded out to `snap` of a tick step. Returns (start, end, tick step).

    pyqtgraph draws an axis again, in Python, only when its range changes (a
    few milliseconds each, on the GUI thread): a range with rounded ends stays
    put while the data grow inside it, so most redraws draw the line and no axis.
    """
    step = _tick_step(max(high - low, least_span))
    unit = step * snap
    start = math.floor(low / unit) * unit
    return start, math.ceil(max(high, start + least_span) / unit) * unit, step


def _plot(background: QColor) -> pg.PlotWidget:
    """A plot that asks for its minimum height and takes whatever is left over."""
    import pyqtgraph as pg  # here: the window's first paint does not wait for it

    plot = pg.PlotWidget(background=background)
    # Not Expanding: QGraphicsView's own hints are the scene's size and its scroll
    # bars', and a layout that heeded them would scroll the column rather than
    # let the plots shrink. Ignored leaves the minimum and the stretch to decide.
    plot.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Ignored)
    return plot


class _PlotStandIn(QGraphicsView):
    """Where a plot stands until pyqtgraph is loaded: its background, and its size hints.

    A pyqtgraph plot is a QGraphicsView whose scene follows the view's size, and
    QGraphicsView asks for its scene's size; this one does the same, so the dock
    is laid out alike before and after the plots arrive.
    """

    def __init__(self, background: QColor) -> None:
        super().__init__()
        self.setScene(QGraphicsScene(self))
        self.setBackgroundBrush(background)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Ignored)
        self.setSceneRect(QRectF(self.rect()))

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self.setSceneRect(QRectF(self.rect()))


class _Frame(NamedTuple):
    """One plot's drawing (LivePlot._frames)."""

    plot: int  # which of the three
    xs: list[float]
    ys: list[float]
    span: float  # the value axis: 0 to span, ticks every step
    step: float
    start: float  # the time range, the same for every plot
    end: float


class LivePlot(QWidget):
    """Since the model loaded: KV cache bytes, the engine's memory, and tokens/s.

    Where the column leaves room, the three plots stand one above the other and
    share one time axis, drawn under the bottom one. Where it does not (a small
    window, a second device, the estimate shown), they go into tabs, one plot
    at a time with its own time axis, rather than make the column scroll.

    The plots themselves (pyqtgraph) are made by `build`, or by `build_soon`,
    which the window calls after its first paint; until then stand-ins of the
    same size hold their places, and the points that arrive are kept and drawn
    once the plots are made.
    """

    TAB_NAMES = ("KV cache", "Engine memory", "Decode speed")
    TITLES = (
        ("KV cache used, MiB", KV),
        ("engine memory on the device, MiB", WEIGHTS),
        ("decode, tokens/s", COMPUTE),
    )

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plots: list[pg.PlotWidget] = []
        self._curves: list[pg.PlotDataItem] = []
        background = self.palette().color(QPalette.ColorRole.Base)
        # What the column and the tabs hold: the stand-ins, then the plots.
        self._views: list[QGraphicsView] = [_PlotStandIn(background) for _ in self.TITLES]

        self._column = QWidget()
        self._column_layout = QVBoxLayout(self._column)
        self._column_layout.setContentsMargins(0, 0, 0, 0)
        self._column_layout.setSpacing(2)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self._stack = QStackedLayout(self)
        self._stack.addWidget(self._column)
        self._stack.addWidget(self.tabs)
        self._tabbed: bool | None = None
        # The least the plots need is one plot under a tab bar; the column gives
        # them what it has left, and that decides between stacked and tabbed.
        self._arrange(tabbed=True)
        self.setMinimumHeight(self.tabs.minimumSizeHint().height())
        self._arrange(tabbed=False)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self.clear()
        # What `redraw_in_turns` has still to draw, a plot a turn.
        self._pending: list[_Frame] = []
        self._importing = False
        # The plots made so far by `build_soon`, with their curves.
        self._made: list[tuple[pg.PlotWidget, pg.PlotDataItem]] = []

    def build_soon(self) -> None:
        """Builds the plots once pyqtgraph has been imported on a thread of its own.

        The import takes a quarter of a second or more, and the window answers
        the person meanwhile; the plots are then made here, on the GUI thread,
        one per turn of the event loop, so that input is answered between them.
        """
        if not self.plots and not self._importing:
            self._importing = True
            import_then(["pyqtgraph"], self, self._make_next)

    def _make_next(self) -> None:
        if self.plots:
            return  # `build` came first
        self._made.append(self._make_plot(len(self._made)))
        if len(self._made) < len(self.TITLES):
            QTimer.singleShot(0, self, self._make_next)
        else:
            self._place()

    def build(self) -> None:
        """Makes the plots in the stand-ins' places and draws the points kept so far."""
        if self.plots:
            return
        while len(self._made) < len(self.TITLES):
            self._made.append(self._make_plot(len(self._made)))
        self._place()

    def _make_plot(self, index: int) -> tuple[pg.PlotWidget, pg.PlotDataItem]:
        import pyqtgraph as pg

        title, color = self.TITLES[index]
        foreground = self.palette().color(QPalette.ColorRole.Text)
        title_height = self.fontMetrics().height() + 3
        plot = _plot(self.palette().color(QPalette.ColorRole.Base))
        plot.setMenuEnabled(False)
        plot.setMouseEnabled(x=False, y=False)
        plot.hideButtons()
        item = plot.getPlotItem()
        item.setTitle(title, color=foreground.name(), size="9pt")
        # pyqtgraph keeps 30 px for a title; one line of text needs less.
        item.layout.setRowFixedHeight(0, title_height)
        item.titleLabel.setMaximumHeight(title_height)
        for axis in ("bottom", "left"):
            item.getAxis(axis).setTextPen(foreground)
        # Seconds stay seconds: no "(x0.001)" on an empty plot's axis.
        item.getAxis("bottom").enableAutoSIPrefix(False)
        curve = plot.plot(pen=pg.mkPen(color, width=2))
        # Sizes and rates start at zero: an axis that zooms to the data's
        # own span makes noise of a few KiB look like a climb. Both ranges
        # are set by `redraw`.
        item.enableAutoRange(x=False, y=False)
        item.setLabel("bottom", "s since load")
        return plot, curve

    def _place(self) -> None:
        """Puts the plots made in the stand-ins' places, all at once."""
        self.plots = [plot for plot, _curve in self._made]
        self._curves = [curve for _plot, curve in self._made]
        for stand_in, plot in zip(self._views, self.plots, strict=True):
            plot.setMinimumHeight(stand_in.minimumHeight())
            if self._tabbed:
                index = self.tabs.indexOf(stand_in)
                current = self.tabs.currentIndex()
                self.tabs.removeTab(index)
                self.tabs.insertTab(index, plot, self.TAB_NAMES[index])
                self.tabs.setCurrentIndex(current)
            else:
                self._column_layout.replaceWidget(stand_in, plot)
                plot.show()
            stand_in.hide()
            stand_in.deleteLater()
        self._views = list(self.plots)
        self._style_axes()
        self.redraw()

    def curves(self) -> list[pg.PlotDataItem]:
        """The KV cache's, the engine's memory's and the decode speed's lines (none
        before `build`)."""
        return list(self._curves)

    def sizeHint(self) -> QSize:
        # No more height than the minimum: the plots take what is left over, and
        # what is left never makes the column scroll. The width is a plot's,
        # whichever the arrangement, so the dock keeps its width.
        return QSize(self._views[0].sizeHint().width(), self.minimumHeight())

    def minimumSizeHint(self) -> QSize:
        return QSize(super().minimumSizeHint().width(), self.minimumHeight())

    def stacked_height(self) -> int:
        """The least height that shows the three plots one above the other."""
        spacing = self._column_layout.spacing() * (len(self._views) - 1)
        return PLOT_MIN_HEIGHT * len(self._views) + TIME_AXIS_HEIGHT + spacing

    def is_tabbed(self) -> bool:
        return bool(self._tabbed)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        # The minimum height does not change with the arrangement, so the
        # choice cannot change the height it is made from: no back and forth.
        self._arrange(tabbed=event.size().height() < self.stacked_height())

    def _arrange(self, tabbed: bool) -> None:
        if tabbed == self._tabbed:
            return
        self._tabbed = tabbed
        current = self.tabs.currentIndex()
        self.tabs.clear()
        for index, view in enumerate(self._views):
            last = index == len(self._views) - 1
            # Stacked, the plots share the time axis under the last one; in a
            # tab, each plot is alone and reads its own.
            own_axis = tabbed or last
            view.setMinimumHeight(PLOT_MIN_HEIGHT + (TIME_AXIS_HEIGHT if own_axis else 0))
            if tabbed:
                self.tabs.addTab(view, self.TAB_NAMES[index])
            else:
                # Shares in proportion, so the three data areas come out about as tall.
                self._column_layout.addWidget(view, 4 if last else 3)
                # A tab that was not current left its plot hidden.
                view.show()
        self._style_axes()
        if tabbed:
            self.tabs.setCurrentIndex(max(current, 0))
        self._stack.setCurrentWidget(self.tabs if tabbed else self._column)

    def _style_axes(self) -> None:
        for index, plot in enumerate(self.plots):
            own_axis = bool(self._tabbed) or index == len(self.plots) - 1
            axis = plot.getPlotItem().getAxis("bottom")
            axis.setStyle(showValues=own_axis)
            axis.showLabel(own_axis)
            # Without values, room for the lower half of the left axis's "0".
            axis.setHeight(None if own_axis else self.fontMetrics().height() // 2 + 2)

    def clear(self) -> None:
        self.kv_points: list[tuple[float, float]] = []
        self.process_points: list[tuple[float, float]] = []
        self.speed_points: list[tuple[float, float]] = []

    def add_kv(self, seconds: float, kv_bytes: int) -> None:
        self.kv_points.append((seconds, kv_bytes / 2**20))
        del self.kv_points[:-PLOT_POINTS]

    def add_process(self, seconds: float, process_bytes: int) -> None:
        self.process_points.append((seconds, process_bytes / 2**20))
        del self.process_points[:-PLOT_POINTS]

    def add_speed(self, seconds: float, tokens_per_s: float) -> None:
        self.speed_points.append((seconds, tokens_per_s))
        del self.speed_points[:-PLOT_POINTS]

    def redraw(self) -> None:
        """Draws the points kept so far (nothing before `build`: it draws them then)."""
        self._pending = self._frames()
        while self._pending:
            self._draw(self._pending.pop(0))

    def redraw_in_turns(self) -> None:
        """As `redraw`, each plot a turn of the event loop after the one before,
        painted in between; the first a turn from now, after the figures the
        same refresh changed have been painted.

        pyqtgraph paints a plot whose axes moved in Python, several milliseconds
        each; after a load all three move at once (the time axis starts again,
        the new model's sizes differ), and painted in one go they held the GUI
        thread for a frame and more. Each plot has its own time range (the same
        one), so that drawing one does not move the others' axes.
        """
        waiting = bool(self._pending)
        self._pending = self._frames()
        if self._pending and not waiting:
            QTimer.singleShot(PLOT_TURN_MS, self, self._draw_next)

    def _draw_next(self) -> None:
        if not self._pending:
            return
        self._draw(self._pending.pop(0))
        if self._pending:
            QTimer.singleShot(PLOT_TURN_MS, self, self._draw_next)

    def _frames(self) -> list[_Frame]:
        """What each plot is to show, in order."""
        if not self.plots:
            return []
        rows = (
            (self.kv_points, MIN_SPAN_MIB, None),
            (self.process_points, MIN_SPAN_MIB, None),
            # Decode speed exists only while a reply is written: idle time is a gap.
            (self.speed_points, MIN_SPAN_TOKENS_PER_S, SPEED_GAP_S),
        )
        lines: list[tuple[list[float], list[float], float, float]] = []
        first_x, last_x = math.inf, 0.0
        for points, min_span, gap in rows:
            xs: list[float] = []
            ys: list[float] = []
            for x, y in points:
                if gap is not None and xs and x - xs[-1] > gap:
                    xs.append((xs[-1] + x) / 2)
                    ys.append(math.nan)
                xs.append(x)
                ys.append(y)
            if xs:
                first_x, last_x = min(first_x, xs[0]), max(last_x, xs[-1])
            top = max((y for y in ys if not math.isnan(y)), default=0.0)
            _low, span, step = _steady_range(0.0, top * 1.05, min_span)
            lines.append((xs, ys, span, step))
        # The plots show the same time range, which moves in half steps: the
        # line's end stays near the right edge.
        start, end, _step = _steady_range(min(first_x, last_x), last_x, MIN_SPAN_S, snap=0.5)
        return [_Frame(index, *line, start, end) for index, line in enumerate(lines)]

    def _draw(self, frame: _Frame) -> None:
        self._curves[frame.plot].setData(frame.xs, frame.ys, connect="finite")
        item = self.plots[frame.plot].getPlotItem()
        item.setYRange(0.0, frame.span, padding=0)
        item.getAxis("left").setTickSpacing(levels=[(frame.step, 0.0)])
        item.setXRange(frame.start, frame.end, padding=0)


class MemoryPanel(QScrollArea):
    """The KV cache, device memory and speed panels with the live plot, in one column.

    Setters record; a timer repaints at most every REFRESH_MS while visible.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("memoryPanel")
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.kv_panel = KvCachePanel()
        self.device_panel = DeviceMemoryPanel()
        self.server_panel = ServerPanel()
        self.server_panel.hide()
        self.speed_panel = SpeedPanel()
        self.plot = LivePlot()
        self.estimate_label = _value_label()
        self.estimate_label.hide()
        inner = QWidget()
        layout = QVBoxLayout(inner)
        layout.setContentsMargins(4, 2, 4, 4)
        layout.setSpacing(3)
        layout.addWidget(self.kv_panel)
        layout.addWidget(self.device_panel)
        layout.addWidget(self.server_panel)
        layout.addWidget(self.estimate_label)
        layout.addWidget(self.speed_panel)
        # The plots take the height the figures above leave, down to their minimum.
        layout.addWidget(self.plot, 1)
        self.setWidget(inner)
        self.setMinimumWidth(340)

        self._kv: KvView | None = None
        self._devices: tuple[Sequence[DeviceView], str] | None = None
        self._speed: SpeedView | None = None
        self._server: ServerView | None = None
        self._plot_dirty = False
        self._refreshes = 0
        # The figures that keep their height while a model loads (`show_loading`).
        self._held: list[QWidget] = []
        # What `show_loading` is to say at the next refresh.
        self._loading: str | None = None
        self._timer = QTimer(self)
        self._timer.setInterval(REFRESH_MS)
        self._timer.timeout.connect(self.refresh)
        self._timer.start()

    def set_kv(self, view: KvView, seconds: float) -> None:
        self._kv = view
        self.plot.add_kv(seconds, view.bytes_used)
        self._plot_dirty = True

    def set_devices(
        self,
        devices: Sequence[DeviceView],
        note: str,
        seconds: float,
        engine_bytes: int | None,
    ) -> None:
        self._devices = (devices, note)
        if engine_bytes is not None:
            self.plot.add_process(seconds, engine_bytes)
            self._plot_dirty = True

    def set_speed(self, view: SpeedView) -> None:
        self._speed = view

    def set_server(self, view: ServerView | None) -> None:
        """A server's own figures (None: the model runs here, and the panel goes)."""
        self._server = view
        if view is None:
            self.server_panel.hide()

    def add_speed_point(self, seconds: float, tokens_per_s: float) -> None:
        self.plot.add_speed(seconds, tokens_per_s)
        self._plot_dirty = True

    def set_estimate(self, text: str) -> None:
        """The estimate beside the loaded model's figures ("": none), in the place
        the last one kept (`show_loading`)."""
        label = self.estimate_label
        label.setText(text)
        if label in self._held:
            self._held.remove(label)
            label.setMinimumHeight(0)
        label.setVisible(bool(text))

    def reset(self) -> None:
        """A new model: the plot starts again from its load (and a load not yet
        shown is shown first: the new model's figures come after it)."""
        if self._loading is not None:
            self._show_loading(self._loading)
        self.plot.clear()
        self._plot_dirty = True

    def show_loading(self, text: str) -> None:
        """Another model loads: the last one's figures, its estimate among them,
        are gone, and the new one's come once it is in memory.

        Said at the next refresh, as the figures are: a switch's own turn on
        the GUI thread, and the paint after it, are long enough already.
        Meanwhile the figures keep their heights (`refresh` lets go when the
        new model's devices are shown, the estimate's place when the new
        estimate comes, a second after the load): a column that shrank and
        grew back would resize the plots below it twice, and pyqtgraph lays a
        plot out again, in Python, at each resize.
        """
        self._drop_figures()
        self._loading = text

    def _show_loading(self, text: str) -> None:
        self._loading = None
        figures = [self.kv_panel, self.device_panel, self.estimate_label]
        for widget in figures:
            if widget.isVisible() and widget not in self._held:
                widget.setMinimumHeight(widget.height())
                self._held.append(widget)
        self.estimate_label.setText("")
        self._clear(LOADING_HEADLINE, text)

    def _let_go(self, keep_estimate: bool = False) -> None:
        """Lets the held figures take their own heights; with `keep_estimate`, not
        the estimate's place while it waits for the new one (held and blank)."""
        label = self.estimate_label
        awaiting = label in self._held and not label.text()
        kept: list[QWidget] = [label] if keep_estimate and awaiting else []
        for widget in self._held:
            if widget not in kept:
                widget.setMinimumHeight(0)
        self._held = kept
        if not kept:
            label.setVisible(bool(label.text()))

    def show_engine_stopped(self, text: str) -> None:
        """The engine has ended: the figures it reported are gone with it."""
        self._loading = None
        self._drop_figures()
        self._let_go()
        self._clear(STOPPED_HEADLINE, text)

    def _drop_figures(self) -> None:
        """Forgets the figures set and not yet shown: they were the last engine's."""
        self._kv, self._devices, self._server = None, None, None

    def _clear(self, headline: str, text: str) -> None:
        """No figures: the KV cache's one bold line says so in short (it does not
        wrap), the memory panel in `text`."""
        self.server_panel.hide()
        self.kv_panel.show_empty(headline)
        self.device_panel.show_devices([], text)

    def refresh(self) -> None:
        """Repaints what changed since the last refresh (only while shown)."""
        if not self.isVisible():
            return
        if self._loading is not None:
            self._show_loading(self._loading)
        if self._kv is not None:
            self.kv_panel.show_kv(self._kv)
            self._kv = None
        if self._devices is not None:
            self.device_panel.show_devices(*self._devices)
            self._devices = None
            if self._held:
                # The new model's figures are all in; its estimate comes later.
                self._let_go(keep_estimate=True)
        if self._speed is not None:
            self.speed_panel.show_speed(self._speed)
            self._speed = None
        if self._server is not None:
            self.server_panel.show_server(self._server)
            self.server_panel.show()
            if not self._server.local_kv:
                self.kv_panel.show_server_kv(self._server)
            self._server = None
        self._refreshes += 1
        if self._plot_dirty and self._refreshes % PLOT_EVERY == 0:
            self.plot.redraw_in_turns()
            self._plot_dirty = False
