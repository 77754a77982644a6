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
import re
from collections.abc import Sequence
from typing import Any, ClassVar, Self, TypeVar

from protocol import canonical
from protocol.errors import DecodeError, LocalProtocolError

U32 = 2**32 - 1
U64 = 2**64 - 1
I64_MAX = 2**63 - 1


class Spec:
    """How one field looks on the wire; subclasses implement load and dump."""

    def load(self, value: Any, name: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        return value


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
        size = len(value.encode("utf-8"))
        if not self.min_len <= size <= self.max_len:
            raise DecodeError(f"{name}: length {size} outside [{self.min_len}, {self.max_len}]")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise DecodeError(f"{name}: does not match {self.pattern}")
        return value


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
        return tuple(self.inner.load(item, f"{name}[{i}]") for i, item in enumerate(value))

    def dump(self, value: Any) -> Any:
        return [self.inner.dump(item) for item in value]


@dataclasses.dataclass(frozen=True)
class Nested(Spec):
    """A nested :class:`Record` (encoded as its own array)."""

    cls: type[Record]

    def load(self, value: Any, name: str) -> Record:
        return self.cls.from_wire(value, name)

    def dump(self, value: Any) -> Any:
        return value.to_wire()


def f(spec: Spec, **kwargs: Any) -> Any:
    """Declare a dataclass field with its wire spec: ``wh: int = f(Int(1, 10**9))``."""
    return dataclasses.field(metadata={"spec": spec}, **kwargs)


R = TypeVar("R", bound="Record")


class Record:
    """Base for wire objects: a frozen dataclass encoded as an array of fields.

    Subclasses are ``@dataclass(frozen=True)`` with every field declared via
    :func:`f`. ``to_wire``/``from_wire`` convert to and from msgpack-ready
    lists; ``encode``/``decode`` to and from canonical bytes.
    """

    _SPECS: ClassVar[tuple[tuple[str, Spec], ...]]

    @classmethod
    def _specs(cls) -> tuple[tuple[str, Spec], ...]:
        specs = cls.__dict__.get("_SPECS_CACHE")
        if specs is None:
            specs = tuple((fl.name, fl.metadata["spec"]) for fl in dataclasses.fields(cls))  # type: ignore[arg-type]
            cls._SPECS_CACHE = specs  # type: ignore[attr-defined]
        return specs

    def to_wire(self) -> list[Any]:
        return [spec.dump(getattr(self, name)) for name, spec in self._specs()]

    @classmethod
    def from_wire(cls, value: Any, name: str | None = None) -> Self:
        """Validate ``value`` (a decoded msgpack array) into an instance.

        Raises :class:`DecodeError` naming the first offending field.
        """
        label = name or cls.__name__
        specs = cls._specs()
        if not isinstance(value, list):
            raise DecodeError(f"{label}: expected array")
        if len(value) != len(specs):
            raise DecodeError(f"{label}: expected {len(specs)} fields, got {len(value)}")
        kwargs = {fname: spec.load(item, f"{label}.{fname}") for (fname, spec), item in zip(specs, value, strict=True)}
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:
            raise DecodeError(f"{label}: {exc}") from exc

    def encode(self) -> bytes:
        return canonical.pack(self.to_wire())

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


def dump_all(records: Sequence[Record]) -> list[Any]:
    return [r.to_wire() for r in records]
