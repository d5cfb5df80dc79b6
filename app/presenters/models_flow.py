"""The "Get models" dialog's owner: the hub's answers, fits answers, and a download queue.

What the dialog asks for runs off the GUI thread, on two workers: one for
the hub's answers (a search, a repository's files, then one fits estimate
per file, each fetching only the file's header), one for the downloads,
one at a time in the order asked. Each answer comes back through a queued
signal; a newer request makes older answers stale (a generation counter,
as app.settings_flow keeps), so the newest request wins. The hub modules
(huggingface_hub, httpx) are imported on those workers when first needed,
so the window's launch does not wait for them.

A finished download is in the Hugging Face cache, where the model search
(engine.model_catalog) looks: the settings flow's `discover` lists it at
once, and Load applies it as the settings dialog would.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import annotated_types
from PySide6.QtCore import QObject, Qt, QTimer, Signal, SignalInstance

from kvchat.app.core.serial_worker import SerialWorker
from kvchat.app.core.settings import EngineSettings
from kvchat.app.presenters.controller import Controller
from kvchat.app.presenters.settings_flow import SettingsFlow, choice_of, projection_of
from kvchat.engine.load_params import DEFAULT_CONTEXT
from kvchat.ui.get_models_dialog import (
    WAITING,
    DownloadState,
    DownloadView,
    FileRow,
    GetModelsDialog,
    RepoRow,
)
from kvchat.ui.settings_dialog import DeviceProjection

if TYPE_CHECKING:
    from kvchat.app.hub.catalog import Hub, ModelFile, RepoSummary
    from kvchat.app.hub.download import Download, Journal, Progress

log = logging.getLogger(__name__)
T = TypeVar("T")

# A download's progress reaches the dialog about this often (a phase change at once).
PROGRESS_INTERVAL_S = 0.25
# The fits answers are asked again once the context has been still this long.
CONTEXT_DELAY_MS = 300
PROJECTOR_NOTE = "vision projector (goes with a chat model)"
# A search for "owner/name" opens that repository too: a name copied from a
# web page, or a mirror (HF_ENDPOINT) that lists files but does not search.
REPO_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+", re.ASCII)


@dataclass
class _Job:
    """A download the person asked for.

    `view` is the one record of where it is, changed on the GUI thread only.
    `cancel_requested` and `download` are shared with the downloads worker:
    the GUI thread sets the event, the worker sets `download` as it starts,
    and each looks at the other's after writing its own, so a Cancel is
    never lost between the two.
    """

    model: ModelFile
    view: DownloadView
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    download: Download | None = None


def _asked(work: Callable[[], T], failure: str) -> T | str:
    """What the hub answered, or why not, in words; a fault of kvchat's own is logged too."""
    from kvchat.app.hub.catalog import HubError

    try:
        return work()
    except HubError as exc:
        return str(exc)
    except Exception as exc:
        log.exception(failure)
        return f"{failure}: {exc}"


def repo_row(summary: RepoSummary) -> RepoRow:
    """A search result as the dialog's results table shows it."""
    return RepoRow(
        repo=summary.repo,
        downloads=summary.downloads,
        likes=summary.likes,
        updated=summary.last_modified,
        license=summary.license or "",
        parameters=summary.parameters,
        gated=summary.gated,
    )


def file_row(model: ModelFile) -> FileRow:
    """A repository's model as the dialog's files table shows it; a projector is not offered."""
    unavailable = PROJECTOR_NOTE if model.is_projector else model.problem
    return FileRow(model.path, model.label, model.quantization, model.size, unavailable)


def context_bounds() -> tuple[int, int]:
    """The least and most context the settings allow (app.settings declares them)."""
    low, high = 1, 1 << 20
    for bound in EngineSettings.model_fields["n_ctx"].metadata:
        if isinstance(bound, annotated_types.Ge) and isinstance(bound.ge, int):
            low = bound.ge
        elif isinstance(bound, annotated_types.Le) and isinstance(bound.le, int):
            high = bound.le
    return low, high


class GetModelsFlow(QObject):
    """Opens the "Get models" dialog and carries out what the person asks there.

    Signals:
        searched(int, str, object): a search's generation, its words, and its
            list[RepoSummary] or why there is none, in words (from the hub worker).
        listed(int, str, object): a listing's generation, the repository, and its
            list[ModelFile] or why there is none (from the hub worker).
        fitted(int, str, str, object): a fits generation, a model's path in its
            repository, whether it fits, in words, and its list[DeviceProjection]
            (empty without an estimate) (from the hub worker).
        download_started(int): a download's id; its worker began on it.
        download_progressed(int, object): a download's id and its Progress (throttled).
        download_finished(int, str): a download's id and its first file in the cache.
        download_failed(int, str): a download's id and what went wrong, in words.
        download_cancelled(int): a download's id; what it fetched is removed.
        download_changed(object): a DownloadView, on the GUI thread, each time one
            changes (the dialog shows it).
        downloaded(str): a finished download's first file in the cache (GUI thread).
    """

    searched = Signal(int, str, object)
    listed = Signal(int, str, object)
    fitted = Signal(int, str, str, object)
    download_started = Signal(int)
    download_progressed = Signal(int, object)
    download_finished = Signal(int, str)
    download_failed = Signal(int, str)
    download_cancelled = Signal(int)
    download_changed = Signal(object)
    downloaded = Signal(str)

    def __init__(
        self,
        controller: Controller,
        settings_flow: SettingsFlow,
        data_dir: Path,
        *,
        endpoint: str | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        """`endpoint` is the hub's (HF_ENDPOINT's by default); `cache_dir` where
        downloads go (the Hugging Face cache by default, where the model search looks)."""
        super().__init__(controller)
        self.controller = controller
        self.settings_flow = settings_flow
        self.endpoint = endpoint
        self.cache_dir = cache_dir
        self.journal_folder = data_dir / "downloads"
        self.dialog: GetModelsDialog | None = None
        self._hub_lock = threading.Lock()
        self._hub_instance: Hub | None = None
        self._journal_instance: Journal | None = None
        self._hub_worker = SerialWorker("kvchat-hub")
        self._downloads = SerialWorker("kvchat-downloads")
        self._closed = False
        self._search_generation = 0
        self._files_generation = 0
        self._fits_generation = 0
        self._repo = ""
        # The chosen repository's models by path: what a Download click names.
        self._models: dict[str, ModelFile] = {}
        self._jobs: dict[int, _Job] = {}
        self._ids = itertools.count(1)
        self._context_timer = QTimer(self)
        self._context_timer.setSingleShot(True)
        self._context_timer.setInterval(CONTEXT_DELAY_MS)
        self._context_timer.timeout.connect(self._ask_fits)
        queued = Qt.ConnectionType.QueuedConnection
        self.searched.connect(self._on_searched, queued)
        self.listed.connect(self._on_listed, queued)
        self.fitted.connect(self._on_fitted, queued)
        self.download_started.connect(self._on_started, queued)
        self.download_progressed.connect(self._on_progressed, queued)
        self.download_finished.connect(self._on_finished, queued)
        self.download_failed.connect(self._on_failed, queued)
        self.download_cancelled.connect(self._on_cancelled, queued)
        controller.window.closing.connect(self.shutdown)
        # What a crash or a kill left half downloaded goes before any new download.
        self._downloads.submit(self._clean_interrupted)

    # What the person asks for.

    def open(self) -> GetModelsDialog:
        """Shows the dialog (non-modal); the first time, with the most downloaded GGUF models."""
        dialog = self.dialog
        if dialog is None:
            dialog = GetModelsDialog(
                self.controller.settings.n_ctx or DEFAULT_CONTEXT,
                context_bounds(),
                self.controller.window,
            )
            dialog.search_requested.connect(self.search)
            dialog.repo_chosen.connect(self.choose)
            dialog.context_changed.connect(self._context_changed)
            dialog.download_requested.connect(self.download)
            dialog.cancel_requested.connect(self.cancel)
            dialog.load_requested.connect(self.load)
            self.download_changed.connect(dialog.show_download)
            self.dialog = dialog
            self.search("", dialog.sort_key())
        dialog.show()
        dialog.raise_()
        dialog.activateWindow()
        return dialog

    def search(self, query: str, sort: str) -> None:
        """Asks the hub for GGUF repositories matching `query`, in the background;
        a query that is a repository's name also lists that repository's files."""
        self._search_generation += 1
        generation = self._search_generation
        if self.dialog is not None:
            self.dialog.show_status("Searching…")
        if REPO_NAME.fullmatch(query):
            self.choose(query)

        def run() -> None:
            if generation != self._search_generation:
                return  # a newer search was asked for meanwhile
            answer = _asked(lambda: self._hub().search(query, sort), "the search failed")
            self._emit(self.searched, generation, query, answer)

        self._hub_worker.submit(run)

    def choose(self, repo: str) -> None:
        """Lists the GGUF models of `repo`, then asks each one's fits answer."""
        self._files_generation += 1
        self._fits_generation += 1  # the last repository's answers are stale now
        generation = self._files_generation
        self._repo = repo
        self._models = {}
        if self.dialog is not None:
            self.dialog.show_listing(repo)

        def run() -> None:
            if generation != self._files_generation:
                return
            failure = f"the files of {repo} could not be listed"
            answer = _asked(lambda: self._hub().files(repo), failure)
            self._emit(self.listed, generation, repo, answer)

        self._hub_worker.submit(run)

    def download(self, path: str) -> int | None:
        """Queues the download of the chosen repository's model at `path`; returns its id."""
        model = self._models.get(path)
        if model is None:
            return None
        for job in self._jobs.values():
            same = (job.model.repo, job.model.revision, job.model.path)
            if same == (model.repo, model.revision, model.path) and not job.view.state.ended:
                self._status(f"{model.label} is already in the downloads.")
                return job.view.download_id
        download_id = next(self._ids)
        view = DownloadView(
            download_id,
            f"{model.label} · {model.repo}",
            DownloadState.QUEUED,
            total_bytes=model.size,
            parts=len(model.parts),
        )
        job = _Job(model, view)
        self._jobs[download_id] = job
        self.download_changed.emit(view)
        self._downloads.submit(lambda: self._run_download(download_id, job))
        return download_id

    def cancel(self, download_id: int) -> None:
        """Cancels a queued download at once, a running one as soon as its worker sees it."""
        job = self._jobs.get(download_id)
        if job is None or job.view.state.ended or job.view.state is DownloadState.CANCELLING:
            return
        job.cancel_requested.set()
        running = job.download
        if running is not None:
            running.cancel()
        queued = job.view.state is DownloadState.QUEUED
        self._show(
            job,
            replace(
                job.view, state=DownloadState.CANCELLED if queued else DownloadState.CANCELLING
            ),
        )

    def load(self, local_path: str) -> None:
        """Loads a downloaded model with the settings in use, as the settings dialog's Apply."""
        self.settings_flow.apply(choice_of(local_path, self.controller.settings))

    def shutdown(self) -> None:
        """Cancels every download and drops what is queued, at once (the window closes).

        The download running ends on its worker, which removes what it
        fetched; the process waits for that as it exits, not the GUI thread.
        """
        self._closed = True
        self._context_timer.stop()
        self._hub_worker.close()
        self._downloads.close()
        for job in self._jobs.values():
            job.cancel_requested.set()
            if job.download is not None:
                job.download.cancel()

    @property
    def busy(self) -> bool:
        """Whether a worker thread still runs (a search, an estimate, a download)."""
        return self._hub_worker.busy or self._downloads.busy

    def join(self, timeout_s: float) -> bool:
        """Waits for the worker threads to end; False if one still runs after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        hub_done = self._hub_worker.join(timeout_s)
        return self._downloads.join(max(0.0, deadline - time.monotonic())) and hub_done

    # On the workers.

    def _emit(self, signal: SignalInstance, *args: object) -> None:
        """Emits from a worker, unless the flow has shut down (its window is going)."""
        if self._closed:
            return
        # The window, and this flow with it, may have been deleted as the work ended.
        with contextlib.suppress(RuntimeError):
            signal.emit(*args)

    def _hub(self) -> Hub:
        from kvchat.app.hub.catalog import Hub

        with self._hub_lock:
            if self._hub_instance is None:
                self._hub_instance = Hub(self.endpoint)
            return self._hub_instance

    def _journal(self) -> Journal:
        from kvchat.app.hub.download import Journal

        with self._hub_lock:
            if self._journal_instance is None:
                self._journal_instance = Journal(self.journal_folder)
            return self._journal_instance

    def _clean_interrupted(self) -> None:
        self._journal().clean_interrupted()

    def _fit(self, generation: int, models: list[ModelFile], settings: EngineSettings) -> None:
        """The first model's fits answer, then the rest's, each a call of its own, so
        a search asked for meanwhile runs before the next one rather than after all."""
        if generation != self._fits_generation or not models:
            return
        from kvchat.app.hub.fits import fits_answer
        from kvchat.app.hub.header import estimate_remote

        model, rest = models[0], models[1:]

        def answer_of() -> tuple[str, list[DeviceProjection]]:
            result = estimate_remote(self._hub(), model, settings).estimate
            return fits_answer(result), projection_of(result)

        got = _asked(answer_of, "no answer: kvchat failed on it")
        answer, devices = (got, []) if isinstance(got, str) else got
        if generation == self._fits_generation:
            self._emit(self.fitted, generation, model.path, answer, devices)
        if rest:
            self._hub_worker.submit(lambda: self._fit(generation, rest, settings))

    def _run_download(self, download_id: int, job: _Job) -> None:
        from kvchat.app.hub.catalog import HubError
        from kvchat.app.hub.download import CancelledError, Download

        if job.cancel_requested.is_set():
            return  # cancelled while queued: the dialog says so already
        try:
            download = Download(self._hub(), job.model, self.cache_dir, self._journal())
        except HubError as exc:
            self._emit(self.download_failed, download_id, str(exc))
            return
        job.download = download
        if job.cancel_requested.is_set():
            download.cancel()
        self._emit(self.download_started, download_id)
        due, phase = 0.0, ""

        def report(progress: Progress) -> None:
            # Slots PROGRESS_INTERVAL_S apart, each taken by the first report
            # in it: about four a second whatever the download's own pace,
            # and never a burst after a stall.
            nonlocal due, phase
            now = time.monotonic()
            if progress.phase != phase or now >= due:
                due = max(due + PROGRESS_INTERVAL_S, now + PROGRESS_INTERVAL_S / 2)
                phase = progress.phase
                self._emit(self.download_progressed, download_id, progress)

        try:
            path = download.run(report)
        except CancelledError:
            self._emit(self.download_cancelled, download_id)
        except HubError as exc:
            self._emit(self.download_failed, download_id, str(exc))
        except Exception as exc:
            log.exception("the download of %s failed", job.model.path)
            self._emit(self.download_failed, download_id, f"the download failed: {exc}")
        else:
            self._emit(self.download_finished, download_id, str(path))

    # Back on the GUI thread.

    def _status(self, text: str, problem: bool = False) -> None:
        if self.dialog is not None:
            self.dialog.show_status(text, problem)

    def _on_searched(self, generation: int, query: str, answer: object) -> None:
        if generation != self._search_generation or self.dialog is None:
            return
        if isinstance(answer, str):
            self.dialog.show_results([])
            if query == self._repo and self._models:
                return  # the repository named is listed: the search is not missed
            self._status(answer, problem=True)
            return
        assert isinstance(answer, list)
        note = "" if answer else "No GGUF models match that search."
        self.dialog.show_results([repo_row(summary) for summary in answer], note)

    def _on_listed(self, generation: int, repo: str, answer: object) -> None:
        if generation != self._files_generation or self.dialog is None:
            return
        if isinstance(answer, str):
            self.dialog.show_listing_failed(repo)
            self._status(answer, problem=True)
            return
        assert isinstance(answer, list)
        self._models = {model.path: model for model in answer}
        self.dialog.show_files(repo, [file_row(model) for model in answer])
        self._status("")
        self._ask_fits()

    def _context_changed(self, _n_ctx: int) -> None:
        """The answers on screen are for another context now: "…" until the new ones,
        asked once the context has been still for a moment."""
        self._fits_generation += 1
        if self.dialog is not None:
            for model in self._usable():
                self.dialog.set_fits(model.path, WAITING)
        self._context_timer.start()

    def _usable(self) -> list[ModelFile]:
        return [m for m in self._models.values() if not m.is_projector and not m.problem]

    def _ask_fits(self) -> None:
        """Each usable model's fits answer at the dialog's context, in the background."""
        if self.dialog is None or not self._models:
            return
        self._fits_generation += 1
        generation = self._fits_generation
        n_ctx = self.dialog.context.value()
        settings = self.controller.settings.model_copy(update={"n_ctx": n_ctx})
        usable = self._usable()
        for model in usable:
            self.dialog.set_fits(model.path, WAITING)
        self._hub_worker.submit(lambda: self._fit(generation, usable, settings))

    def _on_fitted(
        self, generation: int, path: str, answer: str, devices: list[DeviceProjection]
    ) -> None:
        if generation == self._fits_generation and self.dialog is not None:
            self.dialog.set_fits(path, answer, devices)

    def _show(self, job: _Job, view: DownloadView) -> None:
        job.view = view
        self.download_changed.emit(view)

    def _on_started(self, download_id: int) -> None:
        job = self._jobs.get(download_id)
        if job is not None and job.view.state is DownloadState.QUEUED:
            self._show(job, replace(job.view, state=DownloadState.DOWNLOADING))

    def _on_progressed(self, download_id: int, progress: Progress) -> None:
        job = self._jobs.get(download_id)
        if job is None or job.view.state not in (DownloadState.DOWNLOADING, DownloadState.CHECKING):
            return  # cancelling, or over: its last word stands
        view = replace(
            job.view,
            state=DownloadState.CHECKING
            if progress.phase == "checking"
            else DownloadState.DOWNLOADING,
            done_bytes=progress.done_bytes,
            total_bytes=progress.total_bytes,
            bytes_per_s=progress.bytes_per_s,
            seconds_left=progress.seconds_left,
            part=progress.part,
            parts=progress.parts,
        )
        self._show(job, view)

    def _on_finished(self, download_id: int, path: str) -> None:
        job = self._jobs.get(download_id)
        if job is None:
            return
        done = replace(
            job.view, state=DownloadState.DONE, done_bytes=job.view.total_bytes, local_path=path
        )
        self._show(job, done)
        self.settings_flow.discover()  # the toolbar's list and the settings dialog show it
        self.downloaded.emit(path)

    def _on_failed(self, download_id: int, message: str) -> None:
        job = self._jobs.get(download_id)
        if job is not None:
            self._show(job, replace(job.view, state=DownloadState.FAILED, message=message))

    def _on_cancelled(self, download_id: int) -> None:
        job = self._jobs.get(download_id)
        if job is not None:
            self._show(job, replace(job.view, state=DownloadState.CANCELLED))
