"""`kvchat bench` end to end at a tiny size: every field written, and a real PNG.

Speed is never checked: the figures depend on the machine and on whatever
else it runs, and a smoke-sized run's figures mean nothing anyway.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import types
import typing
from pathlib import Path

import psutil
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from kvchat.app.bench import measure as bench
from kvchat.app.bench.busy import Burner, recovery_tokens
from kvchat.app.bench.chart import HEIGHT, WIDTH
from kvchat.app.cli.main import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check(value: object, hint: object, where: str) -> None:
    """Checks that `value`, read back from JSON, has the shape of the type `hint`."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        assert isinstance(hint, type)
        assert isinstance(value, dict), where
        hints = typing.get_type_hints(hint, vars(bench))
        assert set(value) == {f.name for f in dataclasses.fields(hint)}, where
        for name, field_hint in hints.items():
            _check(value[name], field_hint, f"{where}.{name}")
        if hint is bench.Spread:
            assert value["low"] <= value["median"] <= value["high"], where
            assert value["values"], where
    elif origin is tuple:
        assert isinstance(value, list) and value, where
        for index, item in enumerate(value):
            _check(item, typing.get_args(hint)[0], f"{where}[{index}]")
    elif origin is dict:
        assert isinstance(value, dict) and value, where
        for key, item in value.items():
            _check(item, typing.get_args(hint)[1], f"{where}.{key}")
    elif origin in (typing.Union, types.UnionType):
        others = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if value is not None and len(others) == 1:
            _check(value, others[0], where)  # a figure, or None where it cannot be measured
        else:
            assert value is None or any(
                isinstance(value, arg) for arg in others if isinstance(arg, type)
            ), where
    elif hint is bool:
        assert isinstance(value, bool), where
    elif hint in (int, float):
        assert isinstance(value, int | float) and not isinstance(value, bool), where
        assert math.isfinite(value), where
    elif hint is str:
        assert isinstance(value, str) and value, where
    else:
        assert hint is object and value is not None, where


def test_bench_writes_every_field_and_a_chart(
    qapp: QApplication, tmp_path: Path, model_path: Path
) -> None:
    results, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["bench", "--quick", "--model", str(model_path)]
    assert main([*argv, "--json", str(results), "--chart", str(chart)]) == 0

    written = json.loads(results.read_text())
    _check(written, bench.BenchResult, "result")
    assert written["decode_ratio"] > 0 and written["prefill_ratio"] > 0
    assert written["quick"] is True
    assert set(written["goals"]) == {
        "decode_over_bare",
        "busy_decode_ratio",
        "decode_ratio",
        "prefill_ratio",
        "ttft_turn20_over_turn1",
        "only_new_tokens_evaluated",
    }
    assert [t["turn"] for t in written["time_to_first_token"]["turns"]] == [1, 5, 10, 20]
    assert [v["messages"] for v in written["gui"]["views"]] == [10, 1000]
    # Not speed: the cache must carry every turn over, whatever the machine.
    assert written["time_to_first_token"]["only_new_tokens_evaluated"] is True

    assert chart.read_bytes().startswith(PNG_SIGNATURE)
    image = QImage(str(chart))
    assert (image.width(), image.height()) == (WIDTH, HEIGHT)


def test_a_cpu_figure_that_cannot_be_measured_is_none_never_negative(qtbot: QtBot) -> None:
    """The heartbeat's own cost is measured apart; when it comes out larger
    than a run's whole CPU time, the run says so instead of -545 µs."""
    window = bench._filled_window(2)
    qtbot.addWidget(window)
    honest = bench._stream_once(window, 40, heartbeat_cpu_per_s=0.0)
    assert honest.gui_cpu_us_per_token is not None and honest.gui_cpu_us_per_token > 0
    swamped = bench._stream_once(window, 40, heartbeat_cpu_per_s=1e6)
    assert swamped.gui_cpu_us_per_token is None
    assert swamped.append_cpu_us_per_token >= 0


def test_recovery_counts_tokens_from_the_stop_to_idle_speed() -> None:
    # Idle: 100 tokens/s throughout. Busy: 25 tokens/s until token 150, then
    # 60 tokens/s for 40 tokens (threads coming back), then idle speed.
    idle = [(n / 100, n) for n in range(0, 400)]
    busy, now = [], 0.0
    for n in range(0, 400):
        busy.append((now, n))
        now += 1 / 25 if n < 150 else 1 / 60 if n < 190 else 1 / 100
    tokens = recovery_tokens(busy, idle, stopped_at=150, window=32)
    # From token 188, two slow tokens and 30 at idle speed average 96 tokens/s.
    assert tokens == 38
    # A reply that ends before decode is back has no recovery figure.
    assert recovery_tokens(busy[:180], idle, stopped_at=150, window=32) is None


def test_the_burner_keeps_a_cpu_busy_until_stopped() -> None:
    with Burner() as burner:
        assert burner.running
        process = psutil.Process(burner._process.pid)  # type: ignore[union-attr]
        # Busy: past its start it runs, or waits for a CPU, whenever it is
        # looked at. How much CPU it gets is the scheduler's business: other
        # processes (another test worker, a build) may share the cores.
        deadline = time.monotonic() + 30.0
        while sum(process.cpu_times()[:2]) < 0.2:
            assert time.monotonic() < deadline, "the burner never got going"
            time.sleep(0.01)
        for _ in range(20):
            assert process.status() == psutil.STATUS_RUNNING
            time.sleep(0.01)
    assert not burner.running
    assert not psutil.pid_exists(process.pid) or process.status() == psutil.STATUS_ZOMBIE
