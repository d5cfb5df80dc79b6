"""Controls for settings declared as pydantic fields.

kvchat declares each setting once, in app.settings, with its bounds, default
and description. The views may not import app (the layers contract in
pyproject.toml), so they are handed the pydantic model and read its
`model_fields` here: the settings dialog and each conversation's panel show
the same ranges, and neither writes one by hand.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import TypeGuard

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from PySide6.QtWidgets import QDoubleSpinBox, QSpinBox, QWidget

# The widest number a QSpinBox holds (a C int); past it, a QDoubleSpinBox
# without decimals holds every whole number exactly (a seed up to 2**32 - 1).
SPIN_BOX_LIMIT = 2**31 - 1

Number = int | float | None


@dataclass(frozen=True)
class Presentation:
    """How a number setting shows: what its pydantic field does not say."""

    label: str
    decimals: int = 0  # digits after the point; a whole-number field ignores it
    step: float = 1.0
    suffix: str = ""
    # Shown for None where the field allows it (one step below the range),
    # else for the lowest value ("no limit" for a width of 0).
    special: str = ""
    note: str = ""  # said after the field's description in the tooltip


# The sampling settings, in the order they show: the defaults for new
# conversations in the settings dialog, and each conversation's own in its panel.
SAMPLING: dict[str, Presentation] = {
    "temperature": Presentation("Temperature", decimals=2, step=0.05),
    "top_k": Presentation("Top-k"),
    # Three decimals: a setting of 0.005 is shown and kept, not rounded away.
    "top_p": Presentation("Top-p", decimals=3, step=0.05),
    "min_p": Presentation("Min-p", decimals=3, step=0.01),
    "repeat_penalty": Presentation("Repeat penalty", decimals=2, step=0.05),
    "max_tokens": Presentation("Max tokens"),
    "seed": Presentation("Seed", special="random"),
}


def field_info(model: type[BaseModel], name: str) -> FieldInfo:
    """The declaration of one setting; a name the model lacks is a KeyError."""
    return model.model_fields[name]


def description(model: type[BaseModel], name: str) -> str:
    return field_info(model, name).description or ""


def choices(model: type[BaseModel], name: str) -> tuple[str, ...]:
    """The values a Literal field allows, in their declared order."""
    values = typing.get_args(field_info(model, name).annotation)
    if not values or not all(isinstance(value, str) for value in values):
        raise ValueError(f"{model.__name__}.{name} is not a choice of words")
    return tuple(str(value) for value in values)


def _allows_none(info: FieldInfo) -> bool:
    return type(None) in typing.get_args(info.annotation)


def _whole(info: FieldInfo) -> bool:
    members = typing.get_args(info.annotation) or (info.annotation,)
    return int in members


def field_bounds(info: FieldInfo, resolution: float) -> tuple[float, float]:
    """The lowest and highest value a control may hold, from the field's
    ge/gt/le/lt; an exclusive bound moves in by `resolution` (1 for a whole
    number, one unit of the last decimal shown for others).

    Raises:
        ValueError: the field has no lower or no upper bound, which a spin
            box needs (every number setting declares both).
    """
    low = high = math.nan
    for bound in info.metadata:
        if isinstance(bound, annotated_types.Ge):
            low = float(bound.ge)  # type: ignore[arg-type]
        elif isinstance(bound, annotated_types.Gt):
            low = float(bound.gt) + resolution  # type: ignore[arg-type]
        elif isinstance(bound, annotated_types.Le):
            high = float(bound.le)  # type: ignore[arg-type]
        elif isinstance(bound, annotated_types.Lt):
            high = float(bound.lt) - resolution  # type: ignore[arg-type]
    if math.isnan(low) or math.isnan(high):
        raise ValueError("a number setting needs a lower and an upper bound")
    return low, high


class NumberSetting:
    """One number setting's spin box, its range and tooltip read from its field.

    A field that allows None (a default decided elsewhere: "random" seed,
    "auto" budgets) holds None one step below its range, where the spin box
    shows the special text.
    """

    def __init__(
        self,
        model: type[BaseModel],
        name: str,
        presentation: Presentation,
        parent: QWidget | None = None,
    ) -> None:
        info = field_info(model, name)
        self.name = name
        self.presentation = presentation
        self.description = info.description or ""
        self._optional = _allows_none(info)
        self._whole = _whole(info)
        self._decimals = 0 if self._whole else presentation.decimals
        resolution = 10.0**-self._decimals
        low, high = field_bounds(info, resolution)
        if self._optional:
            low -= resolution
        self.box: QSpinBox | QDoubleSpinBox
        if self._whole and max(-low, high) <= SPIN_BOX_LIMIT:
            self.box = QSpinBox(parent)
            self.box.setRange(round(low), round(high))
            self.box.setSingleStep(max(round(presentation.step), 1))
        else:
            self.box = QDoubleSpinBox(parent)
            self.box.setDecimals(self._decimals)
            self.box.setRange(low, high)
            self.box.setSingleStep(presentation.step)
        self.box.setSpecialValueText(presentation.special)
        self.box.setSuffix(presentation.suffix)
        tooltip = " ".join(text for text in (self.description, presentation.note) if text)
        self.box.setToolTip(tooltip)

    def accepts(self, value: object) -> TypeGuard[Number]:
        """Whether `value` is a number this setting can show, held inside its
        range (None where the field allows None)."""
        if value is None:
            return self._optional
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )

    def value(self) -> Number:
        """What the box holds, as the setting takes it (None for the special value)."""
        raw = self.box.value()
        if self._optional and raw == self.box.minimum():
            return None
        return round(raw) if self._whole else float(raw)

    def set_value(self, value: Number) -> None:
        """Shows `value`; the box holds it inside the range, rounded to what it shows."""
        shown = self.box.minimum() if value is None else value
        if isinstance(self.box, QSpinBox):
            self.box.setValue(round(shown))
        else:
            self.box.setValue(float(shown))

    def same(self, first: Number, second: Number) -> bool:
        """Whether two values show the same in this box (0.7 and 0.700001 do)."""
        if first is None or second is None:
            return first is second
        return round(first, self._decimals) == round(second, self._decimals)

    def text(self, value: Number) -> str:
        """`value` as the box writes it: "0.70", "random"."""
        special = self.presentation.special
        if value is None or (special and not self._optional and value == self.box.minimum()):
            return special
        if isinstance(self.box, QSpinBox):
            return self.box.textFromValue(round(value)) + self.presentation.suffix
        return self.box.textFromValue(float(value)) + self.presentation.suffix
