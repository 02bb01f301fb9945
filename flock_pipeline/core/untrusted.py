"""Text and numbers from other people (other validators' reports, miners' strings) made safe to show: control
characters escaped before they reach a terminal, non-finite numbers out of JSON, long strings cut.

Pure code: no dagster, no I/O.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

MAX_TEXT = 300  # characters of one untrusted string shown


def printable(text: object, limit: int = MAX_TEXT) -> str:
    """`text` as one safe line: control and format characters (ANSI escapes, carriage returns, bidi overrides, ...)
    written as `\\x1b`-style escapes, and at most `limit` characters (then `...`)."""
    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    shown = "".join(out)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None (JSON has no NaN), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def number_or_none(value: Any) -> float | int | None:
    """A finite number from untrusted JSON, else None (a string, an object, NaN, a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if isinstance(value, int) or math.isfinite(value) else None


def text_or_none(value: Any, limit: int = MAX_TEXT) -> str | None:
    """A string from untrusted JSON, cut to `limit` characters, else None."""
    return value[:limit] if isinstance(value, str) else None
