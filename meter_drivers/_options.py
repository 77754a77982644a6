"""Validation of a driver's option table (a plain dict from TOML).

Each driver declares a spec ``{name: Option(...)}``; :func:`validate` returns a
complete dict (defaults filled in) or raises :class:`DriverConfigError` naming
the first bad key. ``bool`` is never accepted where a number is expected, even
though it is an ``int`` subclass in Python.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meter_drivers.base import DEFAULT_MAX_POWER_W, DriverConfigError

REQUIRED: Any = object()


@dataclass(frozen=True)
class Option:
    """One accepted option: its kind, default and an extra check."""

    kind: str
    """One of "str", "int", "float", "bool", "callable", "strings" (a list of str)."""
    default: Any = REQUIRED
    check: Callable[[Any], str | None] | None = None
    """Returns an error message, or None when the value is fine."""


def _coerce(kind: str, value: Any) -> Any:
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind == "str":
        return value if isinstance(value, str) else None
    if kind == "int":
        return value if isinstance(value, int) else None
    if kind == "float":
        return float(value) if isinstance(value, (int, float)) else None
    if kind == "callable":
        return value if callable(value) else None
    if kind == "strings":
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        return tuple(value) if ok else None
    raise AssertionError(f"unknown option kind {kind}")


def validate(spec: Mapping[str, Option], options: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``options`` against ``spec``; returns options with defaults filled in.

    Raises :class:`DriverConfigError` for an unknown key, a missing required
    key, a value of the wrong type or one that fails its check.
    """
    if not isinstance(options, Mapping):
        raise DriverConfigError("options", "must be a table of options")
    for key in options:
        if key not in spec:
            known = ", ".join(sorted(spec))
            raise DriverConfigError(str(key), f"unknown option (known: {known})")
    out: dict[str, Any] = {}
    for key, opt in spec.items():
        if key not in options:
            if opt.default is REQUIRED:
                raise DriverConfigError(key, "is required")
            out[key] = opt.default
            continue
        value = _coerce(opt.kind, options[key])
        if value is None:
            raise DriverConfigError(key, f"must be a {opt.kind}, got {options[key]!r}")
        if opt.check is not None:
            problem = opt.check(value)
            if problem is not None:
                raise DriverConfigError(key, problem)
        out[key] = value
    return out


def positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def in_range(lo: int, hi: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if lo <= value <= hi else f"must be between {lo} and {hi}"

    return check


def max_power_option(default: int | None = DEFAULT_MAX_POWER_W) -> Option:
    """``max_power_w`` (int W, 1 W to 100 MW): the guard's bound on power and jumps.

    Every driver takes it; see :class:`~meter_drivers.base.ReadingGuard`.
    """
    return Option("int", default, in_range(1, 100_000_000))
