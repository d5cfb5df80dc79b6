"""The panel of one conversation's own settings: its system prompt, sampling and model.

Settings holds the defaults for new conversations; a conversation keeps only
the values it changed (its overrides), and this panel shows them over the
defaults, marked. It is handed the defaults as the app's pydantic settings
(app.settings.EngineSettings, which the views may not import): the ranges,
descriptions and defaults are read from that model, never written here.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel
from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import (
    QFormLayout,
    QFrame,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from kvchat.ui.setting_fields import SAMPLING, Number, NumberSetting

# An edit is announced once the person pauses this long: a spin box's arrows
# or wheel step through values, and the store hears the last one only.
SPIN_PAUSE_MS = 600
# The system prompt is announced after a pause in typing, or when it loses focus.
PROMPT_PAUSE_MS = 1500
# The name the system prompt's mark goes by, beside the sampling fields' names.
SYSTEM_PROMPT = "system_prompt"
# The default system prompt's first characters, in the mark's tooltip.
PROMPT_PREVIEW = 80

State = tuple[str, dict[str, object]]


class ConversationPanel(QWidget):
    """One conversation's system prompt, sampling values and model, beside the chat.

    A value that differs from the default is marked (the `changed` property
    of its label, styled in style.qss) and its tooltip names the default.
    Edits are announced when the person finishes one, never per keystroke.

    Signals:
        changed(str, dict): the system prompt and the sampling values that
            differ from the defaults (field name -> value), after an edit.
        load_model_requested(): "Load <name>" was pressed: the conversation's
            own model should be loaded.
    """

    changed = Signal(str, dict)
    load_model_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("conversationPanel")
        self._model: type[BaseModel] | None = None
        self._defaults: BaseModel | None = None
        self._baseline: State | None = None  # what was last shown or announced
        self._updating = False
        self._model_name = ""
        self.fields: dict[str, NumberSetting] = {}
        self.labels: dict[str, QLabel] = {}
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._finish_edit)

        self.title = QLabel()
        self.title.setObjectName("panelTitle")

        # The model row: which model the conversation was with, and a way back to it.
        self.model_label = QLabel()
        self.model_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.model_note = QLabel()
        self.model_note.setObjectName("panelNote")
        self.model_note.setWordWrap(True)
        self.load_button = QPushButton()
        self.load_button.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.load_button.clicked.connect(self.load_model_requested)
        self.model_box = QWidget()
        model_layout = QVBoxLayout(self.model_box)
        model_layout.setContentsMargins(0, 0, 0, 0)
        model_layout.addWidget(self.model_label)
        model_layout.addWidget(self.model_note)
        model_layout.addWidget(self.load_button)
        self.model_box.installEventFilter(self)  # its width elides the model's name

        self.system_prompt = QPlainTextEdit()
        self.system_prompt.setObjectName("conversationSystemPrompt")
        self.system_prompt.setPlaceholderText("None")
        self.system_prompt.setMinimumHeight(self.fontMetrics().lineSpacing() * 4 + 12)
        # Its own preferred height would push the rows below out of a short
        # window: it takes what the rows leave, from four lines up.
        self.system_prompt.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Ignored)
        self.system_prompt.textChanged.connect(lambda: self._edited(PROMPT_PAUSE_MS))
        self.system_prompt.installEventFilter(self)  # leaving it finishes the edit
        self.labels[SYSTEM_PROMPT] = QLabel("System prompt")
        self.labels[SYSTEM_PROMPT].setBuddy(self.system_prompt)

        self._form = QFormLayout()
        self._form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self._form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)

        self.reset_button = QPushButton("Use the defaults")
        self.reset_button.setToolTip(
            "This conversation's system prompt and sampling back to the defaults in Settings"
        )
        self.reset_button.clicked.connect(self._use_defaults)
        self.note = QLabel(
            "Changes apply from the next reply. Settings holds the defaults for new conversations."
        )
        self.note.setObjectName("panelNote")
        self.note.setWordWrap(True)

        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addWidget(self.title)
        layout.addWidget(self.model_box)
        layout.addWidget(self.labels[SYSTEM_PROMPT])
        layout.addWidget(self.system_prompt, 1)
        layout.addLayout(self._form)
        layout.addWidget(self.reset_button, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(self.note)
        # Scrolls rather than squeezes in a short window; never sideways.
        scroll = QScrollArea()
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

        self.title.setText("This conversation")
        self._show_model("", "")
        self.reset_button.setEnabled(False)

    # What the owner tells the panel.

    def show_conversation(
        self,
        system_prompt: str,
        overrides: Mapping[str, object],
        defaults: BaseModel,
        model_name: str,
        loaded_model_name: str,
    ) -> None:
        """Shows a conversation's own settings over `defaults` (app.settings.EngineSettings).

        Args:
            system_prompt: the conversation's own.
            overrides: only the sampling values it changed; unknown names and
                values that are not numbers are left out.
            model_name: the model it was with ("" if none replied yet).
            loaded_model_name: the model replies come from now.

        The same conversation told again (its model row changed) keeps an
        edit under way; another one drops an edit not yet announced, which
        was for the one before (leaving a box or the prompt announces it).
        """
        self.title.setText("This conversation")
        self._show_model(model_name, loaded_model_name)
        self._show(system_prompt, overrides, defaults)

    def set_new_conversation(
        self,
        defaults: BaseModel,
        system_prompt: str | None = None,
        overrides: Mapping[str, object] | None = None,
    ) -> None:
        """No conversation yet: the defaults show, and edits go to the next one.

        `system_prompt` and `overrides` are edits already made for it (the
        defaults' system prompt and none by default).
        """
        prompt = getattr(defaults, SYSTEM_PROMPT) if system_prompt is None else system_prompt
        self.title.setText("The next conversation")
        self._show_model("", "")
        self._show(prompt, overrides or {}, defaults)

    def focus_system_prompt(self) -> None:
        self.system_prompt.setFocus(Qt.FocusReason.OtherFocusReason)

    # Internals.

    def _show(self, prompt: str, overrides: Mapping[str, object], defaults: BaseModel) -> None:
        if type(defaults) is not self._model:
            self._build_fields(type(defaults))
        given: dict[str, Number] = {
            name: value
            for name, value in overrides.items()
            if name in self.fields and self.fields[name].accepts(value)
        }
        own = {
            name: value
            for name, value in given.items()
            if not self.fields[name].same(value, getattr(defaults, name))
        }
        if defaults == self._defaults and (prompt, own) == self._baseline:
            return  # the same conversation again (its model row changed): keep an edit under way
        self._timer.stop()  # an edit not yet announced was for what showed before
        self._defaults = defaults
        self._updating = True
        if self.system_prompt.toPlainText() != prompt:
            self.system_prompt.setPlainText(prompt)
        for name, setting in self.fields.items():
            setting.set_value(given.get(name, getattr(defaults, name)))
        self._updating = False
        self._baseline = self._state()
        self._mark()

    def _build_fields(self, model: type[BaseModel]) -> None:
        """One row per sampling setting, its range and description read from `model`."""
        while self._form.rowCount():
            self._form.removeRow(0)
        self.fields.clear()
        for name, presentation in SAMPLING.items():
            setting = NumberSetting(model, name, presentation)
            # Typed numbers take effect on Enter or on leaving the box, not per digit.
            setting.box.setKeyboardTracking(False)
            setting.box.valueChanged.connect(lambda _value: self._edited(SPIN_PAUSE_MS))
            setting.box.editingFinished.connect(self._finish_edit)
            label = QLabel(presentation.label)
            label.setBuddy(setting.box)
            self._form.addRow(label, setting.box)
            self.fields[name] = setting
            self.labels[name] = label
        self._model = model

    def _state(self) -> State:
        """The system prompt, and the sampling values that differ from the defaults."""
        overrides: dict[str, object] = {}
        for name, setting in self.fields.items():
            value = setting.value()
            if not setting.same(value, getattr(self._defaults, name)):
                overrides[name] = value
        return self.system_prompt.toPlainText(), overrides

    def _edited(self, pause_ms: int) -> None:
        if self._updating or self._defaults is None:
            return
        self._mark()
        self._timer.start(pause_ms)

    def _finish_edit(self) -> None:
        """Announces the edit, if the panel now says something it had not said."""
        self._timer.stop()
        if self._defaults is None:
            return
        state = self._state()
        self._mark()
        if state != self._baseline:
            self._baseline = state
            self.changed.emit(state[0], dict(state[1]))

    def _use_defaults(self) -> None:
        defaults = self._defaults
        if defaults is None:
            return
        self._updating = True
        for name, setting in self.fields.items():
            setting.set_value(getattr(defaults, name))
        prompt = getattr(defaults, SYSTEM_PROMPT)
        if self.system_prompt.toPlainText() != prompt:
            # Through the cursor, not setPlainText: Ctrl+Z in the prompt brings it back.
            cursor = self.system_prompt.textCursor()
            cursor.select(QTextCursor.SelectionType.Document)
            cursor.insertText(prompt)
        self._updating = False
        self._finish_edit()

    def _mark(self) -> None:
        """Marks each value that differs from its default, and says the default."""
        defaults = self._defaults
        if defaults is None:
            return
        prompt, overrides = self._state()
        for name, setting in self.fields.items():
            default = setting.text(getattr(defaults, name))
            if name in overrides:
                said = f"Changed in this conversation; the default (in Settings) is {default}."
            else:
                said = f"The default, {default}, as set in Settings."
            tooltip = f"{setting.description}\n{said}"
            setting.box.setToolTip(tooltip)
            self._set_mark(self.labels[name], name in overrides, tooltip)
        default_prompt = str(getattr(defaults, SYSTEM_PROMPT))
        preview = default_prompt.strip().replace("\n", " ")
        if len(preview) > PROMPT_PREVIEW:
            preview = preview[: PROMPT_PREVIEW - 1] + "…"
        default_said = f"“{preview}”" if preview else "none"
        prompt_changed = prompt != default_prompt
        self._set_mark(
            self.labels[SYSTEM_PROMPT],
            prompt_changed,
            f"Changed in this conversation; the default (in Settings) is {default_said}."
            if prompt_changed
            else f"The default, as set in Settings ({default_said}).",
        )
        self.reset_button.setEnabled(prompt_changed or bool(overrides))

    @staticmethod
    def _set_mark(label: QLabel, changed: bool, tooltip: str) -> None:
        label.setToolTip(tooltip)
        if label.property("changed") != changed:
            label.setProperty("changed", changed)
            # A style sheet reads a dynamic property when the widget is polished.
            label.style().unpolish(label)
            label.style().polish(label)

    def _show_model(self, model_name: str, loaded_model_name: str) -> None:
        self._model_name = model_name
        differs = bool(model_name) and model_name != loaded_model_name
        self.model_box.setVisible(bool(model_name))
        self.model_note.setVisible(differs)
        self.load_button.setVisible(differs)
        self.model_label.setToolTip(model_name)
        self.load_button.setToolTip(f"Load {model_name} and reply with it again")
        self.model_note.setText(
            f"Replies now come from {loaded_model_name}, the model loaded now."
            if loaded_model_name
            else "No model is loaded now."
        )
        self._fit_model_name()

    def _fit_model_name(self) -> None:
        """The model's name, shortened in the middle to the panel's width."""
        width = self.model_box.contentsRect().width()
        self.model_label.setText(
            self.model_label.fontMetrics().elidedText(
                f"Model: {self._model_name}", Qt.TextElideMode.ElideMiddle, width
            )
        )
        style = self.load_button.style()
        frame = style.pixelMetric(QStyle.PixelMetric.PM_DefaultFrameWidth)
        margin = 2 * (style.pixelMetric(QStyle.PixelMetric.PM_ButtonMargin) + frame) + 12
        self.load_button.setText(
            self.load_button.fontMetrics().elidedText(
                f"Load {self._model_name}", Qt.TextElideMode.ElideMiddle, max(width - margin, 0)
            )
        )

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.system_prompt and event.type() == QEvent.Type.FocusOut:
            self._finish_edit()
        elif watched is self.model_box and event.type() == QEvent.Type.Resize:
            self._fit_model_name()
        return super().eventFilter(watched, event)
