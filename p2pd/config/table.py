"""The configuration file's values, read safely: :class:`Table` and :class:`Section`.

:class:`Table` reads one TOML table's keys with a type and bounds each and
names the key in every error; :class:`Section` is a component's section (its
name and parser). :func:`check_shape` bounds a whole document first
(:data:`MAX_DEPTH`, 64-bit integers). Messages quote at most
:data:`SHOW_CHARS` characters of the file (issue 17).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast

from p2pd.errors import ConfigError
from protocol import ID_PATTERN, MAX_PRICE

T = TypeVar("T")
# Tables and arrays inside each other. Real files use 3 ([meter.options] and a
# value); the bound keeps every later step (validators, ``describe``, JSON)
# far from Python's recursion limit, which tomllib itself reaches near 490.
MAX_DEPTH = 32
# TOML integers are 64-bit; a parser must reject the rest (TOML 1.0, "Integer").
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1
# At most this many characters of the file's text go into a message.
SHOW_CHARS = 60
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]{1,40}")


def _show(value: Any) -> str:
    """A value as the user wrote it in TOML terms (strings in double quotes), cut short."""
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= SHOW_CHARS else text[: SHOW_CHARS - 3] + "..."


def _key(key: object) -> str:
    """A key as TOML would write it: bare if it can be, else quoted and cut short."""
    if isinstance(key, str) and _BARE_KEY.fullmatch(key):
        return key
    return _show(str(key)) if isinstance(key, str) else f"[{key}]"


def _where(path: tuple[object, ...]) -> str:
    """``("meter", "options", "seed")`` -> ``[meter].options.seed``; list indexes as ``[i]``.

    A path of over 4 parts keeps its first 2 and last 2 (``[a].b...y.z``),
    so the text stays short however deep the key is.
    """
    if not path:
        return "(top level)"
    text = f"[{_key(path[0])}]"
    for i, part in enumerate(path[1:], 1):
        if 2 <= i < len(path) - 2:
            text += ".." if i == 2 else ""
            continue
        text += f"[{part}]" if isinstance(part, int) else f".{_key(part)}"
    return text


def check_shape(data: Any) -> None:
    """Raise :class:`ConfigError` naming the first value nested deeper than
    :data:`MAX_DEPTH` or the first integer outside TOML's 64-bit range.

    Iterative, so it works on any depth tomllib can return.
    """
    stack: list[tuple[Any, tuple[object, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, (dict, list)):
            if len(path) > MAX_DEPTH:
                raise ConfigError(f"{_where(path[:2])}: nested deeper than {MAX_DEPTH} tables or arrays")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((v, (*path, k)) for k, v in items)
        elif isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
            raise ConfigError(f"{_where(path)}: integer outside the 64-bit range")


def _cut(text: str, limit: int = 2 * SHOW_CHARS) -> str:
    """A message from elsewhere that may quote the file: at most ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."




class Table:
    """Reads one TOML table, key by key, with messages that name the key.

    Each accessor removes the key it reads; :meth:`finish` then reports any
    key left over as unknown. Accessors raise :class:`ConfigError`.
    """

    def __init__(self, section: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"[{section}]: expected a table, got {_show(data)}")
        self.section = section
        self._data = dict(data)

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"[{self.section}].{_key(key)}: {message}")

    def has(self, key: str) -> bool:
        return key in self._data

    def _get(self, key: str, default: Any, required: bool) -> Any:
        if key in self._data:
            return self._data.pop(key)
        if required:
            raise self.error(key, "is required")
        return default

    def integer(self, key: str, default: int | None = None, lo: int | None = None,
            hi: int | None = None, *, required: bool = False) -> Any:
        value = self._get(key, default, required)
        if value is None:
            return None
        rng = f" {lo if lo is not None else ''}..{hi if hi is not None else ''}" if (
            lo is not None or hi is not None) else ""
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, f"expected an integer{rng}, got {_show(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.error(key, f"expected an integer{rng}, got {value}")
        return value

    def number(self, key: str, default: float | None = None, lo: float | None = None,
              hi: float | None = None, *, required: bool = False) -> Any:
        value = self._get(key, default, required)
        if value is None:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise self.error(key, f"expected a number, got {_show(value)}")
        if not math.isfinite(value):  # TOML has nan and inf; comparisons pass NaN
            raise self.error(key, f"expected a finite number, got {_show(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.error(key, f"expected a number in {lo}..{hi}, got {_show(value)}")
        return float(value)

    def boolean(self, key: str, default: bool | None = None, *, required: bool = False) -> Any:
        value = self._get(key, default, required)
        if value is not None and not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_show(value)}")
        return value

    def string(self, key: str, default: str | None = None, *, required: bool = False,
            max_len: int = 4096) -> Any:
        value = self._get(key, default, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_show(value)}")
        if not value or len(value) > max_len:
            raise self.error(key, f"expected a non-empty string of at most {max_len} characters")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None,
               *, required: bool = False) -> Any:
        value = self._get(key, default, required)
        if value is not None and value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}, got {_show(value)}")
        return value

    def strings(self, key: str, default: tuple[str, ...] = (), *, max_items: int = 1024) -> tuple[str, ...]:
        value = self._get(key, list(default), False)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"expected a list of strings, got {_show(value)}")
        if len(value) > max_items:
            raise self.error(key, f"at most {max_items} entries allowed, got {len(value)}")
        return tuple(value)

    def price(self, key: str, default: int | None = None) -> Any:
        """A price, money units per kWh, that the wire can carry: 0..protocol.MAX_PRICE."""
        return self.integer(key, default, 0, MAX_PRICE)

    def member(self, key: str) -> str | None:
        """A member id as credentials carry it (protocol.ID_PATTERN), or None if unset."""
        value: str | None = self.string(key, None, max_len=64)
        if value is not None and not re.fullmatch(ID_PATTERN, value):
            raise self.error(key, f"expected a member id (letters, digits and . _ : -), got {value!r}")
        return value

    def table(self, key: str) -> dict[str, Any]:
        value = self._get(key, {}, False)
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {_show(value)}")
        return value

    def path(self, key: str, default: Path | None, base: Path) -> Any:
        """A file system path; ``~`` and ``~user`` expand, relative ones join ``base``."""
        text = self.string(key, None)
        if text is None:
            return default
        if "\0" in text:
            raise self.error(key, "a path cannot contain a NUL character")
        try:
            p = Path(text).expanduser()
        except (RuntimeError, KeyError) as exc:  # no such user, or no home directory
            raise self.error(key, f"cannot expand ~ in {_show(text)}: unknown user or no home") from exc
        return p if p.is_absolute() else (base / p)

    def finish(self) -> None:
        """Raise for the first key nobody read."""
        for key in self._data:
            raise self.error(key, "unknown key")


class HasSections(Protocol):
    """A validated configuration (:class:`p2pd.config.Config`), as far as a section needs it."""

    @property
    def sections(self) -> Mapping[str, object]: ...


@dataclass(frozen=True)
class Section(Generic[T]):
    """A component's configuration section: its name and its parser.

    ``parse`` reads its keys from a :class:`Table` (whose errors name the
    section and key) and returns the section's value, typically a frozen
    dataclass; keys it leaves unread are reported as unknown afterwards. It
    raises :class:`ConfigError`, or ``ValueError``/``TypeError``/``ArithmeticError``
    (reported as ``[name]: message``, cut short).
    """

    name: str
    parse: Callable[[Table], T]

    def load(self, data: Any) -> T:
        """Validate the section's table (``{}`` gives the defaults). Raises :class:`ConfigError`."""
        t = Table(self.name, data)
        try:
            value = self.parse(t)
        except ConfigError:
            raise
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise ConfigError(f"[{self.name}]: {_cut(str(exc))}") from exc
        t.finish()
        return value

    def get(self, config: HasSections) -> T:
        """This section's value in ``config``.

        A config validated without this section gets the defaults: its file
        cannot have had the section, which would have been refused as unknown.
        """
        if self.name in config.sections:
            return cast(T, config.sections[self.name])
        return self.load({})


