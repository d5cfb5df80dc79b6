"""The settings dialog: pick a model and how to run it, and see what it costs first.

It shows plain values it is given (the model list, a projection per device)
and emits what the person changed; the owner computes projections and
applies the choice. The owner hands it the settings' pydantic models, whose
fields give each control its range and description (ui.setting_fields), so
the bounds live in one place (app.settings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from kvchat.ui.memory_panel import COMPUTE, KV, OTHER, WEIGHTS, SegmentBar, format_bytes
from kvchat.ui.setting_fields import SAMPLING, NumberSetting, Presentation, choices, description

KV_TYPES = ("f16", "bf16", "q8_0", "q4_0", "f32")
FLASH_ATTENTION = ("auto", "on", "off")
# The settings beside sampling shown as spin boxes, their ranges read from their fields.
LOADING_NUMBERS = {
    "n_batch": Presentation("Batch size", step=32),
    "kv_ram_budget_mib": Presentation(
        "In RAM", step=64, suffix=" MiB", special="auto", note="Takes effect at the next load."
    ),
    "kv_disk_budget_mib": Presentation(
        "On disk", step=256, suffix=" MiB", special="auto", note="Takes effect at the next load."
    ),
}
CHAT_WIDTH = Presentation("Chat width", step=20, suffix=" px", special="no limit")
THEME_NAMES = {"system": "The system's", "light": "Light", "dark": "Dark"}


@dataclass(frozen=True)
class ModelRow:
    path: str
    name: str
    architecture: str
    parameters: str
    quantization: str
    size: str
    context_length: int | None
    problem: str = ""
    fits: str = ""


@dataclass(frozen=True)
class DeviceProjection:
    name: str
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    free_bytes: int
    fits: bool


@dataclass(frozen=True)
class AppearanceChoice:
    """The look the dialog holds, as app.settings.Appearance."""

    theme: str  # "system", "light" or "dark"
    chat_width: int  # the chat column's widest, in pixels; 0: no limit
    show_thinking: bool


@dataclass(frozen=True)
class Choice:
    """What the dialog holds now; None means kvchat's default."""

    model_path: str
    n_ctx: int | None
    n_gpu_layers: int | None
    n_threads: int | None
    n_batch: int
    flash_attention: str
    type_k: str
    type_v: str
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    max_tokens: int
    seed: int | None
    system_prompt: str
    # The chosen model's prompt format: "" its own, "llama.cpp:NAME", or Jinja text.
    chat_template: str = ""
    # Room for conversations' keys and values kept aside, in MiB; None: sized to the machine.
    kv_ram_budget_mib: int | None = None
    kv_disk_budget_mib: int | None = None
    # None: a choice made without the dialog (a model loaded from Get models…);
    # the appearance saved stays as it is.
    appearance: AppearanceChoice | None = None


# The template picker's entry for a template of the person's own.
CUSTOM_TEMPLATE = "custom"


class SettingsDialog(QDialog):
    """Model, context, GPU layers, threads, batch, attention, cache types, the
    defaults for new conversations (sampling, system prompt), appearance.

    Signals:
        choice_changed(object): a Choice, whenever a control moved (for the projection).
        applied(object): a Choice the person applied (Apply or OK).
        model_browsed(str): a file picked with Browse…, to be described and listed.
        get_models_requested(): Get models… was pressed: find more on Hugging Face.
    """

    choice_changed = Signal(object)
    applied = Signal(object)
    model_browsed = Signal(str)
    get_models_requested = Signal()

    def __init__(
        self,
        choice: Choice,
        max_threads: int,
        engine_fields: type[BaseModel],
        appearance_fields: type[BaseModel],
        parent: QWidget | None = None,
    ) -> None:
        """
        Args:
            choice: what the controls show first.
            max_threads: the most CPU threads offered.
            engine_fields: app.settings.EngineSettings, whose fields give the
                loading and sampling controls their ranges and descriptions.
            appearance_fields: app.settings.Appearance, likewise.
        """
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.resize(900, 720)
        self._trained_context = 4096
        self._saved_context: int | None = None
        self.model_folder = str(Path.home())  # where Browse… starts
        self._layers = 0
        self._updating = False

        self.models = QTableWidget(0, 7)
        self.models.setHorizontalHeaderLabels(
            ["Model", "Architecture", "Parameters", "Quantization", "Size", "Context", "Fits"]
        )
        self.models.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.models.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.models.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.models.verticalHeader().hide()
        self.models.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.models.itemSelectionChanged.connect(self._changed)
        self.models.setMaximumHeight(180)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.get_models_button = QPushButton("Get models…")
        self.get_models_button.setToolTip("Search Hugging Face for GGUF models and download one")
        self.get_models_button.setAutoDefault(False)
        self.get_models_button.clicked.connect(self.get_models_requested)
        self._paths: list[str] = []

        self.context = QSlider(Qt.Orientation.Horizontal)
        self.context.setRange(512, 4096)
        self.context.setSingleStep(256)
        self.context.setPageStep(1024)
        self.context_label = QLabel()
        self.context_default = QCheckBox("default (4096, capped by the model)")
        self.gpu_layers = QSlider(Qt.Orientation.Horizontal)
        self.gpu_layers_label = QLabel()
        self.gpu_auto = QCheckBox("auto: the most that fit")
        self.threads = QSpinBox()
        self.threads.setRange(0, max_threads)
        self.threads.setSpecialValueText("physical cores")
        # Each number setting's spin box, by its field's name (`.box` is the widget).
        self.numbers: dict[str, NumberSetting] = {
            name: NumberSetting(engine_fields, name, presentation)
            for name, presentation in {**LOADING_NUMBERS, **SAMPLING}.items()
        }
        self.chat_width = NumberSetting(appearance_fields, "chat_width", CHAT_WIDTH)
        self.flash = QComboBox()
        self.flash.addItems(FLASH_ATTENTION)
        self.type_k = QComboBox()
        self.type_k.addItems(KV_TYPES)
        self.type_v = QComboBox()
        self.type_v.addItems(KV_TYPES)

        self.system_prompt = QPlainTextEdit()
        self.system_prompt.setMaximumHeight(70)
        self.system_prompt.setToolTip(description(engine_fields, "system_prompt"))
        self.theme = QComboBox()
        for theme in choices(appearance_fields, "theme"):
            self.theme.addItem(THEME_NAMES.get(theme, theme), theme)
        self.theme.setToolTip(description(appearance_fields, "theme"))
        self.show_thinking = QCheckBox("Show reasoning models' thinking above their replies")
        self.show_thinking.setToolTip(description(appearance_fields, "show_thinking"))
        # The prompt format per model file, as chosen here or saved before.
        self._templates: dict[str, str] = {}
        self._template_path = ""
        self.template = QComboBox()
        self.template.addItem("The model's own (or llama.cpp's for its family)", "")
        self.template.addItem("Your own Jinja template…", CUSTOM_TEMPLATE)
        self.template.currentIndexChanged.connect(self._template_picked)
        self.template_text = QPlainTextEdit()
        self.template_text.setPlaceholderText(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        )
        self.template_text.setMaximumHeight(70)
        self.template_text.hide()
        self.template_text.textChanged.connect(self._changed)

        self.projection_note = QLabel()
        self.projection_note.setWordWrap(True)
        self.projection_rows = QVBoxLayout()
        self._projection_widgets: list[tuple[QLabel, SegmentBar]] = []

        run = QFormLayout()
        context_row = QHBoxLayout()
        context_row.addWidget(self.context, 1)
        context_row.addWidget(self.context_label)
        context_row.addWidget(self.context_default)
        run.addRow("Context", context_row)
        layers_row = QHBoxLayout()
        layers_row.addWidget(self.gpu_layers, 1)
        layers_row.addWidget(self.gpu_layers_label)
        layers_row.addWidget(self.gpu_auto)
        run.addRow("GPU layers", layers_row)
        run.addRow("CPU threads", self.threads)
        run.addRow("Batch size", self.numbers["n_batch"].box)
        run.addRow("Flash attention", self.flash)
        cache_row = QHBoxLayout()
        cache_row.addWidget(QLabel("K"))
        cache_row.addWidget(self.type_k)
        cache_row.addWidget(QLabel("V"))
        cache_row.addWidget(self.type_v)
        cache_row.addStretch(1)
        run.addRow("KV cache types", cache_row)

        sampling = QFormLayout()
        for name, presentation in SAMPLING.items():
            sampling.addRow(presentation.label, self.numbers[name].box)
        defaults_note = QLabel("Each conversation can change its own in its panel.")
        defaults_note.setObjectName("defaultsNote")
        defaults_note.setWordWrap(True)
        sampling.insertRow(0, defaults_note)
        sampling.addRow("System prompt", self.system_prompt)

        appearance = QFormLayout()
        appearance.addRow("Colours", self.theme)
        appearance.addRow(CHAT_WIDTH.label, self.chat_width.box)
        appearance.addRow(self.show_thinking)

        run_box = QGroupBox("Loading")
        run_box.setLayout(run)
        sampling_box = QGroupBox("Defaults for new conversations")
        sampling_box.setObjectName("conversationDefaults")
        sampling_box.setLayout(sampling)
        self.appearance_box = QGroupBox("Appearance")
        self.appearance_box.setLayout(appearance)
        projection_box = QGroupBox("Projected memory after loading")
        projection_layout = QVBoxLayout(projection_box)
        projection_layout.addWidget(self.projection_note)
        projection_layout.addLayout(self.projection_rows)
        projection_layout.addStretch(1)

        columns = QHBoxLayout()
        left = QVBoxLayout()
        left.addWidget(run_box)
        left.addWidget(projection_box)
        left.addWidget(self.appearance_box)
        columns.addLayout(left, 3)
        right = QVBoxLayout()
        right.addWidget(sampling_box)
        # A switch that acts at once, as the File menu's: not part of Apply.
        self.serve_check = QCheckBox("Serve on localhost (an OpenAI-compatible API on 127.0.0.1)")
        self.serve_check.setObjectName("serveCheck")
        right.addWidget(self.serve_check)
        kept = QFormLayout()
        for name in ("kv_ram_budget_mib", "kv_disk_budget_mib"):
            kept.addRow(LOADING_NUMBERS[name].label, self.numbers[name].box)
        kept_box = QGroupBox("Conversations' keys and values kept aside")
        kept_box.setLayout(kept)
        right.addWidget(kept_box)
        right.addWidget(QLabel("Chat template of this model (kept for this model file)"))
        right.addWidget(self.template)
        right.addWidget(self.template_text)
        columns.addLayout(right, 2)

        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok
            | QDialogButtonBox.StandardButton.Apply
            | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self._ok)
        self.buttons.rejected.connect(self.reject)
        apply_button = self.buttons.button(QDialogButtonBox.StandardButton.Apply)
        apply_button.clicked.connect(lambda: self.applied.emit(self.choice()))

        layout = QVBoxLayout(self)
        models_row = QHBoxLayout()
        models_row.addWidget(QLabel("Model"))
        models_row.addStretch(1)
        models_row.addWidget(self.get_models_button)
        models_row.addWidget(browse)
        layout.addLayout(models_row)
        layout.addWidget(self.models, 1)
        layout.addLayout(columns)
        layout.addWidget(self.buttons)

        self.set_choice(choice)
        for signal in (
            self.context.valueChanged,
            self.context_default.toggled,
            self.gpu_layers.valueChanged,
            self.gpu_auto.toggled,
            self.threads.valueChanged,
            self.numbers["n_batch"].box.valueChanged,
            self.flash.currentIndexChanged,
            self.type_k.currentIndexChanged,
            self.type_v.currentIndexChanged,
        ):
            signal.connect(self._changed)

    # What the owner tells the dialog.

    def set_template_names(self, names: Sequence[str], prefix: str) -> None:
        """llama.cpp's built-in formats, offered by name (`prefix` + name)."""
        self._updating = True
        current = self._template_value()
        for name in names:
            if self.template.findData(prefix + name) < 0:
                self.template.insertItem(
                    self.template.count() - 1, f"llama.cpp: {name}", prefix + name
                )
        self._show_template(current)
        self._updating = False

    def set_saved_templates(self, templates: dict[str, str]) -> None:
        """The formats saved per model file; the one of the selected model shows."""
        self._templates = {**templates, **self._templates}
        self._load_template_for(self.selected_path())

    def _template_value(self) -> str:
        data = self.template.currentData()
        if data == CUSTOM_TEMPLATE:
            return self.template_text.toPlainText()
        return data if isinstance(data, str) else ""

    def _show_template(self, value: str) -> None:
        index = self.template.findData(value) if value else 0
        custom = bool(value) and index < 0
        if custom:
            index = self.template.findData(CUSTOM_TEMPLATE)
            self.template_text.setPlainText(value)
        self.template.setCurrentIndex(max(index, 0))
        self.template_text.setVisible(custom)

    def _load_template_for(self, path: str) -> None:
        """Another model chosen: its own saved format shows."""
        if self._template_path:
            self._templates[self._template_path] = self._template_value()
        self._template_path = path
        updating, self._updating = self._updating, True
        self._show_template(self._templates.get(path, ""))
        self._updating = updating

    def _template_picked(self) -> None:
        self.template_text.setVisible(self.template.currentData() == CUSTOM_TEMPLATE)
        self._changed()

    def set_models(self, rows: Sequence[ModelRow], selected: str) -> None:
        self._updating = True
        self.models.setRowCount(0)
        self._paths = []
        for row in rows:
            self._add_model(row)
        self._select(selected)
        self._updating = False
        self._changed()

    def _add_model(self, row: ModelRow) -> None:
        index = self.models.rowCount()
        self.models.insertRow(index)
        context = f"{row.context_length:,}" if row.context_length else ""
        cells = [row.name, row.architecture, row.parameters, row.quantization, row.size, context]
        cells.append(row.problem or row.fits)
        for column, text in enumerate(cells):
            item = QTableWidgetItem(text)
            item.setToolTip(row.problem or row.path)
            if row.problem:
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsSelectable)
                item.setForeground(self.palette().color(self.palette().ColorRole.PlaceholderText))
            self.models.setItem(index, column, item)
        self._paths.append(row.path)

    def set_model_fit(self, path: str, text: str) -> None:
        """The "Fits" cell of one model: whether it fits with the chosen settings."""
        if path in self._paths:
            item = self.models.item(self._paths.index(path), 6)
            if item is not None:
                item.setText(text)

    def set_model_limits(self, trained_context: int, layers: int, offload: bool) -> None:
        """The chosen model's trained context and offloadable layers."""
        self._updating = True
        self._trained_context = trained_context
        self._layers = layers
        self.context.setMaximum(max(trained_context, 512))
        self.gpu_layers.setRange(0, layers)
        self.gpu_layers.setEnabled(offload and not self.gpu_auto.isChecked())
        self.gpu_auto.setEnabled(offload)
        self._updating = False
        self._sync_labels()

    def show_projection(self, devices: Sequence[DeviceProjection], note: str) -> None:
        """Per device: weights, KV, compute against the free memory; red when it won't fit."""
        while len(self._projection_widgets) < len(devices):
            label, bar = QLabel(), SegmentBar()
            label.setWordWrap(True)
            self.projection_rows.addWidget(label)
            self.projection_rows.addWidget(bar)
            self._projection_widgets.append((label, bar))
        for index, (label, bar) in enumerate(self._projection_widgets):
            visible = index < len(devices)
            label.setVisible(visible)
            bar.setVisible(visible)
            if not visible:
                continue
            device = devices[index]
            total = device.weights_bytes + device.kv_bytes + device.compute_bytes
            verdict = "fits" if device.fits else "does not fit"
            label.setText(
                f"<b>{device.name}</b>: {format_bytes(total)} "
                f"(weights {format_bytes(device.weights_bytes)}, "
                f"KV {format_bytes(device.kv_bytes)}, "
                f"compute {format_bytes(device.compute_bytes)}) of "
                f"{format_bytes(device.free_bytes)} free, "
                f"{format_bytes(max(device.free_bytes - total, 0))} free after loading: "
                f"<b style='color:{'#16a34a' if device.fits else '#dc2626'}'>{verdict}</b>"
            )
            bar.set_segments(
                [
                    (device.weights_bytes, WEIGHTS, "weights"),
                    (device.kv_bytes, KV, "KV cache"),
                    (device.compute_bytes, COMPUTE, "compute"),
                    (max(total - device.free_bytes, 0), OTHER, "over the free memory"),
                ],
                max(device.free_bytes, total),
            )
        self.projection_note.setText(note)

    def set_choice(self, choice: Choice) -> None:
        self._updating = True
        self._select(choice.model_path)
        self.context_default.setChecked(choice.n_ctx is None)
        # The ranges widen to hold what was saved: a slider clamps silently, and
        # the model's limits may not be known yet (set_model_limits comes later).
        self._saved_context = choice.n_ctx
        if choice.n_ctx is not None:
            self.context.setMaximum(max(self.context.maximum(), choice.n_ctx))
        self.context.setValue(choice.n_ctx or min(4096, self._trained_context))
        self.gpu_auto.setChecked(choice.n_gpu_layers is None)
        if choice.n_gpu_layers is not None:
            self.gpu_layers.setMaximum(max(self.gpu_layers.maximum(), choice.n_gpu_layers))
        self.gpu_layers.setValue(choice.n_gpu_layers or 0)
        self.threads.setValue(choice.n_threads or 0)
        self.flash.setCurrentText(choice.flash_attention)
        self.type_k.setCurrentText(choice.type_k)
        self.type_v.setCurrentText(choice.type_v)
        for name, setting in self.numbers.items():
            setting.set_value(getattr(choice, name))
        self.system_prompt.setPlainText(choice.system_prompt)
        look = choice.appearance
        self.appearance_box.setVisible(look is not None)
        if look is not None:
            self.theme.setCurrentIndex(max(self.theme.findData(look.theme), 0))
            self.chat_width.set_value(look.chat_width)
            self.show_thinking.setChecked(look.show_thinking)
        self._template_path = choice.model_path
        self._templates[choice.model_path] = choice.chat_template
        self._show_template(choice.chat_template)
        self._updating = False
        self._sync_labels()

    def choice(self) -> Choice:
        numbers = {name: setting.value() for name, setting in self.numbers.items()}
        return Choice(
            model_path=self.selected_path(),
            n_ctx=None if self.context_default.isChecked() else self._snapped_context(),
            n_gpu_layers=None if self.gpu_auto.isChecked() else self.gpu_layers.value(),
            n_threads=self.threads.value() or None,
            flash_attention=self.flash.currentText(),
            type_k=self.type_k.currentText(),
            type_v=self.type_v.currentText(),
            system_prompt=self.system_prompt.toPlainText(),
            chat_template=self._template_value(),
            appearance=self._appearance(),
            # Each number has its field's type: NumberSetting reads it from the field.
            **numbers,  # type: ignore[arg-type]
        )

    def _appearance(self) -> AppearanceChoice | None:
        if self.appearance_box.isHidden():
            return None  # not shown, so not chosen
        return AppearanceChoice(
            theme=str(self.theme.currentData()),
            chat_width=round(self.chat_width.value() or 0),
            show_thinking=self.show_thinking.isChecked(),
        )

    def selected_path(self) -> str:
        rows = self.models.selectionModel().selectedRows() if self.models.selectionModel() else []
        if rows and rows[0].row() < len(self._paths):
            return self._paths[rows[0].row()]
        return self._selected_fallback

    # Internals.

    _selected_fallback = ""

    def _select(self, path: str) -> None:
        self._selected_fallback = path
        if path in self._paths:
            self.models.selectRow(self._paths.index(path))

    def _snapped_context(self) -> int:
        value = self.context.value()
        if value == self._saved_context:
            return value  # as saved, even off the slider's steps (--ctx 6000)
        return max(512, round(value / 256) * 256)

    def _sync_labels(self) -> None:
        self.context.setEnabled(not self.context_default.isChecked())
        self.context_label.setText(f"{self._snapped_context():,} tokens")
        self.gpu_layers.setEnabled(self.gpu_auto.isEnabled() and not self.gpu_auto.isChecked())
        self.gpu_layers_label.setText(
            "auto" if self.gpu_auto.isChecked() else f"{self.gpu_layers.value()} of {self._layers}"
        )

    def _changed(self) -> None:
        if self._updating:
            return
        if self.selected_path() != self._template_path:
            self._load_template_for(self.selected_path())
        self._sync_labels()
        self.choice_changed.emit(self.choice())

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a GGUF model", self.model_folder, "GGUF models (*.gguf);;All files (*)"
        )
        if path:
            self.model_folder = str(Path(path).parent)
            self._selected_fallback = path
            self.models.clearSelection()
            self._changed()
            self.model_browsed.emit(path)

    def _ok(self) -> None:
        self.applied.emit(self.choice())
        self.accept()
