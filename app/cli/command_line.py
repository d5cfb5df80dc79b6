"""Pieces of kvchat's command line that every subcommand shares: an argument
parser whose errors are one line, and a setting's bounds in words."""

from __future__ import annotations

import argparse
import math
from typing import Any, NoReturn

import annotated_types
from pydantic import ValidationError

from kvchat.app.core.settings import EngineSettings


class CommandLine(argparse.ArgumentParser):
    """An argument parser whose errors are one line: what is wrong, and where help is.

    (argparse prints the whole usage first, which buries the one line that matters.)
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


OPTIONS = {"n_ctx": "--ctx", "n_threads": "--threads", "n_gpu_layers": "--gpu-layers"}


def _number(value: object) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _range(field: str) -> str:
    """The bounds of a setting in words: "from 512 to 1,048,576"."""
    info = EngineSettings.model_fields.get(field)
    low = high = ""
    for bound in info.metadata if info is not None else ():
        if isinstance(bound, annotated_types.Ge):
            low = f"from {_number(bound.ge)}"
        elif isinstance(bound, annotated_types.Gt):
            low = f"above {_number(bound.gt)}"
        elif isinstance(bound, annotated_types.Le):
            high = f"to {_number(bound.le)}"
        elif isinstance(bound, annotated_types.Lt):
            below = bound.lt
            high = f"to {below - 1:,}" if isinstance(below, int) else f"below {_number(below)}"
    if low.startswith("above") and high:
        high = "and up " + high
    return " ".join(part for part in (low, high) if part)


def explain(error: ValidationError) -> str:
    """One line for a person: each option, the value given, and what it may be."""
    lines = []
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem["loc"] else "value"
        option = OPTIONS.get(field, "--" + field.replace("_", "-"))
        value: Any = problem.get("input")
        bounds = _range(field)
        if isinstance(value, float) and math.isnan(value):
            why = "is not a number"
        elif bounds and problem["type"] in (
            "greater_than",
            "greater_than_equal",
            "less_than",
            "less_than_equal",
            "finite_number",
        ):
            why = "is out of range"
        else:
            why = f"is not allowed ({problem['msg'][:1].lower()}{problem['msg'][1:]})"
        shown = f" {value}" if isinstance(value, int | float | str) else ""
        lines.append(f"{option}{shown} {why}" + (f": it must be {bounds}" if bounds else ""))
    return "; ".join(lines)
