"""Target: ``Record.decode`` of every signed object and record of the wire.

Credentials, orders, trade terms and receipts, delegations, agent orders and
receipts, clearing summaries, log heads, revocation lists, address
announcements... The first input byte picks the record class, the rest is
decoded. Documented outcome: an instance or ``DecodeError``; checking a
decoded object's signature may add ``SignatureError``.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from p2pd_fuzz_engine import doc_examples, load  # type: ignore[import-not-found]

import protocol
from protocol import DecodeError, Message, SignatureError, pack
from protocol.schema import Record


def _record_classes() -> list[type[Record]]:
    """Every concrete record of protocol/ that is not a message."""
    found: set[type[Record]] = set()
    todo: list[type[Record]] = [Record]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith("protocol.") and not issubclass(sub, Message) \
                    and dataclasses.is_dataclass(sub):
                found.add(sub)
    return sorted(found, key=lambda c: (c.__module__, c.__name__))


CLASSES = _record_classes()


def target(data: bytes) -> None:
    if not data:
        return
    cls = CLASSES[data[0] % len(CLASSES)]
    try:
        obj = cls.decode(data[1:])
    except DecodeError as exc:
        if len(str(exc)) > 300:
            raise AssertionError(f"error text of {len(str(exc))} characters") from exc
        return
    # Check signatures too: the verify path must take any decoded object.
    for name in ("verify", "verify_signature"):
        method = getattr(obj, name, None)
        if method is None:
            continue
        params = inspect.signature(method).parameters
        args = [bytes(64) if p == "signature" else KEY for p in params]
        try:
            method(*args)
        except SignatureError:
            pass


KEY = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")  # RFC 8032 test 1


def seeds() -> list[bytes]:
    _record = load("message")._record
    out: list[bytes] = []
    for i, cls in enumerate(CLASSES):
        out.append(bytes([i]) + pack(_record(cls), check=False))
    # Nested objects inside the documented message examples, under every class.
    for data in doc_examples().values():
        try:
            fields: list[Any] = protocol.unpack(data)[2:]
        except DecodeError:
            continue
        for value in fields:
            if isinstance(value, list):
                for i in range(len(CLASSES)):
                    out.append(bytes([i]) + pack(value, check=False))
    return out
