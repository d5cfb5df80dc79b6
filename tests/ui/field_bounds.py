"""A settings field's range as a spin box must hold it, written out here from
the pydantic metadata on its own, so the views' reading of it is checked."""

from __future__ import annotations

import math
import typing

import annotated_types
from pydantic import BaseModel


def spin_box_range(model: type[BaseModel], name: str) -> tuple[float, float]:
    """Exclusive bounds made inclusive at the box's resolution; a field that
    may be None has its "random" or "auto" slot just below the range."""
    info = model.model_fields[name]
    low = high = math.nan
    for bound in info.metadata:
        if isinstance(bound, annotated_types.Ge):
            low = bound.ge
        elif isinstance(bound, annotated_types.Le):
            high = bound.le
        elif isinstance(bound, annotated_types.Gt):
            low = bound.gt + 0.001  # top_p, three decimals
        elif isinstance(bound, annotated_types.Lt):
            high = bound.lt - 1  # seed, a whole number
    if type(None) in typing.get_args(info.annotation):
        low -= 1
    return low, high
