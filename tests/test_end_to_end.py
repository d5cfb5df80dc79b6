"""The real window driving the real model through the real engine host."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QAction
from pytestqt.qtbot import QtBot

from kvchat.app.core.formatting import format_stats
from kvchat.app.core.settings import EngineSettings
from kvchat.app.presenters.controller import Controller
from kvchat.app.presenters.gui import build_window
from kvchat.engine.protocol import ModelInfo, TurnStats
from kvchat.ui.main_window import MainWindow

WAIT_MS = 60_000


@pytest.fixture
def app_window(
    qtbot: QtBot, data_dir: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[MainWindow, Controller]]:
    model = getattr(request, "param", None)
    window, controller = build_window(model, EngineSettings(seed=42, max_tokens=400), data_dir)
    yield window, controller
    _dispose(qtbot, window)


def _dispose(qtbot: QtBot, window: MainWindow) -> None:
    window.close()
    window.deleteLater()
    qtbot.wait(1)


def _wait_loaded(qtbot: QtBot, controller: Controller) -> ModelInfo:
    if controller.model is None:
        with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS) as blocker:
            pass
        return blocker.args[0]  # type: ignore[no-any-return]
    return controller.model


def _type_and_send(qtbot: QtBot, window: MainWindow, text: str) -> None:
    qtbot.keyClicks(window.composer, text)
    qtbot.keyClick(window.composer, Qt.Key.Key_Return)


def test_chat_streams_into_the_window(
    qtbot: QtBot, app_window: tuple[MainWindow, Controller]
) -> None:
    window, controller = app_window
    # The window is up before the model: it shows loading, then the model.
    assert window.isVisible()
    info = _wait_loaded(qtbot, controller)
    assert window.model_label.text() == info.name == "SmolLM2-135M-Instruct.Q4_1"
    assert window.context_label.text() == "context 4096 tokens"
    assert window.send_button.isEnabled()

    deltas: list[str] = []
    controller.engine.text_received.connect(lambda _id, text: deltas.append(text))
    with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS) as finished:
        _type_and_send(qtbot, window, "What is the capital of France?")
        assert window.composer.toPlainText() == ""
        assert window.stop_button.isEnabled()
    stats: TurnStats = finished.args[0]
    assert len(deltas) > 2
    reply = "".join(deltas)
    shown = window.chat_view.toPlainText()
    assert "What is the capital of France?" in shown
    assert reply in shown
    assert window.speed_label.text() == f"last reply {stats.decode_tokens_per_s:.1f} tok/s"
    assert controller.conversation[-1].content == reply

    # Second turn: Stop after the first streamed text ends the reply, which stays.
    deltas.clear()

    def stop_on_first_text(_request_id: int, _text: str) -> None:
        if len(deltas) == 1:
            qtbot.mouseClick(window.stop_button, Qt.MouseButton.LeftButton)

    controller.engine.text_received.connect(stop_on_first_text)
    with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS) as finished:
        _type_and_send(qtbot, window, "Now tell me a very long story about Paris.")
    stats = finished.args[0]
    assert stats.stop_reason == "cancelled"
    assert stats.generated_tokens < 20
    assert stats.reused_tokens > 0  # the first turn came from the cache
    partial = "".join(deltas)
    assert partial and partial in window.chat_view.toPlainText()
    *_, footer, actions = window.chat_view.toPlainText().splitlines()
    assert "stopped" in footer
    assert actions == "   ↻ Regenerate"
    assert [m.role for m in controller.conversation] == ["user", "assistant"] * 2
    assert not window.stop_button.isEnabled()


def test_whitespace_message_is_not_sent(
    qtbot: QtBot, app_window: tuple[MainWindow, Controller]
) -> None:
    window, controller = app_window
    _wait_loaded(qtbot, controller)
    _type_and_send(qtbot, window, "   ")
    assert controller.conversation == []
    assert not controller.busy


def test_escape_stops_a_reply(qtbot: QtBot, app_window: tuple[MainWindow, Controller]) -> None:
    window, controller = app_window
    _wait_loaded(qtbot, controller)
    with qtbot.waitSignal(controller.engine.text_received, timeout=WAIT_MS):
        _type_and_send(qtbot, window, "Write a long poem about autumn.")
    with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS) as finished:
        window.stop_action.trigger()  # what Esc is bound to
    assert finished.args[0].stop_reason == "cancelled"
    assert window.stop_action.shortcut().toString() == "Esc"


def _zip(tmp_path: Path) -> str:
    path = tmp_path / "model.gguf"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weights", "x")
    return str(path)


def test_bad_model_is_explained_and_the_window_stays_usable(
    qtbot: QtBot, data_dir: Path, tmp_path: Path, model_path: Path
) -> None:
    window, controller = build_window(_zip(tmp_path), EngineSettings(), data_dir)
    try:
        with qtbot.waitSignal(controller.engine.load_failed, timeout=WAIT_MS):
            pass
        assert window.banner.isVisibleTo(window)
        assert window.banner.text() == (
            "Could not load model.gguf: not a GGUF file: it starts with PK, a zip archive?"
        )
        assert not window.send_button.isEnabled()
        qtbot.keyClicks(window.composer, "kept while no model is loaded")
        # File > Open model picks a good file: it loads, the typed text is still there.
        with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS):
            window.model_file_chosen.emit(str(model_path))
        assert not window.banner.isVisibleTo(window)
        assert window.composer.toPlainText() == "kept while no model is loaded"
        assert window.send_button.isEnabled()
    finally:
        _dispose(qtbot, window)


def test_missing_model_path_is_explained(qtbot: QtBot, data_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "gone.gguf"
    window, controller = build_window(str(missing), EngineSettings(), data_dir)
    try:
        with qtbot.waitSignal(controller.engine.load_failed, timeout=WAIT_MS):
            pass
        assert (
            window.banner.text() == f"Could not load gone.gguf: the file does not exist ({missing})"
        )
        assert window.model_label.text().startswith("No model")
    finally:
        _dispose(qtbot, window)


def test_closing_while_a_reply_streams_leaves_nothing_running(
    qtbot: QtBot, app_window: tuple[MainWindow, Controller]
) -> None:
    window, controller = app_window
    _wait_loaded(qtbot, controller)
    with qtbot.waitSignal(controller.engine.text_received, timeout=WAIT_MS):
        _type_and_send(qtbot, window, "Write a long essay about the ocean.")
    window.close()
    assert not controller.engine.running
    # The autouse fixture checks that no engine process or reader thread is left.


def test_closing_while_the_model_loads_leaves_nothing_running(
    qtbot: QtBot, app_window: tuple[MainWindow, Controller]
) -> None:
    window, controller = app_window
    assert controller.model is None
    window.close()
    assert not controller.engine.running


def test_ctrl_q_quits_and_stops_the_engine(
    qtbot: QtBot, app_window: tuple[MainWindow, Controller]
) -> None:
    window, controller = app_window
    _wait_loaded(qtbot, controller)
    (quit_action,) = [a for a in window.findChildren(QAction) if a.text() == "&Quit"]
    assert quit_action.shortcut().toString() == "Ctrl+Q"
    quit_action.trigger()
    assert not window.isVisible()
    assert not controller.engine.running


def test_memory_panels_follow_a_streamed_reply(
    qtbot: QtBot, app_window: tuple[MainWindow, Controller]
) -> None:
    window, controller = app_window
    _wait_loaded(qtbot, controller)
    monitor = controller.memory_monitor
    panel = window.memory_panel
    assert window.memory_dock.isVisible()
    fills: list[int] = []
    controller.engine.cache_filled.connect(fills.append)
    with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS) as finished:
        _type_and_send(qtbot, window, "Describe the moon in three sentences.")
    stats: TurnStats = finished.args[0]
    # The cache grew token by token while the reply streamed.
    assert len(fills) > 3 and fills == sorted(fills)
    assert fills[0] >= stats.prompt_tokens
    # The sample the host sends after the reply has the cache's final count.
    with qtbot.waitSignal(controller.engine.memory_sampled, timeout=WAIT_MS):
        pass
    panel.refresh()
    memory = monitor.memory
    assert memory is not None
    tokens = monitor.tokens
    # Every generated token is in the cache except one cut by the token limit.
    decoded = stats.generated_tokens - (stats.stop_reason == "length")
    assert tokens == stats.prompt_tokens + decoded
    assert panel.kv_panel.fill_label.text().startswith(f"{tokens:,} of 4,096 tokens")
    used = memory.kv_bytes_used(tokens)
    assert used == tokens * memory.kv_bytes_per_token
    assert panel.plot.kv_points[-1][1] == used / 2**20
    assert (
        panel.speed_panel.labels["decode"]
        .text()
        .startswith(f"{stats.decode_tokens_per_s:,.1f} tokens/s · {stats.decode_threads} thread")
    )
    assert stats.decode_threads >= 1
    panel.refresh()
    (host_row,) = panel.device_panel.rows()
    assert host_row.title.text().startswith("<b>CPU</b> RAM")
    assert panel.device_panel.note_label.text().startswith("CPU-only build")
    # Another context: the figures go as the switch is asked for, before the
    # new engine process says anything, and the new model's come with it.
    settings = controller.settings.model_copy(update={"n_ctx": 2048})
    with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS):
        controller.switch_model(controller.model.path, settings)
        assert monitor.kv_view() is None
        panel.refresh()
        assert panel.kv_panel.fill_label.text().startswith("Loading a model")
        assert panel.device_panel.rows() == []
    with qtbot.waitSignal(controller.engine.memory_sampled, timeout=WAIT_MS):
        pass
    panel.refresh()
    assert panel.kv_panel.fill_label.text() == "0 of 2,048 tokens (0%)"
    assert len(panel.device_panel.rows()) == 1


def test_switching_to_a_broken_model_brings_the_previous_back(
    qtbot: QtBot, app_window: tuple[MainWindow, Controller], tmp_path: Path
) -> None:
    window, controller = app_window
    info = _wait_loaded(qtbot, controller)
    with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS):
        _type_and_send(qtbot, window, "Say one word.")
    shown = window.chat_view.toPlainText()
    with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS) as back:
        window.model_file_chosen.emit(_zip(tmp_path))
    assert back.args[0].path == info.path
    assert window.banner.text() == (
        "Could not load model.gguf: not a GGUF file: it starts with PK, a zip archive?. "
        f"Loading {Path(info.path).name} again."
    )
    assert window.model_label.text() == info.name
    assert window.chat_view.toPlainText().startswith(shown)  # nothing on screen is lost
    assert [m.role for m in controller.conversation] == ["user", "assistant"]


def test_twenty_switches_leave_no_process_and_no_growth(
    qtbot: QtBot, app_window: tuple[MainWindow, Controller], model_path: Path
) -> None:
    import psutil

    _, controller = app_window
    _wait_loaded(qtbot, controller)
    gui = psutil.Process()
    hosts: set[int] = set()
    rss_after: list[int] = []
    for index in range(20):
        settings = controller.settings.model_copy(update={"n_ctx": 2048 if index % 2 else 1024})
        with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS) as loaded:
            controller.switch_model(str(model_path), settings)
        assert loaded.args[0].n_ctx == settings.n_ctx
        children = [c for c in gui.children() if "spawn_main" in " ".join(c.cmdline())]
        # The old engine is gone before the new one loads.
        assert len(children) == 1, [c.cmdline() for c in children]
        hosts.add(children[0].pid)
        rss_after.append(gui.memory_info().rss)
    assert len(hosts) == 20
    # The GUI process does not grow with switches (a little slack for Qt's caches).
    assert rss_after[-1] <= rss_after[4] * 1.05, [f"{rss / 2**20:.1f} MiB" for rss in rss_after]


def test_a_conversation_is_stored_and_reopens_after_a_restart(qtbot: QtBot, data_dir: Path) -> None:
    import sqlite3

    settings = EngineSettings(seed=7, max_tokens=40)
    window, controller = build_window(None, settings, data_dir)
    try:
        _wait_loaded(qtbot, controller)
        with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS) as finished:
            _type_and_send(qtbot, window, "Name a colour.")
        reply = controller.conversation[-1].content
        assert reply
    finally:
        _dispose(qtbot, window)
    connection = sqlite3.connect(data_dir / "kvchat.sqlite3")
    rows = connection.execute(
        "SELECT role, content, state, stats FROM messages ORDER BY position"
    ).fetchall()
    connection.close()
    assert [row[:3] for row in rows] == [
        ("user", "Name a colour.", "done"),
        ("assistant", reply, "done"),
    ]
    assert f'"generated_tokens": {finished.args[0].generated_tokens}' in rows[1][3]

    window, controller = build_window(None, settings, data_dir)
    try:
        # The conversation is back on screen before the model has even loaded.
        assert window.conversation_list.titles() == ["Name a colour."]
        shown = window.chat_view.toPlainText()
        assert shown.startswith("You   Copy   Edit\nName a colour.\nSmolLM2-135M-Instruct.Q4_1")
        assert format_stats(finished.args[0]) in shown
        _wait_loaded(qtbot, controller)
        # The model is sent the earlier turn: its prompt now has history.
        with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS) as second:
            _type_and_send(qtbot, window, "And another one?")
        assert second.args[0].history_tokens > 0
        assert [m.role for m in controller.conversation] == ["user", "assistant"] * 2
    finally:
        _dispose(qtbot, window)


def test_size_place_and_drafts_come_back_after_a_restart(
    qtbot: QtBot, data_dir: Path, model_path: Path
) -> None:
    window, controller = build_window(None, EngineSettings(max_tokens=8), data_dir)
    try:
        if controller.model is None:
            with qtbot.waitSignal(controller.engine.model_loaded, timeout=WAIT_MS):
                pass
        with qtbot.waitSignal(controller.reply_finished, timeout=WAIT_MS):
            controller.send("first conversation")
        first = controller.history.conversation
        assert first is not None
        window.composer.setPlainText("a draft for the first")
        window.new_action.trigger()
        assert window.composer.toPlainText() == ""
        window.composer.setPlainText("a draft for a new one")
        controller.open_conversation(first.key)
        assert window.composer.toPlainText() == "a draft for the first"
        # Within the offscreen screen (800x600): restoring clamps to the screen.
        window.resize(760, 560)
        qtbot.waitUntil(lambda: window.width() == 760)
    finally:
        window.close()
        window.deleteLater()
    window, controller = build_window(None, EngineSettings(max_tokens=8), data_dir)
    try:
        assert (window.width(), window.height()) == (760, 560)
        assert controller.history.conversation is not None
        assert controller.history.conversation.key == first.key
        assert window.composer.toPlainText() == "a draft for the first"
        window.new_action.trigger()
        assert window.composer.toPlainText() == "a draft for a new one"
    finally:
        window.close()
        window.deleteLater()
    qtbot.wait(1)
