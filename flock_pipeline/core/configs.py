"""Frozen config dataclasses (DatasetLimits, DedupConfig, NearDupConfig, ScoringConfig, ...) from JSON objects, checked.

One path builds every nested config the validator reads (the settings' `limits`, `dedup`, `scoring`; a
competition's `dedup` and `scoring`): unknown fields, wrong types and the config's own rules are refused with a
ValueError whose message starts with the field's dotted path (`scoring.mode: ...`), so a wrong value stops the
validator before any work, naming what to fix. A field whose default is a config is built the same way from a
nested object, or is `null` where its type allows (a `DedupConfig`'s `near: null` turns near-duplicates off).

Pure code: no dagster, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, TypeVar

T = TypeVar("T")

_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def build_config(cls: type[T], value: Any, where: str) -> T:
    """An instance of the config dataclass `cls` from `value` (an instance already, or a JSON object of its
    fields); ValueError naming `where` + the field otherwise."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected an object of {cls.__name__} fields, got {type(value).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(known)})")
    built = {}
    for name, given in value.items():
        f = known[name]
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
        built[name] = _field_value(default, given, f"{where}.{name}", optional="None" in str(f.type))
    try:
        return cls(**built)
    except (TypeError, ValueError) as exc:
        text = str(exc)
        field = next((n for n in known if text.startswith(f"{n} ")), None)
        raise ValueError(f"{where}.{field}: {text}" if field else f"{where}: {text}") from None


def _field_value(default: Any, given: Any, where: str, optional: bool) -> Any:
    """One field's value, checked against the type of its default (`optional`: its type admits None)."""
    if given is None:
        if optional or default is None:
            return None
        raise ValueError(f"{where}: must not be null")
    if is_dataclass(default):
        return build_config(type(default), given, where)
    if default is None:  # an optional config left at None by default: any given value is taken as it is
        return given
    kind = type(default)
    ok = isinstance(given, kind) and not (isinstance(given, bool) and kind is not bool)
    if kind is float:
        ok = isinstance(given, (int, float)) and not isinstance(given, bool)
    if not ok:
        raise ValueError(f"{where}: must be {_KINDS.get(kind, kind.__name__)}, got {given!r}")
    if kind is float and not math.isfinite(given):  # JSON's Infinity and NaN parse, and pass most range checks
        raise ValueError(f"{where}: must be a finite number, got {given!r}")
    return float(given) if kind is float else given
