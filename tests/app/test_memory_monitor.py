"""The monitor turns engine events into panel views (events replayed, no engine)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from kvchat.app.presenters.engine_client import EngineClient
from kvchat.app.presenters.memory_monitor import MemoryMonitor
from kvchat.engine.protocol import (
    DeviceBuffers,
    DeviceSample,
    HostExited,
    KvCache,
    LoadMemory,
    MemorySample,
    PromptEvaluated,
    TurnStats,
)
from kvchat.ui.memory_panel import MemoryPanel

MIB = 2**20
MEMORY = LoadMemory(
    buffers=(
        DeviceBuffers("CPU", 100 * MIB, 0, 20 * MIB),
        DeviceBuffers("CUDA0", 4000 * MIB, 512 * MIB, 300 * MIB),
    ),
    kv_caches=(KvCache(4096, 32, 131072, "f16", "f16"),),
    kv_device="CUDA0",
)
GPU = DeviceSample(
    "CUDA0", "NVIDIA H100", "gpu", 80 * 1024 * MIB, 70 * 1024 * MIB, 5000 * MIB, 3.35e12
)
HOST = DeviceSample("CPU", "AMD EPYC", "cpu", 64 * 1024 * MIB, 60 * 1024 * MIB, 900 * MIB)


class _Info:
    n_ctx = 4096


def _monitor(qtbot: QtBot, tmp_path: Path) -> tuple[MemoryMonitor, EngineClient, MemoryPanel]:
    panel = MemoryPanel()
    qtbot.addWidget(panel)
    panel.show()
    engine = EngineClient(tmp_path / "engine.log")  # never started: events are replayed
    monitor = MemoryMonitor(panel, engine)
    engine.memory_reported.emit(MEMORY)
    engine.model_loaded.emit(_Info())
    return monitor, engine, panel


def test_streamed_tokens_move_the_kv_figures(qtbot: QtBot, tmp_path: Path) -> None:
    monitor, engine, panel = _monitor(qtbot, tmp_path)
    engine.prompt_evaluated.emit(PromptEvaluated(1, 200, 20, 100, 150, 50))
    engine.cache_filled.emit(260)
    panel.refresh()
    view = monitor.kv_view()
    assert view is not None
    assert view.tokens == 260
    assert view.bytes_used == 260 * 131072
    assert view.device == "CUDA0"
    assert panel.kv_panel.fill_label.text() == "260 of 4,096 tokens (6%)"
    assert panel.plot.kv_points[-1][1] == 260 * 131072 / MIB


def test_samples_fill_the_device_rows(qtbot: QtBot, tmp_path: Path) -> None:
    _, engine, panel = _monitor(qtbot, tmp_path)
    engine.memory_sampled.emit(MemorySample(3.0, (HOST, GPU), 10, True, ""))
    panel.refresh()
    _, gpu_row = panel.device_panel.rows()
    assert "this model 4.7 GiB" in gpu_row.detail.text()
    assert panel.device_panel.note_label.isHidden()
    # The plot's engine line follows the KV device's per-process figure (NVML).
    assert panel.plot.process_points[-1][1] == 5000


def test_cpu_only_build_is_said_plainly(qtbot: QtBot, tmp_path: Path) -> None:
    _, engine, panel = _monitor(qtbot, tmp_path)
    engine.memory_sampled.emit(MemorySample(1.0, (HOST,), 0, False, ""))
    panel.refresh()
    assert panel.device_panel.note_label.text() == "CPU-only build: the model runs in RAM."


def test_turn_speed_uses_weights_and_kv_read_per_token(qtbot: QtBot, tmp_path: Path) -> None:
    _, engine, panel = _monitor(qtbot, tmp_path)
    engine.memory_sampled.emit(MemorySample(1.0, (HOST, GPU), 1000, True, ""))
    stats = TurnStats(1100, 20, 800, 900, 200, 100, 0.08, 5000.0, 100.0, "eos")
    engine.turn_finished.emit(1, "reply", stats)
    panel.refresh()
    read = 4100 * MIB + 1000 * 131072
    text = panel.speed_panel.labels["bandwidth"].text()
    assert text.startswith(f"{read * 100 / 1e9:.2f} GB/s")
    assert "of the 3.35 TB/s peak" in text


def test_figures_of_the_last_model_go_when_another_load_begins(
    qtbot: QtBot, tmp_path: Path
) -> None:
    monitor, engine, panel = _monitor(qtbot, tmp_path)
    engine.prompt_evaluated.emit(PromptEvaluated(1, 476, 20, 100, 476, 1))
    engine.memory_sampled.emit(MemorySample(1.0, (HOST, GPU), 477, True, ""))
    panel.set_estimate("Estimate / actual: …")
    panel.refresh()
    qtbot.waitUntil(lambda: panel.device_panel.height() > 0 and panel.estimate_label.height() > 0)
    heights = [w.height() for w in (panel.kv_panel, panel.device_panel, panel.estimate_label)]
    engine.load_progress.emit(0.0)
    panel.refresh()
    assert monitor.kv_view() is None
    waiting = "Loading a model: its figures come once it is in memory."
    assert panel.kv_panel.fill_label.text() == "Loading a model…"
    assert panel.device_panel.note_label.text() == waiting
    assert panel.device_panel.rows() == []
    assert panel.estimate_label.text() == ""
    # Meanwhile they keep their heights: the plots below are not resized twice.
    held = [w.minimumHeight() for w in (panel.kv_panel, panel.device_panel, panel.estimate_label)]
    assert held == heights
    # The new model's figures arrive with it, starting from an empty cache.
    engine.memory_reported.emit(MEMORY)
    engine.model_loaded.emit(_Info())
    view = monitor.kv_view()
    assert view is not None and view.tokens == 0 and view.reused_tokens is None
    engine.memory_sampled.emit(MemorySample(1.0, (HOST, GPU), 0, True, ""))
    panel.refresh()
    assert len(panel.device_panel.rows()) == 2
    assert panel.device_panel.minimumHeight() == 0
    # The estimate comes after the load, into the place the last one kept.
    assert panel.estimate_label.isVisibleTo(panel)
    assert panel.estimate_label.minimumHeight() == heights[2]
    panel.set_estimate("Estimate / actual: the new model's")
    assert panel.estimate_label.minimumHeight() == 0
    assert panel.estimate_label.isVisibleTo(panel)
    # None for the next model (one on a server): its place goes.
    engine.load_progress.emit(0.0)
    engine.memory_reported.emit(MEMORY)
    engine.model_loaded.emit(_Info())
    panel.set_estimate("")
    assert not panel.estimate_label.isVisibleTo(panel)
    assert panel.estimate_label.minimumHeight() == 0


def test_a_load_asked_for_ends_the_figures_before_the_engine_speaks(
    qtbot: QtBot, tmp_path: Path
) -> None:
    """A switch starts a new engine process, which says nothing for a while:
    the last model's figures go at the panel's next refresh, not then."""
    monitor, engine, panel = _monitor(qtbot, tmp_path)
    engine.memory_sampled.emit(MemorySample(1.0, (HOST, GPU), 477, True, ""))
    panel.refresh()
    assert len(panel.device_panel.rows()) == 2
    monitor.engine_state_changed("ready")  # not a load: the figures stay
    assert monitor.kv_view() is not None
    monitor.engine_state_changed("starting")
    assert monitor.kv_view() is None
    # A sample the old engine sent before it ended changes nothing now.
    engine.memory_sampled.emit(MemorySample(2.0, (HOST, GPU), 477, True, ""))
    # Said with the panel's next refresh, not inside the switch's own turn.
    assert len(panel.device_panel.rows()) == 2
    panel.refresh()
    waiting = "Loading a model: its figures come once it is in memory."
    assert panel.kv_panel.fill_label.text() == "Loading a model…"
    assert panel.device_panel.note_label.text() == waiting
    assert panel.device_panel.rows() == []


def test_an_engine_that_ended_is_not_shown_as_loading(qtbot: QtBot, tmp_path: Path) -> None:
    monitor, engine, panel = _monitor(qtbot, tmp_path)
    monitor.engine_state_changed("loading")
    engine.host_exited.emit(HostExited(-9, "killed", ""))
    panel.refresh()
    assert panel.kv_panel.fill_label.text() == "No model in memory"
    stopped = "The engine is not running: no model is in memory."
    assert panel.device_panel.note_label.text() == stopped


def test_a_load_not_yet_shown_is_shown_before_the_new_model(qtbot: QtBot, tmp_path: Path) -> None:
    """A load quicker than a refresh (a model on a server): the new model's
    figures and estimate come after the loading state, not before it."""
    monitor, engine, panel = _monitor(qtbot, tmp_path)
    panel.set_estimate("Estimate / actual: the last model's")
    monitor.engine_state_changed("starting")
    engine.memory_reported.emit(MEMORY)
    engine.model_loaded.emit(_Info())
    panel.set_estimate("Estimate / actual: the new model's")
    panel.refresh()
    assert panel.estimate_label.text() == "Estimate / actual: the new model's"
    assert monitor.kv_view() is not None
    assert panel.kv_panel.fill_label.text() == "0 of 4,096 tokens (0%)"


def test_restored_tokens_and_the_conversations_kept_aside_are_shown(
    qtbot: QtBot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cleared: list[bool] = []
    monkeypatch.setattr(EngineClient, "clear_saved_states", lambda _self: cleared.append(True))
    _, engine, panel = _monitor(qtbot, tmp_path)
    engine.prompt_evaluated.emit(PromptEvaluated(1, 3132, 20, 3000, 3120, 12, 3120, "disk", 0.038))
    sample = MemorySample(1.0, (HOST, GPU), 3132, True, "", 2, 8 * MIB, 1, 4 * MIB)
    engine.memory_sampled.emit(sample)
    panel.refresh()
    assert panel.kv_panel.turn_label.text() == (
        "Last prompt: 3,120 tokens from the cache (3,120 restored from disk in 38 ms), 12 evaluated"
    )
    types = panel.kv_panel.types_label.text()
    assert "kept aside: 2 in RAM, 8.0 MiB · 1 on disk, 4.0 MiB" in types
    panel.kv_panel.types_label.linkActivated.emit("clear")
    assert cleared == [True]
