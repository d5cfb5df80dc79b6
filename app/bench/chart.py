"""The chart of a `kvchat bench` run: one PNG, drawn with QPainter on a QImage.

QPainter needs no window and no extra dependency, and draws the same on the
offscreen platform as on a desktop. Every panel is a bar chart of medians
with min-max whiskers, so the spread is visible next to the figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QByteArray, QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QImage, QImageWriter, QPainter, QPen

if TYPE_CHECKING:
    from kvchat.app.bench.measure import BenchResult, Spread

WIDTH, HEIGHT = 1400, 840
HEADER = 92
COLUMNS, ROWS = 4, 2
MARGIN = 14
KVCHAT = QColor("#2f6fde")
DIRECT = QColor("#9aa0a6")
WINDOW = QColor("#2e8b57")
WINDOW_LIGHT = QColor("#9fd3b4")
INK = QColor("#202124")
QUIET = QColor("#6b6f75")
GRID = QColor("#e3e5e8")
MET = QColor("#1e8e3e")
MISSED = QColor("#d93025")


@dataclass(frozen=True)
class Bar:
    median: float
    low: float
    high: float
    color: QColor

    @classmethod
    def of(cls, spread: Spread, color: QColor) -> Bar:
        return cls(spread.median, spread.low, spread.high, color)

    @classmethod
    def single(cls, value: float, color: QColor) -> Bar:
        """A figure measured once: no whisker."""
        return cls(value, value, value, color)


@dataclass(frozen=True)
class Group:
    """Bars side by side over one label."""

    label: str
    bars: Sequence[Bar]


def _font(pixels: int, bold: bool = False) -> QFont:
    font = QFont()
    font.setPixelSize(pixels)
    font.setBold(bold)
    return font


def _nice_step(top: float) -> float:
    """A 1, 2 or 5 times a power of ten that splits 0..top into 3 to 6 steps."""
    if top <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(top / 4))
    return next(m * power for m in (1, 2, 5, 10) if top / (m * power) <= 6)


def _title(painter: QPainter, rect: QRectF, text: str) -> None:
    painter.setPen(INK)
    painter.setFont(_font(15, bold=True))
    painter.drawText(rect.adjusted(10, 8, -8, 0), Qt.AlignmentFlag.AlignLeft, text)


def _panel(
    painter: QPainter,
    rect: QRectF,
    title: str,
    groups: Sequence[Group],
    scale: float = 1.0,
    digits: int = 0,
) -> None:
    """A titled bar chart: one slot per group, each bar with its median written above."""
    _title(painter, rect, title)
    plot = rect.adjusted(58, 44, -12, -44)
    top = max(bar.high * scale for group in groups for bar in group.bars) * 1.2
    step = _nice_step(top)
    top = math.ceil(top / step) * step if top > 0 else step

    def y(value: float) -> float:
        return plot.bottom() - value * scale / top * plot.height()

    painter.setFont(_font(11))
    tick = 0.0
    while tick <= top + step / 2:
        level = plot.bottom() - tick / top * plot.height()
        painter.setPen(QPen(GRID, 1))
        painter.drawLine(QPointF(plot.left(), level), QPointF(plot.right(), level))
        painter.setPen(QUIET)
        painter.drawText(
            QRectF(rect.left(), level - 8, plot.left() - rect.left() - 6, 16),
            Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
            f"{tick:,.{0 if step >= 1 else 2}f}",
        )
        tick += step

    slot = plot.width() / len(groups)
    for index, group in enumerate(groups):
        left = plot.left() + slot * index
        fill = 0.6 if len(group.bars) == 1 else 0.86
        width = slot * fill / len(group.bars)
        for position, bar in enumerate(group.bars):
            center = left + slot * (1 - fill) / 2 + width * (position + 0.5)
            painter.fillRect(
                QRectF(
                    center - width * 0.45, y(bar.median), width * 0.9, plot.bottom() - y(bar.median)
                ),
                bar.color,
            )
            low, high = y(bar.low), y(bar.high)
            if bar.high > bar.low:
                painter.setPen(QPen(INK, 1.5))
                painter.drawLine(QPointF(center, low), QPointF(center, high))
                for end in (low, high):
                    painter.drawLine(QPointF(center - 5, end), QPointF(center + 5, end))
            painter.setPen(INK)
            painter.setFont(_font(12 if len(group.bars) == 1 else 10, bold=True))
            painter.drawText(
                QRectF(center - width, high - 20, width * 2, 18),
                Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignBottom,
                f"{bar.median * scale:,.{digits}f}",
            )
        painter.setPen(QUIET)
        painter.setFont(_font(11))
        painter.drawText(
            QRectF(left, plot.bottom() + 4, slot, 40),
            Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop | Qt.TextFlag.TextWordWrap,
            group.label,
        )


def _goals(painter: QPainter, rect: QRectF, result: BenchResult) -> None:
    _title(painter, rect, "Goals")
    names = {
        "decode_over_bare": "decode, kvchat / bare llama_decode",
        "busy_decode_ratio": "decode, a core busy: kvchat / best fixed",
        "decode_ratio": "decode, kvchat / direct",
        "prefill_ratio": "prefill, kvchat / direct",
        "ttft_turn20_over_turn1": "first token, turn 20 / turn 1",
        "only_new_tokens_evaluated": "only new tokens evaluated",
    }
    line = rect.top() + 46
    for key, goal in result.goals.items():
        painter.setPen(INK)
        painter.setFont(_font(13))
        painter.drawText(QRectF(rect.left() + 12, line, rect.width() - 24, 20), names[key])
        if key == "only_new_tokens_evaluated":
            value = "yes" if goal.met else "no"
        else:
            value = f"{goal.value:.3f} (goal {goal.target})"
        painter.setPen(MET if goal.met else MISSED)
        painter.setFont(_font(13, bold=True))
        painter.drawText(
            QRectF(rect.left() + 12, line + 18, rect.width() - 24, 20),
            f"{'met' if goal.met else 'missed'}: {value}",
        )
        line += 50
    ttft = result.time_to_first_token
    painter.setPen(QUIET)
    painter.setFont(_font(12))
    painter.drawText(
        QRectF(rect.left() + 12, line, rect.width() - 24, rect.bottom() - line - 8),
        Qt.TextFlag.TextWordWrap,
        f"llama.cpp itself, turn 20 / turn 1: {ttft.direct_last_over_first.median:.2f}",
    )


def _legend(painter: QPainter, left: float, top: float) -> None:
    painter.setFont(_font(13))
    for color, text in (
        (KVCHAT, "kvchat, through the whole path"),
        (DIRECT, "llama.cpp direct, one process"),
        (WINDOW, "the window, fed by a scripted stream"),
    ):
        painter.fillRect(QRectF(left, top + 3, 12, 12), color)
        painter.setPen(INK)
        painter.drawText(QRectF(left + 18, top, 300, 18), text)
        left += 18 + painter.fontMetrics().horizontalAdvance(text) + 28


def draw_chart(result: BenchResult, path: Path) -> None:
    """Draws the run's figures into a PNG file.

    Raises:
        OSError: the file could not be written.
    """
    image = QImage(WIDTH, HEIGHT, QImage.Format.Format_RGB32)
    image.fill(QColor("white"))
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    machine = result.machine
    speed, ttft, gui, startup, memory = (
        result.speed,
        result.time_to_first_token,
        result.gui,
        result.startup,
        result.memory,
    )
    runs = len(speed.decode.ratio.values)
    painter.setPen(INK)
    painter.setFont(_font(20, bold=True))
    painter.drawText(
        QRectF(MARGIN, 10, WIDTH - 2 * MARGIN, 28),
        f"kvchat bench: {result.setup()}",
    )
    painter.setPen(QUIET)
    painter.setFont(_font(13))
    painter.drawText(
        QRectF(MARGIN, 40, WIDTH - 2 * MARGIN, 20),
        f"{machine['cpu']}, {machine['logical_cores']} cores, {machine['system']} · "
        f"{result.created} · other work took {machine['other_work_cpu_share']:.0%} of the CPU · "
        f"bars: median of {runs} runs, whiskers: min to max"
        + (" · quick run: sizes too small to mean anything" if result.quick else ""),
    )
    _legend(painter, MARGIN, 64)

    cell_w = (WIDTH - MARGIN * (COLUMNS + 1)) / COLUMNS
    cell_h = (HEIGHT - HEADER - MARGIN * (ROWS + 1)) / ROWS

    def cell(column: int, row: int) -> QRectF:
        rect = QRectF(
            MARGIN + column * (cell_w + MARGIN),
            HEADER + MARGIN + row * (cell_h + MARGIN),
            cell_w,
            cell_h,
        )
        painter.setPen(QPen(GRID, 1))
        painter.drawRect(rect)
        return rect

    for column, (name, figures) in enumerate(
        (("Decode", speed.decode), ("Prefill", speed.prefill))
    ):
        _panel(
            painter,
            cell(column, 0),
            f"{name}, tokens/s · ratio {figures.ratio.median:.3f}",
            [
                Group("kvchat", [Bar.of(figures.kvchat, KVCHAT)]),
                Group("llama.cpp direct", [Bar.of(figures.direct, DIRECT)]),
            ],
        )
    _panel(
        painter,
        cell(2, 0),
        "Time to first token, ms",
        [
            Group(
                f"turn {t.turn}",
                [
                    Bar.of(t.time_to_first_token_s, KVCHAT),
                    Bar.of(t.direct_time_to_first_token_s, DIRECT),
                ],
            )
            for t in ttft.turns
        ],
        scale=1000,
    )
    _panel(
        painter,
        cell(3, 0),
        "Launch, seconds",
        [
            Group("to the window shown", [Bar.of(startup.window_shown_s, KVCHAT)]),
            Group("to ready for a message", [Bar.of(startup.ready_s, KVCHAT)]),
        ],
        digits=2,
    )
    _panel(
        painter,
        cell(0, 1),
        "Window CPU µs/token (all, append)",
        [
            Group(
                f"{v.messages} messages",
                # A figure that could not be measured has no bar, never a negative one.
                [
                    *([Bar.of(v.gui_cpu_us_per_token, WINDOW)] if v.gui_cpu_us_per_token else []),
                    Bar.of(v.append_cpu_us_per_token, WINDOW_LIGHT),
                ],
            )
            for v in gui.views
        ],
        digits=1,
    )
    _panel(
        painter,
        cell(1, 1),
        f"Gaps in a {gui.heartbeat_ms} ms timer, ms (p50, p99)",
        [
            Group(
                f"{v.messages} messages",
                [Bar.of(v.stall_p50_ms, WINDOW_LIGHT), Bar.of(v.stall_p99_ms, WINDOW)],
            )
            for v in gui.views
        ],
        digits=1,
    )
    _panel(
        painter,
        cell(2, 1),
        "Memory, MiB",
        [
            Group("GUI process", [Bar.of(startup.gui_rss_bytes, KVCHAT)]),
            Group(
                "engine beyond the model", [Bar.single(memory.engine_beyond_model_bytes, KVCHAT)]
            ),
            Group(
                "direct loop before the model",
                [Bar.single(memory.direct_rss_before_model_bytes, DIRECT)],
            ),
            Group("the model's own", [Bar.single(memory.model_resident_bytes, DIRECT)]),
        ],
        scale=1 / 2**20,
    )
    _goals(painter, cell(3, 1), result)
    painter.end()
    writer = QImageWriter(str(path), QByteArray(b"png"))
    if not writer.write(image):
        raise OSError(f"could not write the chart to {path}: {writer.errorString()}")
