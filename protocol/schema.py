"""Field specifications and the generic codec for wire records.

Every wire object (a message, a credential, an order, a receipt) is a frozen
dataclass whose fields carry a :class:`Spec` in their metadata. On the wire the
object is a msgpack array of its fields in declaration order; the spec of each
field says which msgpack type is allowed and within which limits. Decoding
checks every field before building the dataclass, so a decoded object is always
valid by construction.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from typing import Any, ClassVar, Self, TypeVar

from protocol import canonical
from protocol.errors import DecodeError, LocalProtocolError

U32 = 2**32 - 1
U64 = 2**64 - 1
I64_MAX = 2**63 - 1


class Spec:
    """How one field looks on the wire; subclasses implement load and dump.

    ``load`` checks a decoded wire value and returns the field's value;
    ``check`` checks a field's value as held by an object we are about to
    send (a tuple where the wire has an array, a record where it has a nested
    array). Both raise :class:`DecodeError`; ``name`` is only used in its text.
    """

    def load(self, value: Any, name: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        return value

    def check(self, value: Any, name: str) -> None:
        self.load(value, name)


@dataclasses.dataclass(frozen=True)
class Int(Spec):
    """A msgpack int (never bool) with ``lo <= value <= hi``."""

    lo: int = 0
    hi: int = U64

    def load(self, value: Any, name: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise DecodeError(f"{name}: expected int")
        if not self.lo <= value <= self.hi:
            raise DecodeError(f"{name}: {value} outside [{self.lo}, {self.hi}]")
        return value


@dataclasses.dataclass(frozen=True)
class Bool(Spec):
    def load(self, value: Any, name: str) -> bool:
        if not isinstance(value, bool):
            raise DecodeError(f"{name}: expected bool")
        return value


@dataclasses.dataclass(frozen=True)
class Str(Spec):
    """A msgpack str of at most ``max_len`` UTF-8 bytes matching ``pattern``."""

    max_len: int = 64
    pattern: str | None = None
    min_len: int = 0

    def load(self, value: Any, name: str) -> str:
        if not isinstance(value, str):
            raise DecodeError(f"{name}: expected str")
        size = len(value) if value.isascii() else len(value.encode("utf-8"))
        if not self.min_len <= size <= self.max_len:
            raise DecodeError(f"{name}: length {size} outside [{self.min_len}, {self.max_len}]")
        if self.pattern is not None and not _compiled(self.pattern).fullmatch(value):
            raise DecodeError(f"{name}: does not match {self.pattern}")
        return value


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@dataclasses.dataclass(frozen=True)
class Bin(Spec):
    """A msgpack bin of length in ``[min_len, max_len]``."""

    min_len: int = 0
    max_len: int = canonical.MAX_BIN

    def load(self, value: Any, name: str) -> bytes:
        if not isinstance(value, bytes):
            raise DecodeError(f"{name}: expected bin")
        if not self.min_len <= len(value) <= self.max_len:
            raise DecodeError(f"{name}: length {len(value)} outside [{self.min_len}, {self.max_len}]")
        return value


def Fixed(length: int) -> Bin:  # noqa: N802 - reads like a type
    """A bin of exactly ``length`` bytes (keys, signatures, ids)."""
    return Bin(length, length)


@dataclasses.dataclass(frozen=True)
class OneOf(Spec):
    """A str that must be one of ``choices``."""

    choices: tuple[str, ...]

    def load(self, value: Any, name: str) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise DecodeError(f"{name}: expected one of {', '.join(self.choices)}")
        return value


@dataclasses.dataclass(frozen=True)
class Optional(Spec):
    """``nil`` or a value of ``inner``."""

    inner: Spec

    def load(self, value: Any, name: str) -> Any:
        return None if value is None else self.inner.load(value, name)

    def dump(self, value: Any) -> Any:
        return None if value is None else self.inner.dump(value)

    def check(self, value: Any, name: str) -> None:
        if value is not None:
            self.inner.check(value, name)


@dataclasses.dataclass(frozen=True)
class ListOf(Spec):
    """An array of at most ``max_len`` items, each of ``inner``."""

    inner: Spec
    max_len: int = 1024

    def load(self, value: Any, name: str) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise DecodeError(f"{name}: expected array")
        if len(value) > self.max_len:
            raise DecodeError(f"{name}: more than {self.max_len} items")
        load = self.inner.load
        try:
            return tuple([load(item, name) for item in value])
        except DecodeError:
            # Again with each item's index in the error text (the fast path
            # above does not format a name per item).
            return tuple(load(item, f"{name}[{i}]") for i, item in enumerate(value))

    def dump(self, value: Any) -> Any:
        return [self.inner.dump(item) for item in value]

    def check(self, value: Any, name: str) -> None:
        if not isinstance(value, (tuple, list)):
            raise DecodeError(f"{name}: expected array")
        if len(value) > self.max_len:
            raise DecodeError(f"{name}: more than {self.max_len} items")
        for i, item in enumerate(value):
            self.inner.check(item, f"{name}[{i}]")


@dataclasses.dataclass(frozen=True)
class Nested(Spec):
    """A nested :class:`Record` (encoded as its own array)."""

    cls: type[Record]

    def load(self, value: Any, name: str) -> Record:
        return self.cls.from_wire(value, name)

    def dump(self, value: Any) -> Any:
        return value._wire()

    def check(self, value: Any, name: str) -> None:
        if not isinstance(value, self.cls):
            raise DecodeError(f"{name}: expected {self.cls.__name__}")
        value.check_spec(name)


def f(spec: Spec, **kwargs: Any) -> Any:
    """Declare a dataclass field with its wire spec: ``wh: int = f(Int(1, 10**9))``."""
    return dataclasses.field(metadata={"spec": spec}, **kwargs)


R = TypeVar("R", bound="Record")

# Each record class's (field name, spec) pairs, in order (a class's own: never a base's).
_SPECS: dict[type[Record], tuple[tuple[str, Spec], ...]] = {}


class Record:
    """Base for wire objects: a frozen dataclass encoded as an array of fields.

    Subclasses are ``@dataclass(frozen=True)`` with every field declared via
    :func:`f`. ``to_wire``/``from_wire`` convert to and from msgpack-ready
    lists; ``encode``/``decode`` to and from canonical bytes.

    Decode once: an instance remembers that it is valid (``from_wire`` built
    it, or ``check_spec`` passed) and its wire form, so a record that is forwarded
    or sent to several peers is neither checked nor converted again. Both are
    plain attributes outside the dataclass fields (no effect on ``==`` or
    ``hash``); ``dataclasses.replace`` makes a new, unchecked instance.
    """

    _valid: bool = False
    _wire_cache: list[Any] | None = None
    DECODED_CACHE: ClassVar[int] = 0
    """Records that recur on the wire (a credential rides with every order)
    set this to keep that many decoded instances, keyed by their wire fields:
    the same fields decode to the same (immutable) object without the checks
    running again. 0: no cache."""

    @classmethod
    def _specs(cls) -> tuple[tuple[str, Spec], ...]:
        specs = _SPECS.get(cls)
        if specs is None:
            specs = _SPECS[cls] = tuple((fl.name, fl.metadata["spec"]) for fl in dataclasses.fields(cls))  # type: ignore[arg-type]
        return specs

    def _wire(self) -> list[Any]:
        """The wire list, shared (callers must not modify it)."""
        wire = self._wire_cache
        if wire is None:
            wire = [spec.dump(getattr(self, name)) for name, spec in self._specs()]
            object.__setattr__(self, "_wire_cache", wire)
        return wire

    def to_wire(self) -> list[Any]:
        """The fields as a msgpack-ready list (a new top-level list each call)."""
        return list(self._wire())

    @classmethod
    def from_wire(cls, value: Any, name: str | None = None) -> Self:
        """Validate ``value`` (a decoded msgpack array) into an instance.

        Raises :class:`DecodeError` naming the first offending field.
        """
        specs = cls._specs()
        if not isinstance(value, list):
            raise DecodeError(f"{name or cls.__name__}: expected array")
        if len(value) != len(specs):
            raise DecodeError(f"{name or cls.__name__}: expected {len(specs)} fields, got {len(value)}")
        cache: dict[tuple[Any, ...], Self] | None = None
        key: tuple[Any, ...] | None = None
        if cls.DECODED_CACHE:
            cache = cls.__dict__.get("_decoded")
            if cache is None:
                cache = {}
                cls._decoded = cache  # type: ignore[attr-defined]
            try:
                # The types too: True == 1 == 1.0 in a tuple, and the wire
                # refuses a bool or a float where an int belongs.
                key = (*value, *map(type, value))
                hit = cache.get(key)
            except TypeError:  # an unhashable field (a nested array): not a valid record anyway
                key = hit = None
            if hit is not None:
                return hit
        try:
            kwargs = {fname: spec.load(item, fname) for (fname, spec), item in zip(specs, value, strict=True)}
        except DecodeError:
            # The slow path, only to name the offending field in full.
            label = name or cls.__name__
            kwargs = {fname: spec.load(item, f"{label}.{fname}") for (fname, spec), item in zip(specs, value, strict=True)}
        try:
            obj = cls(**kwargs)
        except (ValueError, TypeError) as exc:
            raise DecodeError(f"{name or cls.__name__}: {exc}") from exc
        object.__setattr__(obj, "_valid", True)
        if cache is not None and key is not None:
            if len(cache) >= cls.DECODED_CACHE:
                del cache[next(iter(cache))]  # the oldest
            cache[key] = obj
        return obj

    def check_spec(self, name: str | None = None) -> None:
        """Check every field against its spec, as a decoder would; raises :class:`DecodeError`.

        Cross-field rules live in ``__post_init__`` and held when the object
        was made. Nested records that are known valid are not walked again.
        """
        if self._valid:
            return
        label = name or type(self).__name__
        for fname, spec in self._specs():
            spec.check(getattr(self, fname), f"{label}.{fname}")
        object.__setattr__(self, "_valid", True)

    def encode(self) -> bytes:
        return canonical.pack(self._wire())

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Decode canonical bytes; raises :class:`DecodeError` on any bad input."""
        return cls.from_wire(canonical.unpack(data))

    def validate(self) -> None:
        """Check our own object against its spec before sending it.

        Raises :class:`LocalProtocolError`: an invalid object we built is our bug.
        """
        try:
            type(self).from_wire(canonical.unpack(self.encode()))
        except DecodeError as exc:
            raise LocalProtocolError(str(exc)) from exc
        object.__setattr__(self, "_valid", True)


def dump_all(records: Sequence[Record]) -> list[Any]:
    return [r.to_wire() for r in records]
