"""Counts as people read them in a list, with no Qt: the views and the command line share them."""

from __future__ import annotations


def format_count(value: int | None) -> str:
    """12_345 -> "12.3k", 4_560_000 -> "4.6M"; "" when unknown."""
    if value is None:
        return ""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return str(value)


def format_parameters(value: int | None) -> str:
    """1_240_000_000 -> "1.2B", 135_000_000 -> "135M"; "" when unknown."""
    if value is None:
        return ""
    return f"{value / 1e9:.1f}B" if value >= 1e9 else f"{value / 1e6:.0f}M"
