"""The "Get models" dialog and its flow, against a real hub (olah, tests/hub_fixture.py).

olah implements no search, so the results table is fed search results
directly; everything from choosing a repository on (its files, the fits
answers, downloads, Cancel, Load) goes through the hub and into a cache of
the test's own, which the model search is pointed at as HF_HUB_CACHE.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
from huggingface_hub import constants
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMenu, QTableWidget
from pytestqt.qtbot import QtBot

from kvchat.app.hub.catalog import SORTS as HUB_SORTS
from kvchat.app.hub.catalog import RepoSummary
from kvchat.app.presenters.controller import Controller
from kvchat.app.presenters.models_flow import PROJECTOR_NOTE, GetModelsFlow, repo_row
from kvchat.app.presenters.settings_flow import SettingsFlow
from kvchat.ui.get_models_dialog import (
    BAR_STEPS,
    SORTS,
    DownloadState,
    DownloadView,
    GetModelsDialog,
    RepoRow,
    progress_line,
)
from kvchat.ui.main_window import MainWindow
from kvchat.ui.memory_panel import format_bytes
from tests.hub_fixture import BUNDLED_NAME, Hub
from tests.scripted_engine import ScriptedEngine, open_window

WAIT_MS = 60_000
FLOW_THREADS = ("kvchat-hub", "kvchat-downloads")
TINY = "tiny-Q8_0.gguf"


def _children() -> set[int]:
    """The test process's own children (olah's, the session hub's, are olah's)."""
    return {child.pid for child in psutil.Process().children()}


def _flow_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in FLOW_THREADS and t.is_alive()]


@dataclass
class App:
    """A scripted window with its settings flow, and the models flows made for it."""

    qtbot: QtBot
    window: MainWindow
    controller: Controller
    settings_flow: SettingsFlow
    data_dir: Path
    cache: Path

    def models(self, endpoint: str) -> GetModelsFlow:
        return GetModelsFlow(
            self.controller,
            self.settings_flow,
            self.data_dir,
            endpoint=endpoint,
            cache_dir=self.cache,
        )


@pytest.fixture
def app(
    qtbot: QtBot, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[App]:
    """The window, closed at the end; no flow thread and no child process may outlive it."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # where the model search looks
    before = _children()  # olah, the session's hub, among them
    window, controller = open_window(data_dir, ScriptedEngine(lambda _m: ["ok"]))
    qtbot.waitUntil(lambda: controller.model is not None)
    settings_flow = controller.settings_flow  # made by the time the engine started
    assert isinstance(settings_flow, SettingsFlow)
    yield App(qtbot, window, controller, settings_flow, data_dir, cache)
    flows = controller.findChildren(GetModelsFlow)
    if window.isVisible():
        window.close()  # the flows cancel their downloads and stop as it closes
    assert all(flow.join(30.0) for flow in flows)
    window.deleteLater()
    qtbot.wait(1)
    qtbot.waitUntil(lambda: not _children() - before, timeout=30_000)
    assert _flow_threads() == []


def _open_repo(app: App, flow: GetModelsFlow, repo: str) -> GetModelsDialog:
    """Opens the dialog and picks `repo` in its results, as a click would."""
    dialog = flow.open()
    dialog.show_results([RepoRow(repo)])
    with app.qtbot.waitSignal(dialog.repo_chosen) as chosen:
        dialog.select_repo(repo)
    assert chosen.args == [repo]
    return dialog


def _texts(table: QTableWidget, row: int) -> list[str]:
    items = [table.item(row, column) for column in range(table.columnCount())]
    return [item.text() if item is not None else "" for item in items]


def _file_cells(dialog: GetModelsDialog) -> dict[str, list[str]]:
    """Each file's row by its label: quantization, size, fits."""
    cells = {}
    for row in range(dialog.files.rowCount()):
        texts = _texts(dialog.files, row)
        cells[texts[0]] = texts[1:]
    return cells


def _listed(dialog: GetModelsDialog) -> bool:
    return dialog.files.rowCount() > 0


def _cached_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file())


def test_search_results_show_what_the_hub_says(qtbot: QtBot) -> None:
    dialog = GetModelsDialog(4096, (512, 1 << 20))
    qtbot.addWidget(dialog)
    found = [
        RepoSummary(
            "bartowski/Qwen2.5-7B-Instruct-GGUF",
            downloads=1_234_567,
            likes=345,
            last_modified=datetime(2025, 1, 2, 3, 4, tzinfo=UTC),
            license="apache-2.0",
            parameters=7_615_616_512,
            gated=False,
        ),
        RepoSummary("meta-llama/Llama-Guard-GGUF", 12_345, 7, None, "llama3", 135_000_000, True),
        RepoSummary("someone/unknown-GGUF", None, None, None, None, None, False),
    ]
    dialog.show_results([repo_row(summary) for summary in found])
    rows = [_texts(dialog.results, row) for row in range(dialog.results.rowCount())]
    assert rows == [
        ["bartowski/Qwen2.5-7B-Instruct-GGUF", "1.2M", "345", "2025-01-02", "apache-2.0", "7.6B"],
        ["meta-llama/Llama-Guard-GGUF  (gated)", "12.3k", "7", "", "llama3", "135M"],
        ["someone/unknown-GGUF", "", "", "", "", ""],
    ]
    gated = dialog.results.item(1, 0)
    assert gated is not None and "HF_TOKEN" in gated.toolTip()
    # A click asks for the repository's files, under its name (not the "gated" mark).
    with qtbot.waitSignal(dialog.repo_chosen) as chosen:
        dialog.results.selectRow(1)
    assert chosen.args == ["meta-llama/Llama-Guard-GGUF"]
    # Each sort the view offers is one the hub knows.
    assert {key for key, _label in SORTS} <= set(HUB_SORTS)
    with qtbot.waitSignal(dialog.search_requested) as searched:
        dialog.query.setText("  qwen ")
        dialog.sort.setCurrentIndex(1)
    assert searched.args == ["qwen", "likes"]
    # Enter in the search line searches, and leaves the dialog open.
    dialog.show()
    with qtbot.waitSignal(dialog.search_requested) as searched:
        qtbot.keyClick(dialog.query, Qt.Key.Key_Return)
    assert searched.args == ["qwen", "likes"]
    assert dialog.isVisible()


def test_a_download_line_says_bytes_speed_and_time_left() -> None:
    view = DownloadView(
        1,
        "model.gguf",
        DownloadState.DOWNLOADING,
        done_bytes=412 << 20,
        total_bytes=int(4.1 * (1 << 30)),
        bytes_per_s=23.5 * (1 << 20),
        seconds_left=160.4,
    )
    assert progress_line(view) == "412.0 MiB of 4.1 GiB · 23.5 MiB/s · 2 min 41 s left"
    split = DownloadView(1, "m", DownloadState.DOWNLOADING, 1 << 19, 1 << 20, 0.0, None, 2, 3)
    assert progress_line(split) == "part 2 of 3 · 512.0 KiB of 1.0 MiB"
    waiting = DownloadView(1, "m", DownloadState.DOWNLOADING, 0, 1 << 20)
    assert progress_line(waiting) == "waiting for the first bytes · 1.0 MiB to fetch"
    done = DownloadView(1, "m", DownloadState.DONE, 1 << 20, 1 << 20)
    assert progress_line(done) == "done: 1.0 MiB in the cache, sha256 checked"
    assert progress_line(DownloadView(1, "m", DownloadState.CHECKING)) == "checking the sha256…"
    assert progress_line(DownloadView(1, "m", DownloadState.QUEUED)) == "queued"
    failed = DownloadView(1, "m", DownloadState.FAILED, message="the disk filled up")
    assert progress_line(failed) == "the disk filled up"


def test_choosing_a_repository_lists_its_models_with_fits_answers(app: App, hub: Hub) -> None:
    flow = app.models(hub.endpoint)
    dialog = _open_repo(app, flow, hub.repo)
    app.qtbot.waitUntil(lambda: _listed(dialog), timeout=WAIT_MS)
    cells = _file_cells(dialog)
    assert set(cells) == {
        "tiny-F16.gguf",
        "broken-Q4_0.gguf",
        BUNDLED_NAME,
        TINY,
        "tiny-split-Q8_0.gguf (3 parts)",
        "mmproj-tiny-F16.gguf",
    }
    assert cells[TINY][:2] == ["Q8_0", format_bytes(hub.files[TINY].stat().st_size)]
    split_size = sum(
        path.stat().st_size for name, path in hub.files.items() if name.startswith("tiny-split-")
    )
    assert cells["tiny-split-Q8_0.gguf (3 parts)"][:2] == ["Q8_0", format_bytes(split_size)]
    # Grouped by quantization, the projector last; it is shown, greyed, and never offered.
    quantizations = [cells[label][0] for label in cells]
    assert quantizations[:-1] == sorted(quantizations[:-1])
    assert list(cells)[-1] == "mmproj-tiny-F16.gguf"
    assert cells["mmproj-tiny-F16.gguf"][2] == PROJECTOR_NOTE
    dialog.select_file("mmproj-tiny-F16.gguf")
    assert dialog.selected_file() == ""
    assert not dialog.download_button.isEnabled()
    dialog.select_file(TINY)
    assert dialog.download_button.isEnabled()

    def fits(label: str) -> str:
        return _file_cells(dialog)[label][2]

    app.qtbot.waitUntil(lambda: fits(TINY).startswith("fits in RAM"), timeout=WAIT_MS)
    # The selected file's load per device, in the settings dialog's words.
    assert dialog.split.isVisibleTo(dialog)
    assert dialog.split.text().startswith("<b>CPU</b>: ")
    assert "(weights " in dialog.split.text() and " free" in dialog.split.text()
    app.qtbot.waitUntil(
        lambda: "not a model kvchat can use" in fits("broken-Q4_0.gguf"), timeout=WAIT_MS
    )
    app.qtbot.waitUntil(
        lambda: fits("tiny-split-Q8_0.gguf (3 parts)").startswith("fits"), timeout=WAIT_MS
    )
    # Another context asks every answer again.
    dialog.context.setValue(8192)
    assert fits(TINY) == "…"
    assert not dialog.split.isVisibleTo(dialog)
    app.qtbot.waitUntil(lambda: fits(TINY).startswith("fits in RAM"), timeout=WAIT_MS)


def test_a_download_shows_its_progress_then_loads_from_the_list(app: App, hub: Hub) -> None:
    flow = app.models(hub.endpoint)
    dialog = _open_repo(app, flow, hub.repo)
    app.qtbot.waitUntil(lambda: _listed(dialog), timeout=WAIT_MS)
    shown: list[DownloadView] = []
    flow.download_changed.connect(shown.append)
    dialog.select_file(TINY)
    with app.qtbot.waitSignal(flow.downloaded, timeout=WAIT_MS) as finished:
        dialog.download_button.click()
    (path,) = finished.args
    states = [view.state for view in shown]
    assert states[0] is DownloadState.QUEUED
    assert DownloadState.CHECKING in states
    assert states[-1] is DownloadState.DONE
    checking = next(v for v in shown if v.state is DownloadState.CHECKING)
    assert checking.done_bytes == checking.total_bytes == hub.files[TINY].stat().st_size
    # In the cache, as huggingface_hub lays it out, with the hub's bytes.
    local = Path(path)
    assert local.is_relative_to(app.cache)
    assert local.name == TINY
    assert local.read_bytes() == hub.files[TINY].read_bytes()
    assert not [name for name in _cached_files(app.cache) if name.endswith(".incomplete")]
    entry = dialog._entries[shown[0].download_id]
    assert entry.bar.value() == BAR_STEPS
    assert entry.line.text() == (
        f"done: {format_bytes(hub.files[TINY].stat().st_size)} in the cache, sha256 checked"
    )
    assert entry.load.isVisibleTo(dialog) and not entry.cancel.isVisibleTo(dialog)
    # The model list has it at once.
    switcher = app.window.model_switcher

    def listed_paths() -> list[str]:
        return [switcher.itemData(i) for i in range(switcher.count())]

    app.qtbot.waitUntil(lambda: path in listed_paths(), timeout=WAIT_MS)
    with app.qtbot.waitSignal(dialog.load_requested) as load:
        entry.load.click()
    assert load.args == [path]
    app.qtbot.waitUntil(
        lambda: app.controller.model is not None and app.controller.model.path == path,
        timeout=WAIT_MS,
    )


def test_a_queued_download_cancels_at_once_and_a_running_one_cleans_up(app: App, hub: Hub) -> None:
    flow = app.models(hub.endpoint)
    dialog = _open_repo(app, flow, hub.repo)
    app.qtbot.waitUntil(lambda: _listed(dialog), timeout=WAIT_MS)
    shown: dict[int, DownloadView] = {}
    flow.download_changed.connect(lambda view: shown.__setitem__(view.download_id, view))
    big = flow.download(BUNDLED_NAME)
    small = flow.download(TINY)
    assert big is not None and small is not None
    # Asked again while it waits: the same entry, not a second one.
    assert flow.download(TINY) == small
    assert shown[small].state is DownloadState.QUEUED
    with app.qtbot.waitSignal(dialog.cancel_requested) as cancelled:
        dialog._entries[small].cancel.click()
    assert cancelled.args == [small]
    assert shown[small].state is DownloadState.CANCELLED
    assert dialog._entries[small].line.text() == "cancelled"
    assert not dialog._entries[small].cancel.isVisibleTo(dialog)
    # The big one is running (its child is starting): Cancel ends it and removes its part.
    app.qtbot.waitUntil(lambda: shown[big].state is DownloadState.DOWNLOADING, timeout=WAIT_MS)
    with app.qtbot.waitSignal(flow.download_cancelled, timeout=WAIT_MS):
        flow.cancel(big)
        assert shown[big].state is DownloadState.CANCELLING
    assert shown[big].state is DownloadState.CANCELLED
    app.qtbot.waitUntil(lambda: not flow.busy, timeout=WAIT_MS)
    # Neither file, nor anything half fetched, is left in the cache.
    assert [name for name in _cached_files(app.cache) if not name.endswith(".lock")] == []


def test_closing_the_window_cancels_the_downloads_and_leaves_nothing(app: App, hub: Hub) -> None:
    flow = app.models(hub.endpoint)
    dialog = _open_repo(app, flow, hub.repo)
    app.qtbot.waitUntil(lambda: _listed(dialog), timeout=WAIT_MS)
    states: dict[int, DownloadState] = {}
    flow.download_changed.connect(lambda view: states.__setitem__(view.download_id, view.state))
    running = flow.download(BUNDLED_NAME)
    assert running is not None
    flow.download(TINY)
    app.qtbot.waitUntil(lambda: states[running] is DownloadState.DOWNLOADING, timeout=WAIT_MS)
    app.window.close()
    assert flow.join(30.0)  # the running one's child ended and its part was removed
    assert [name for name in _cached_files(app.cache) if not name.endswith(".lock")] == []


def test_searching_for_a_repository_by_name_lists_its_files(app: App, hub: Hub) -> None:
    flow = app.models(hub.endpoint)
    dialog = flow.open()
    dialog.query.setText(hub.repo)
    # The search's answer comes after the listing's (one worker, in order).
    with app.qtbot.waitSignal(
        flow.searched, timeout=WAIT_MS, check_params_cb=lambda _g, query, _a: query == hub.repo
    ):
        app.qtbot.keyClick(dialog.query, Qt.Key.Key_Return)
    assert TINY in _file_cells(dialog)
    assert dialog.files_caption.text().startswith(f"<b>{hub.repo}</b>: 6 GGUF files")
    # olah does not search; the repository named is listed, so that is no problem.
    assert not dialog.status.isVisibleTo(dialog)


def test_a_repository_without_gguf_files_says_so(app: App, hub: Hub) -> None:
    flow = app.models(hub.endpoint)
    dialog = _open_repo(app, flow, hub.empty_repo)
    app.qtbot.waitUntil(
        lambda: dialog.files_caption.text() == f"{hub.empty_repo} has no GGUF files.",
        timeout=WAIT_MS,
    )
    assert dialog.files.rowCount() == 0
    assert not dialog.download_button.isEnabled()


def test_an_unreachable_hub_is_said_in_words(app: App) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the probe is
    flow = app.models(f"http://127.0.0.1:{port}")
    dialog = flow.open()  # its first search, of the most downloaded models, fails fast
    app.qtbot.waitUntil(lambda: "cannot reach" in dialog.status.text(), timeout=15_000)
    assert dialog.status.text() == (
        f"cannot reach 127.0.0.1:{port} (connection refused); local models work as ever"
    )
    assert dialog.status.isVisibleTo(dialog)


def test_the_file_menu_and_the_settings_dialog_open_it(
    app: App, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The app's own wiring, with the hub that HF_ENDPOINT would name.
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    settings_flow = app.settings_flow
    (flow,) = [f for f in app.controller.findChildren(GetModelsFlow) if f.endpoint is None]
    file_menu = app.window.menuBar().actions()[0].menu()
    assert isinstance(file_menu, QMenu)
    menu_entries = [action.text() for action in file_menu.actions()]
    assert menu_entries.index("&Get models…") == menu_entries.index("&Open model…") + 1
    app.window.get_models_action.trigger()
    dialog = flow.dialog
    assert dialog is not None and dialog.isVisible()
    assert not dialog.isModal()
    assert dialog.context.value() == (app.controller.settings.n_ctx or 4096)
    dialog.close()
    settings = settings_flow.open()
    settings.get_models_button.click()
    assert flow.dialog is dialog and dialog.isVisible()
    settings.close()


def test_the_dialog_fits_a_small_window(qtbot: QtBot) -> None:
    parent = MainWindow()
    qtbot.addWidget(parent)
    parent.resize(900, 650)
    dialog = GetModelsDialog(4096, (512, 1 << 20), parent)
    dialog.show()
    qtbot.waitExposed(dialog)
    assert dialog.width() <= 900 and dialog.height() <= 650
    minimum = dialog.minimumSizeHint()
    assert minimum.width() <= 900 and minimum.height() <= 650
    assert dialog.windowModality() is Qt.WindowModality.NonModal
