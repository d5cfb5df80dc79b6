"""The settings dialog's owner: model discovery, memory projections, applying a choice.

Everything slow runs on one worker thread: reading model headers and the
dry runs of llama.cpp's allocator (each a short-lived child process). While
a slider moves, the projection is first recomputed at once from the last
dry run (the KV cache grows by an exact number of bytes per cell), then the
dry run of the new settings replaces it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, fields, replace
from pathlib import Path

from pydantic import ValidationError
from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtWidgets import QWidget

from kvchat.app.core.formatting import model_label
from kvchat.app.core.settings import Appearance, EngineSettings
from kvchat.app.presenters.controller import Controller
from kvchat.engine.estimate import Error as EstimateError
from kvchat.engine.estimate import Estimate, estimate
from kvchat.engine.gguf_file import ModelFileError
from kvchat.engine.model_catalog import ModelEntry, describe, find_models
from kvchat.engine.protocol import KvCache, LoadConfig
from kvchat.engine.remote_address import is_remote
from kvchat.engine.template_names import BUILTIN_PREFIX, BUILTIN_TEMPLATE_NAMES
from kvchat.ui.memory_panel import format_bytes
from kvchat.ui.settings_dialog import (
    AppearanceChoice,
    Choice,
    DeviceProjection,
    ModelRow,
    SettingsDialog,
)

# A dry run starts when the controls have been still this long.
DRY_RUN_DELAY_MS = 250
# The estimate shown beside a loaded model's figures waits this long after the
# load: its dry run (a child importing llama.cpp) and its worker thread would
# otherwise compete for the CPU and the GIL with the window drawing the new
# model's panels and plots, which it does in the first second after a load.
LOADED_ESTIMATE_DELAY_MS = 1000
# Fields that change what a load takes, and so the Fits column's answers.
LOAD_FIELDS = (
    "n_ctx",
    "n_gpu_layers",
    "n_threads",
    "n_batch",
    "flash_attention",
    "type_k",
    "type_v",
)


def _shaping(config: LoadConfig) -> LoadConfig:
    """What of a load needs a reload to change: not the budgets for the states
    kept aside, which the next load takes."""
    return replace(config, kv_ram_budget_bytes=None, kv_disk_budget_bytes=None)


def model_row(entry: ModelEntry) -> ModelRow:
    return ModelRow(
        path=entry.path,
        name=entry.name,
        architecture=entry.architecture,
        parameters=f"{entry.parameter_count / 1e9:.2f} B" if entry.parameter_count else "",
        quantization=entry.quantization,
        size=format_bytes(entry.size_bytes) if entry.size_bytes else "",
        context_length=entry.context_length,
        problem=entry.problem,
    )


# The engine settings the dialog shows and edits by name: every field of its
# Choice but the model, its chat template (kept per model file:
# `chat_templates`) and the appearance (a group of its own).
CHOICE_FIELDS = frozenset(f.name for f in fields(Choice)) - {
    "model_path",
    "chat_template",
    "appearance",
}


def engine_settings(choice: Choice, current: EngineSettings) -> EngineSettings:
    """The dialog's choice as validated settings (the bounds are app.settings')."""
    values = current.model_dump()
    values.update({name: getattr(choice, name) for name in CHOICE_FIELDS})
    templates = dict(current.chat_templates)
    if choice.model_path:
        if choice.chat_template:
            templates[choice.model_path] = choice.chat_template
        else:
            templates.pop(choice.model_path, None)
    values["chat_templates"] = templates
    return EngineSettings.model_validate(values)


def appearance_of(choice: Choice) -> Appearance | None:
    """The dialog's appearance as validated settings; None if it had none to say."""
    if choice.appearance is None:
        return None
    return Appearance.model_validate(asdict(choice.appearance))


def choice_of(path: str, settings: EngineSettings, appearance: Appearance | None = None) -> Choice:
    """What the dialog shows for these settings; without `appearance`, a choice
    that leaves the saved appearance as it is."""
    return Choice(
        model_path=path,
        chat_template=settings.chat_templates.get(path, ""),
        appearance=None if appearance is None else AppearanceChoice(**appearance.model_dump()),
        **settings.model_dump(include=set(CHOICE_FIELDS)),
    )


def dialog_for(choice: Choice, max_threads: int, parent: QWidget | None = None) -> SettingsDialog:
    """The settings dialog, its controls' ranges read from app.settings' fields."""
    return SettingsDialog(choice, max_threads, EngineSettings, Appearance, parent)


def rescaled(result: Estimate, n_ctx: int) -> list[DeviceProjection]:
    """The projection at another context, from a dry run at this one.

    Weights do not depend on the context, and each full-size KV cache holds
    one cell per token of context (sliding-window caches keep their size).
    The compute buffers are the dry run's own: they change a little with the
    context, which the next dry run settles.
    """
    old_ctx = result.projection.n_ctx
    devices = []
    for device in result.projection.devices:
        kv = device.kv_bytes
        if kv and old_ctx:
            caches: tuple[KvCache, ...] = result.projection.kv_caches
            full = sum(c.bytes for c in caches if c.cells >= old_ctx)
            share = full / max(sum(c.bytes for c in caches), 1)
            kv = round(kv * (1 - share) + kv * share * n_ctx / old_ctx)
        grown = replace(device, kv_bytes=kv)
        devices.append(
            DeviceProjection(
                device.name,
                device.weights_bytes,
                kv,
                device.compute_bytes,
                device.free_bytes,
                grown.fits,
            )
        )
    return devices


def projection_of(result: Estimate) -> list[DeviceProjection]:
    return [
        DeviceProjection(d.name, d.weights_bytes, d.kv_bytes, d.compute_bytes, d.free_bytes, d.fits)
        for d in result.projection.devices
    ]


def load_fields(settings: EngineSettings) -> tuple[object, ...]:
    """What of the settings shapes a load, and so a Fits answer."""
    return tuple(getattr(settings, name) for name in LOAD_FIELDS)


class SettingsFlow(QObject):
    """Opens the settings dialog and carries out what the person chooses.

    Signals:
        models_found(object): list[ModelEntry], from the worker thread.
        remote_models_found(object, object): the servers' models (list[ModelEntry])
            and why a server could not say (list[str]), from the worker thread.
        model_described(object): the ModelEntry of a file picked with Browse….
        estimated(int, object): generation, Estimate or an error message.
        model_fit(str, str): a listed model's path and whether it fits, in words.
        projection_shown(object): the Estimate (or error text) the dialog now shows.
        layers_found(str, object, object): path, EngineSettings, GPU layers that fit or None.
        loaded_estimate(str, object): a loaded model's path and its Estimate or error text.
        get_models_requested(): the dialog's Get models… button (app.gui opens that dialog).
        not_saved(str): why settings.json refused the applied settings, from its writer.
    """

    models_found = Signal(object)
    remote_models_found = Signal(object, object)
    model_described = Signal(object)
    estimated = Signal(int, object)
    model_fit = Signal(str, str)
    projection_shown = Signal(object)
    layers_found = Signal(str, object, object)
    loaded_estimate = Signal(str, object)
    get_models_requested = Signal()
    not_saved = Signal(str)

    def __init__(self, controller: Controller, data_dir: Path) -> None:
        super().__init__(controller)
        self.controller = controller
        self.data_dir = data_dir
        self.dialog: SettingsDialog | None = None
        self.last_estimate: Estimate | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="settings")
        self._generation = 0
        self._entries: dict[str, ModelEntry] = {}
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DRY_RUN_DELAY_MS)
        self._timer.timeout.connect(self._dry_run)
        self.models_found.connect(self._on_models_found)
        self.remote_models_found.connect(self._on_remote_models_found)
        self.model_described.connect(self._on_model_described)
        # The person's servers (name, base URL, API key), whose models are listed too.
        self.servers: Callable[[], list[tuple[str, str, str | None]]] = lambda: []
        self._remote: dict[str, ModelEntry] = {}
        self._remote_problems: list[str] = []
        # Files picked with Browse…: listed from then on, beside the ones found.
        self._browsed: dict[str, ModelEntry] = {}
        self._fits_generation = 0
        self._fits_settings: tuple[object, ...] = ()
        self.estimated.connect(self._on_estimated)
        self.model_fit.connect(self._on_model_fit)
        self.layers_found.connect(self._on_layers_found)
        self.loaded_estimate.connect(self._show_estimate_beside_actual)
        self._loaded_timer = QTimer(self)
        self._loaded_timer.setSingleShot(True)
        self._loaded_timer.setInterval(LOADED_ESTIMATE_DELAY_MS)
        self._loaded_timer.timeout.connect(self._estimate_loaded_model)
        controller.engine.model_loaded.connect(lambda _info: self._loaded_timer.start())
        controller.window.closing.connect(self._loaded_timer.stop)
        controller.window.destroyed.connect(lambda: self._worker.shutdown(wait=False))
        # The look chosen before: the window is made before this flow, on the system's.
        controller.window.apply_appearance(controller.settings_file.read().appearance)
        self.not_saved.connect(self._show_not_saved)

    def discover(self) -> None:
        """Looks for models in the background; the toolbar's list and the dialog follow."""
        folders = self.controller.settings_file.read().model_folders
        self._worker.submit(lambda: self.models_found.emit(find_models(folders)))
        self.discover_remote()

    def discover_remote(self) -> None:
        """Asks each of the person's servers for its models, in the background."""
        # On the worker: reading a key may wait on the system keyring.
        self._worker.submit(lambda: self.remote_models_found.emit(*self._remote_models()))

    def _remote_models(self) -> tuple[list[ModelEntry], list[str]]:
        # Imported here, on the worker: the window's launch does not wait for httpx.
        from kvchat.app.core.remote_models import list_remote_models

        return list_remote_models(self.servers())

    def _on_remote_models_found(self, entries: list[ModelEntry], problems: list[str]) -> None:
        self._remote = {entry.path: entry for entry in entries}
        for problem in problems:
            if problem not in self._remote_problems:
                self.controller.window.chat_view.add_notice(
                    f"The models of {problem} are not listed."
                )
        self._remote_problems = problems
        self._on_models_found([e for e in self._entries.values() if not is_remote(e.path)])

    def open(self) -> SettingsDialog:
        """Shows the dialog (non-modal) and starts looking for models."""
        if self.dialog is not None:
            self.dialog.raise_()
            return self.dialog
        current = self.controller.model.path if self.controller.model else ""
        appearance = self.controller.settings_file.read().appearance
        dialog = dialog_for(
            choice_of(current, self.controller.settings, appearance),
            os.cpu_count() or 1,
            self.controller.window,
        )
        dialog.model_folder = self.controller.window.model_folder
        dialog.set_template_names(BUILTIN_TEMPLATE_NAMES, BUILTIN_PREFIX)
        dialog.set_saved_templates(self.controller.settings.chat_templates)
        dialog.choice_changed.connect(self._on_choice_changed)
        dialog.model_browsed.connect(self._describe_browsed)
        dialog.applied.connect(self.apply)
        dialog.get_models_requested.connect(self.get_models_requested)
        dialog.finished.connect(self._on_closed)
        # The same switch as File > Serve on localhost, both ways.
        serve_action = self.controller.window.serve_action
        dialog.serve_check.setChecked(serve_action.isChecked())

        def serve_clicked(on: bool) -> None:
            if on != serve_action.isChecked():
                serve_action.trigger()

        dialog.serve_check.clicked.connect(serve_clicked)
        serve_action.toggled.connect(dialog.serve_check.setChecked)
        self.dialog = dialog
        if self._entries:
            self._on_models_found(list(self._entries.values()))
        self.discover()
        dialog.show()
        self._on_choice_changed(dialog.choice())
        return dialog

    def _on_closed(self) -> None:
        self.dialog = None
        self._generation += 1
        self.controller.window.focus_composer()

    def _describe_browsed(self, path: str) -> None:
        self._worker.submit(lambda: self.model_described.emit(describe(Path(path), "chosen")))

    def _on_model_described(self, entry: ModelEntry) -> None:
        self._browsed[entry.path] = entry
        self._on_models_found(list(self._entries.values()))

    def _on_models_found(self, entries: list[ModelEntry]) -> None:
        found = {entry.path: entry for entry in entries if not is_remote(entry.path)}
        entries = list({**self._browsed, **found, **self._remote}.values())
        self._entries = {entry.path: entry for entry in entries}
        current = self.controller.model.path if self.controller.model else ""
        usable = [e for e in entries if not e.problem]
        self.controller.window.set_model_choices(
            [
                (f"{e.name} · {format_bytes(e.size_bytes)}" if e.size_bytes else e.name, e.path)
                for e in usable
            ],
            current,
        )
        if self.dialog is not None:
            selected = self.dialog.choice().model_path
            self.dialog.set_models([model_row(e) for e in entries], selected)
            self._check_fits(usable)

    def _check_fits(
        self, entries: list[ModelEntry], settings: EngineSettings | None = None
    ) -> None:
        """Fills the list's "Fits" column, one dry run per model, in the background,
        for `settings` (the dialog's choice; the settings in use by default).

        The cells say "…" until their answer comes; answers for settings that
        are no longer chosen are dropped.
        """
        settings = settings or self.controller.settings
        self._fits_settings = load_fields(settings)
        self._fits_generation += 1
        generation = self._fits_generation
        if self.dialog is not None:
            for entry in entries:
                fits = "the server's" if is_remote(entry.path) else "…"
                self.dialog.set_model_fit(entry.path, fits)
        entries = [e for e in entries if not is_remote(e.path)]

        def run() -> None:
            for entry in entries:
                if generation != self._fits_generation:
                    return
                try:
                    result = estimate(settings.load_config(entry.path), fit=False)
                    total = sum(d.total_bytes for d in result.projection.devices)
                    verdict = "yes" if result.projection.fits else "no"
                    text = f"{verdict} ({format_bytes(total)})"
                except (EstimateError, ModelFileError) as exc:
                    text = f"unknown: {exc}"
                if generation == self._fits_generation:
                    self.model_fit.emit(entry.path, text)

        self._worker.submit(run)

    def _on_model_fit(self, path: str, text: str) -> None:
        if self.dialog is not None:
            self.dialog.set_model_fit(path, text)

    def _on_choice_changed(self, choice: Choice) -> None:
        dialog = self.dialog
        if dialog is None:
            return
        self._generation += 1  # answers for the old choice are stale now
        entry = self._entries.get(choice.model_path)
        model = self.controller.model
        if entry is not None and entry.context_length:
            offload = bool(model and model.gpu_offload_supported)
            dialog.set_model_limits(entry.context_length, entry.offloadable_layers, offload)
        result = self.last_estimate
        if result is not None and result.model_path == choice.model_path:
            n_ctx = choice.n_ctx or result.projection.n_ctx
            dialog.show_projection(
                rescaled(result, n_ctx), "Updating: the compute buffers follow from a dry run…"
            )
        self._timer.start()

    def _dry_run(self) -> None:
        dialog = self.dialog
        if dialog is None or not dialog.choice().model_path:
            return
        choice = dialog.choice()
        try:
            settings = engine_settings(choice, self.controller.settings)
        except ValidationError as exc:
            dialog.show_projection([], f"Not a valid choice: {exc.errors()[0]['msg']}")
            return
        if load_fields(settings) != self._fits_settings:
            # The Fits column answers for the choice on screen, not the last one.
            self._check_fits([e for e in self._entries.values() if not e.problem], settings)
        self._generation += 1
        generation = self._generation
        if is_remote(choice.model_path):
            dialog.show_projection(
                [],
                f"{model_label(choice.model_path)} runs on that server: its memory is the "
                "server's, and the memory panels show what the server reports.",
            )
            return
        config = settings.load_config(choice.model_path)

        def run() -> None:
            try:
                answer: object = estimate(config, fit=False)
            except (EstimateError, ModelFileError) as exc:
                answer = (
                    f"estimate unavailable: {exc}" if "unavailable" not in str(exc) else str(exc)
                )
            self.estimated.emit(generation, answer)

        self._worker.submit(run)

    def _on_estimated(self, generation: int, answer: object) -> None:
        if generation != self._generation or self.dialog is None:
            return  # the controls have moved on since
        if isinstance(answer, Estimate):
            self.last_estimate = answer
            verdict = "It fits." if answer.projection.fits else "It does not fit: choose less."
            seconds = answer.dry_run_seconds
            note = f"{verdict} From a dry run of llama.cpp's allocator ({seconds:.2f} s)."
            for extra in answer.notes:
                note += f" {extra[:1].upper()}{extra[1:]}."
            self.dialog.show_projection(projection_of(answer), note)
        else:
            self.dialog.show_projection([], str(answer))
        self.projection_shown.emit(answer)

    def _estimate_loaded_model(self) -> None:
        """After a load, the estimate of the same load, to show beside what it took."""
        model = self.controller.model
        if model is None:
            return  # it has gone meanwhile (another load, or the engine ended)
        path = model.path
        if is_remote(path):
            self.controller.memory_monitor.panel.set_estimate("")
            return  # its memory is the server's, which reports it
        config = self.controller.settings.load_config(path)

        def run() -> None:
            try:
                answer: object = estimate(config, fit=False)
            except (EstimateError, ModelFileError) as exc:
                answer = str(exc)
            self.loaded_estimate.emit(path, answer)

        self._worker.submit(run)

    def _show_estimate_beside_actual(self, path: str, answer: object) -> None:
        model = self.controller.model
        memory = self.controller.memory_monitor.memory
        panel = self.controller.window.memory_panel
        if model is None or model.path != path or memory is None:
            return
        if not isinstance(answer, Estimate):
            panel.set_estimate(f"Estimate before load: {answer}")
            return
        actual = {b.device: b for b in memory.buffers}
        rows = []
        for device in answer.projection.devices:
            real = actual.get(device.name)
            if real is None and not device.total_bytes:
                continue
            cells = []
            for projected, measured in (
                (device.weights_bytes, real.weights_bytes if real else 0),
                (device.kv_bytes, real.kv_bytes if real else 0),
                (device.compute_bytes, real.compute_bytes if real else 0),
            ):
                cells.append(_estimate_and_actual(projected, measured))
            rows.append(
                f"<tr><td><b>{device.name}</b></td><td>" + "</td><td>".join(cells) + "</td></tr>"
            )
        panel.set_estimate(
            "<b>Estimate / actual</b> (dry run before load / llama.cpp's report)"
            "<table cellspacing='6'><tr><td></td><td>weights</td><td>KV cache</td>"
            "<td>compute</td></tr>" + "".join(rows) + "</table>"
        )

    def _show_not_saved(self, reason: str) -> None:
        self.controller.window.show_error(f"Settings apply now but could not be saved: {reason}")

    def apply(self, choice: Choice) -> None:
        """Saves the choice, shows its appearance, and, if it changes how the
        model loads, switches to it."""
        try:
            settings = engine_settings(choice, self.controller.settings)
            appearance = appearance_of(choice)
        except ValidationError as exc:
            self.controller.window.show_error(f"Settings not applied: {exc.errors()[0]['msg']}")
            return
        model_path = choice.model_path or None
        changes: dict[str, object] = {"engine": settings, "model_path": model_path}
        if appearance is not None:
            changes["appearance"] = appearance
        self.controller.settings_file.change(changes, lambda exc: self.not_saved.emit(str(exc)))
        if appearance is not None:
            self.controller.window.apply_appearance(appearance)
        current = self.controller.model
        # A load under way counts as loaded: OK right after Apply changes nothing
        # more, so one change makes one load.
        target = current.path if current is not None else self.controller.loading_path
        # What the engine would be told to load decides, the model's chat
        # template included: the choice's load against the one in use.
        reload = (
            target is None
            or target != choice.model_path
            or _shaping(settings.load_config(target))
            != _shaping(self.controller.settings.load_config(target))
        )
        if not (reload and choice.model_path):
            self.controller.settings = settings
            return
        offload = bool(current and current.gpu_offload_supported)
        if settings.n_gpu_layers is not None or not offload:
            self.controller.switch_model(choice.model_path, settings)
            return
        # "auto: the most that fit": the fit search's answer, for this load only
        # (the saved setting stays auto, so another model gets its own answer).
        config = settings.load_config(choice.model_path)

        def find_layers() -> None:
            try:
                fit = estimate(config, fit=True).fit
                layers = fit.max_gpu_layers if fit is not None else None
            except (EstimateError, ModelFileError):
                layers = None
            self.layers_found.emit(choice.model_path, settings, layers)

        self._worker.submit(find_layers)

    def _on_layers_found(self, path: str, settings: EngineSettings, layers: int | None) -> None:
        chosen = (
            settings if layers is None else settings.model_copy(update={"n_gpu_layers": layers})
        )
        self.controller.switch_model(path, chosen)


def _estimate_and_actual(projected: int, measured: int) -> str:
    """ "92.1 / 92.1 MiB": the unit once where both share it, so that a cell
    fits on one line of the memory column."""
    first, second = format_bytes(projected), format_bytes(measured)
    number, _space, unit = first.rpartition(" ")
    if number and second.endswith(f" {unit}"):
        return f"{number} / {second}"
    return f"{first} / {second}"
