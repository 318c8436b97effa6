"""How figures are shown to people, in one place: the CLI, report.html, comparison.html and the
Dagster metadata must print the same number the same way, or a reader comparing them sees a
difference that is not there."""

from __future__ import annotations

import math
from typing import Any

# kind → (template, scale): money to the cent, ratios to 3 places, shares and percentages as %.
FORMATS: dict[str, tuple[str, float]] = {
    "money": ("{:,.2f}", 1.0), "money0": ("{:,.0f}", 1.0), "num2": ("{:,.2f}", 1.0),
    "ratio": ("{:,.3f}", 1.0), "pct": ("{:,.2f} %", 1.0), "share": ("{:,.1f} %", 100.0),
    "bps": ("{:,.2f} bps", 1.0),
}  # fmt: skip


def format_figure(kind: str, value: Any, currency: str = "") -> str:
    """``value`` shown as a figure of ``kind`` (a key of :data:`FORMATS`, or ``count``); a
    missing or non-finite value is a dash, never ``nan``, and ``-0.00`` (the float dust of a mean
    of zeros) reads as ``0.00``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if kind == "count":
        return f"{int(value):,}"
    template, scale = FORMATS[kind]
    text = template.format(value * scale)
    if text.startswith("-") and not text.strip("-0.,% bps"):
        text = text[1:]
    return f"{text} {currency}" if kind == "money" and currency else text


def plain(v: Any) -> str:
    """A value as the CLI and the report print it: floats to 4 places, ints grouped."""
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.4f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
