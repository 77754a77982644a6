"""A minimal p2pd v1 peer written from docs/protocol.md alone.

It deliberately imports nothing from ``protocol``/``p2pd``/``store``: only
noiseprotocol, msgpack, cryptography, hashlib, trio (for the stream) and the
stdlib. It exists to test whether the document is enough to interoperate with
the reference node. Section numbers in comments refer to docs/protocol.md.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from noise.connection import Keypair, NoiseConnection

# --- section 10: reason codes ------------------------------------------------------------

REASONS = {
    0: "NORMAL", 1: "PROTOCOL_ERROR", 2: "UNSUPPORTED_VERSION", 3: "FRAME_TOO_LARGE",
    4: "DECRYPT_FAILED", 5: "HANDSHAKE_FAILED", 6: "UNTRUSTED_ISSUER", 7: "BAD_SIGNATURE",
    8: "CREDENTIAL_EXPIRED", 9: "CREDENTIAL_NOT_YET_VALID", 10: "WRONG_COMMUNITY",
    11: "KEY_MISMATCH", 12: "REVOKED", 13: "DUPLICATE_SESSION", 14: "TIMEOUT",
    15: "RATE_LIMITED", 16: "BANNED", 17: "TOO_MANY_CONNECTIONS", 18: "SHUTDOWN",
    19: "INVALID_MESSAGE", 20: "UNEXPECTED_MESSAGE", 21: "NOT_A_MEMBER", 22: "EXPIRED",
    23: "INSUFFICIENT", 24: "NOT_FOUND", 25: "REPLAY", 26: "BAD_ROLE", 27: "OUT_OF_BOUNDS",
}
CODE = {name: code for code, name in REASONS.items()}

# --- section 2 / 4.1 ---------------------------------------------------------------------

NOISE_NAME = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"
CLOCK_SKEW = 300
# How long the peer waits for an expected message before giving up (raising
# trio.TooSlowError). A caller wanting less wraps the call in trio.fail_after.
ANSWER_WAIT = 5.0


def blake2b256(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def prologue(community: str) -> bytes:
    return b"p2pd/1\n" + community.encode("utf-8")


def ed25519_public(seed: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def ed25519_sign(seed: bytes, data: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).sign(data)


def ed25519_verify(public: bytes, signature: bytes, data: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
        return True
    except (InvalidSignature, ValueError):
        return False


def x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


# --- section 5: canonical encoding -------------------------------------------------------


class DecodeError(Exception):
    pass


def pack(value: Any) -> bytes:
    """Section 5.2: shortest encodings, bin for bytes, str for text."""
    return msgpack.packb(value, use_bin_type=True)


def signed_bytes(domain: str, fields: list[Any]) -> bytes:
    """Section 5.4."""
    return pack([domain, *fields])


def _no_map(_pairs: Any) -> Any:
    raise DecodeError("map")


def _no_ext(_code: int, _data: bytes) -> Any:
    raise DecodeError("ext type")


def _walk(value: Any, depth: int) -> None:
    if isinstance(value, list):
        if depth >= 16:
            raise DecodeError("nesting deeper than 16 arrays")
        for item in value:
            _walk(item, depth + 1)
    elif value is None or isinstance(value, (bool, int, str, bytes)):
        return
    else:  # float, Timestamp, ...
        raise DecodeError(f"forbidden type {type(value).__name__}")


def unpack(data: bytes) -> list[Any]:
    """Section 5.3 decoder rules. Returns the decoded top-level array."""
    try:
        value = msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True, object_pairs_hook=_no_map,
            ext_hook=_no_ext, max_str_len=4096, max_bin_len=65535, max_array_len=16384,
            max_map_len=0, max_ext_len=0,
        )
    except DecodeError:
        raise
    except Exception as exc:  # ExtraData, OutOfData, ValueError, UnicodeDecodeError, StackError
        raise DecodeError(f"msgpack: {exc!r}") from exc
    if not isinstance(value, list):
        raise DecodeError("top level is not an array")
    _walk(value, 1)
    return value


# --- field checks --------------------------------------------------------------------------

MEMBER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
METER_RE = re.compile(r"[A-Za-z0-9]{1,34}")
ROLES = ("prosumer", "representative", "broker")


def is_int(v: Any, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


def is_bin(v: Any, n: int) -> bool:
    return type(v) is bytes and len(v) == n


def is_member(v: Any) -> bool:
    return type(v) is str and len(v.encode()) <= 64 and MEMBER_RE.fullmatch(v) is not None


def is_str(v: Any, max_bytes: int) -> bool:
    return type(v) is str and len(v.encode()) <= max_bytes


# --- section 6: credentials ----------------------------------------------------------------

CREDENTIAL_DOMAIN = "p2pd/credential/1"


@dataclass(frozen=True)
class Credential:
    community: str
    member_id: str
    role: str
    metering_point: str
    sign_pk: bytes
    noise_pk: bytes
    valid_from: int
    valid_until: int
    issuer_pk: bytes
    signature: bytes

    def body(self) -> list[Any]:
        return [self.community, self.member_id, self.role, self.metering_point, self.sign_pk,
                self.noise_pk, self.valid_from, self.valid_until, self.issuer_pk]

    def to_array(self) -> list[Any]:
        return [*self.body(), self.signature]

    def encode(self) -> bytes:
        return pack(self.to_array())

    @property
    def credential_id(self) -> bytes:
        return blake2b256(self.encode())

    @classmethod
    def issue(cls, issuer_seed: bytes, *, community: str, member_id: str, role: str,
              metering_point: str, sign_pk: bytes, noise_pk: bytes, valid_from: int,
              valid_until: int) -> Credential:
        issuer_pk = ed25519_public(issuer_seed)
        body = [community, member_id, role, metering_point, sign_pk, noise_pk, valid_from,
                valid_until, issuer_pk]
        sig = ed25519_sign(issuer_seed, signed_bytes(CREDENTIAL_DOMAIN, body))
        return cls(*body, sig)  # type: ignore[arg-type]

    @classmethod
    def from_array(cls, arr: Any) -> Credential:
        """Section 6.1 field table."""
        if not isinstance(arr, list) or len(arr) != 10:
            raise DecodeError("credential: not an array of 10")
        c, m, role, mp, spk, npk, vf, vu, ipk, sig = arr
        ok = (is_member(c) and is_member(m) and role in ROLES and type(role) is str
              and type(mp) is str and METER_RE.fullmatch(mp) is not None
              and is_bin(spk, 32) and is_bin(npk, 32) and is_int(vf, 0, 2**40)
              and is_int(vu, 0, 2**40) and is_bin(ipk, 32) and is_bin(sig, 64))
        if not ok:
            raise DecodeError("credential: bad field")
        return cls(c, m, role, mp, spk, npk, vf, vu, ipk, sig)

    def check(self, *, now: float, community: str, trusted: set[bytes],
              rs: bytes | None, revoked: Callable[[Credential], bool] = lambda c: False) -> int | None:
        """Section 6.3; returns the reason code of the first failing check, or None."""
        if self.issuer_pk not in trusted:
            return CODE["UNTRUSTED_ISSUER"]
        if not ed25519_verify(self.issuer_pk, self.signature, signed_bytes(CREDENTIAL_DOMAIN, self.body())):
            return CODE["BAD_SIGNATURE"]
        if self.community != community:
            return CODE["WRONG_COMMUNITY"]
        if not now + CLOCK_SKEW >= self.valid_from:
            return CODE["CREDENTIAL_NOT_YET_VALID"]
        if not now - CLOCK_SKEW < self.valid_until:
            return CODE["CREDENTIAL_EXPIRED"]
        if revoked(self):
            return CODE["REVOKED"]
        if rs is not None and self.noise_pk != rs:
            return CODE["KEY_MISMATCH"]
        return None


@dataclass
class Identity:
    member_id: str
    sign_seed: bytes
    noise_private: bytes
    credential: Credential

    @property
    def sign_pk(self) -> bytes:
        return ed25519_public(self.sign_seed)

    @property
    def noise_public(self) -> bytes:
        return x25519_public(self.noise_private)


def make_identity(issuer_seed: bytes, community: str, member_id: str, *, role: str = "prosumer",
                  metering_point: str = "EAN000000000000000099", valid_from: int, valid_until: int,
                  sign_seed: bytes | None = None, noise_private: bytes | None = None,
                  credential_noise_pk: bytes | None = None) -> Identity:
    """A member with fresh keys (or the given ones) and a credential from ``issuer_seed``.

    ``credential_noise_pk`` puts a different Noise key into the credential (negative tests).
    """
    sign_seed = sign_seed or os.urandom(32)
    noise_private = noise_private or os.urandom(32)
    cred = Credential.issue(
        issuer_seed, community=community, member_id=member_id, role=role,
        metering_point=metering_point, sign_pk=ed25519_public(sign_seed),
        noise_pk=credential_noise_pk or x25519_public(noise_private),
        valid_from=valid_from, valid_until=valid_until)
    return Identity(member_id, sign_seed, noise_private, cred)


# --- section 7: messages ---------------------------------------------------------------------

HELLO, PING, PONG, CLOSE, REKEY = 1, 2, 3, 4, 5
FEEDBACK, ECHO, REVOCATION, EPOCH_KEY = 16, 17, 18, 19
ORDER_GOSSIP, CANCEL_GOSSIP, ORDERS_REQUEST, ORDERS_SNAPSHOT = 32, 33, 34, 35
TAKE, TRADE_ACCEPTED, TRADE_REFUSED = 36, 37, 38
TAKE_INTENT, OWNER_PROOF = 44, 45  # section 12.8
ADDRESS = 96
# number of fields after [version, type]
FIELD_COUNT = {HELLO: 1, PING: 1, PONG: 1, CLOSE: 2, REKEY: 0, FEEDBACK: 6, ECHO: 6, REVOCATION: 1,
               ORDER_GOSSIP: 3, CANCEL_GOSSIP: 2, ORDERS_REQUEST: 0, ORDERS_SNAPSHOT: 1, TAKE: 2,
               TRADE_ACCEPTED: 1, TRADE_REFUSED: 4, ADDRESS: 5, EPOCH_KEY: 1, TAKE_INTENT: 4,
               OWNER_PROOF: 2}


class ProtocolViolation(Exception):
    def __init__(self, reason: int, text: str = "") -> None:
        super().__init__(f"{REASONS.get(reason, reason)}: {text}")
        self.reason = reason


def decode_message(data: bytes) -> list[Any]:
    """Section 7.1 (+ field checks for the messages this peer interprets)."""
    try:
        msg = unpack(data)
    except DecodeError as exc:
        raise ProtocolViolation(CODE["INVALID_MESSAGE"], str(exc)) from exc
    if len(msg) < 2:
        raise ProtocolViolation(CODE["INVALID_MESSAGE"], "fewer than 2 elements")
    version, mtype = msg[0], msg[1]
    if not (type(version) is int and version == 1):
        raise ProtocolViolation(CODE["UNSUPPORTED_VERSION"], repr(version))
    if type(mtype) is not int or mtype not in FIELD_COUNT:
        raise ProtocolViolation(CODE["INVALID_MESSAGE"], f"unknown type {mtype!r}")
    if len(msg) != 2 + FIELD_COUNT[mtype]:
        raise ProtocolViolation(CODE["INVALID_MESSAGE"], f"type {mtype}: {len(msg) - 2} fields")
    try:
        _check_fields(mtype, msg[2:])
    except DecodeError as exc:
        raise ProtocolViolation(CODE["INVALID_MESSAGE"], str(exc)) from exc
    return msg


def _check_fields(mtype: int, f: list[Any]) -> None:
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise DecodeError(f"type {mtype}: bad {what}")

    if mtype == HELLO:
        Credential.from_array(f[0])
    elif mtype in (PING, PONG):
        need(is_int(f[0], 0, 2**32 - 1), "seq")
    elif mtype == CLOSE:
        need(is_int(f[0], 0, 255), "reason")
        need(is_str(f[1], 200), "message")
    elif mtype == ORDER_GOSSIP:
        Order.from_array(f[0])
        owner_cert(f[1])
        need(is_int(f[2], 0, 16), "hops")
    elif mtype == ORDERS_SNAPSHOT:
        need(isinstance(f[0], list) and len(f[0]) <= 128, "orders")
        for body in f[0]:
            need(isinstance(body, list) and len(body) == 3, "snapshot entry")
            Order.from_array(body[0])
            owner_cert(body[1])
            need(is_int(body[2], 0, 16), "hops")
    elif mtype == TAKE:
        terms_from_array(f[0])
        need(is_bin(f[1], 64), "taker_sig")
    elif mtype == TRADE_ACCEPTED:
        r = f[0]
        need(isinstance(r, list) and len(r) == 3, "receipt")
        terms_from_array(r[0])
        need(is_bin(r[1], 64) and is_bin(r[2], 64), "receipt signatures")
    elif mtype == EPOCH_KEY:
        k = f[0]
        need(isinstance(k, list) and len(k) == 6, "epoch key")
        need(is_str(k[0], 64) and is_int(k[1], 0, 2**40 // 86400) and is_bin(k[2], 256)
             and is_int(k[3], 1, 4096) and is_bin(k[4], 32) and is_bin(k[5], 64), "epoch key fields")
        need(bool(k[2][0] & 0x80) and bool(k[2][-1] & 1), "modulus")
    elif mtype == TAKE_INTENT:
        need(is_bin(f[0], 16) and is_bin(f[1], 16), "ids")
        need(isinstance(f[2], bytes) and 48 <= len(f[2]) <= 128, "sealed")
        need(is_int(f[3], 0, 16), "hops")
    elif mtype == OWNER_PROOF:
        need(is_bin(f[0], 16) and is_bin(f[1], 64), "owner proof")
    elif mtype == TRADE_REFUSED:
        need(is_bin(f[0], 16), "trade_id")
        need(is_int(f[1], 0, 255), "reason")
        need(is_int(f[2], 0, 10_000_000), "remaining_wh")
        need(is_str(f[3], 200), "message")


# --- section 12: trading objects ---------------------------------------------------------------


def owner_cert(arr: Any) -> None:
    """OrderGossip's second field: a credential (10 elements) or a pseudonym (4, section 12.8)."""
    if isinstance(arr, list) and len(arr) == 4:
        if not (is_int(arr[0], 0, 2**40 // 86400) and is_bin(arr[1], 32) and is_bin(arr[2], 32)
                and is_bin(arr[3], 256)):
            raise DecodeError("bad pseudonym")
        return
    Credential.from_array(arr)


ORDER_DOMAIN = "p2pd/order/1"
CANCEL_DOMAIN = "p2pd/cancel/1"
TRADE_DOMAIN = "p2pd/trade/1"


@dataclass(frozen=True)
class Order:
    order_id: bytes
    member_id: str
    side: str
    slot_start: int
    slot_len: int
    wh: int
    price: int
    expiry: int
    signature: bytes

    def body(self) -> list[Any]:
        return [self.order_id, self.member_id, self.side, self.slot_start, self.slot_len,
                self.wh, self.price, self.expiry]

    def to_array(self) -> list[Any]:
        return [*self.body(), self.signature]

    @classmethod
    def create(cls, sign_seed: bytes, *, order_id: bytes, member_id: str, side: str,
               slot_start: int, slot_len: int, wh: int, price: int, expiry: int) -> Order:
        body = [order_id, member_id, side, slot_start, slot_len, wh, price, expiry]
        return cls(*body, ed25519_sign(sign_seed, signed_bytes(ORDER_DOMAIN, body)))  # type: ignore[arg-type]

    @classmethod
    def from_array(cls, a: Any) -> Order:
        if not isinstance(a, list) or len(a) != 9:
            raise DecodeError("order: not an array of 9")
        oid, m, side, ss, sl, wh, price, exp, sig = a
        ok = (is_bin(oid, 16) and is_member(m) and side in ("sell", "buy") and type(side) is str
              and is_int(ss, 0, 2**40) and is_int(sl, 60, 86400) and ss % sl == 0
              and is_int(wh, 1, 10_000_000) and is_int(price, 1, 100_000_000)
              and is_int(exp, 0, 2**40) and exp <= ss and is_bin(sig, 64))
        if not ok:
            raise DecodeError("order: bad field")
        return cls(oid, m, side, ss, sl, wh, price, exp, sig)

    def verify(self, sign_pk: bytes) -> bool:
        return ed25519_verify(sign_pk, self.signature, signed_bytes(ORDER_DOMAIN, self.body()))


def terms_from_array(t: Any) -> list[Any]:
    """TradeTerms, section 12.2 (a plain list of the 10 fields)."""
    if not isinstance(t, list) or len(t) != 10:
        raise DecodeError("terms: not an array of 10")
    tid, oid, owh, seller, buyer, ss, sl, wh, price, created = t
    ok = (is_bin(tid, 16) and is_bin(oid, 16) and is_int(owh, 1, 10_000_000) and is_member(seller)
          and is_member(buyer) and seller != buyer and is_int(ss, 0, 2**40) and is_int(sl, 60, 86400)
          and is_int(wh, 1, 10_000_000) and wh <= owh and is_int(price, 1, 100_000_000)
          and is_int(created, 0, 2**40))
    if not ok:
        raise DecodeError("terms: bad field")
    return t


def terms_bytes(terms: list[Any]) -> bytes:
    return signed_bytes(TRADE_DOMAIN, terms)


def parties(order: Order, taker: str) -> tuple[str, str]:
    """(seller, buyer) for a take of ``order`` by ``taker``."""
    return (order.member_id, taker) if order.side == "sell" else (taker, order.member_id)


# --- section 3: framing ---------------------------------------------------------------------------

HANDSHAKE_LIMIT = 1024
ESTABLISHED_LIMIT = 65535


def frame(body: bytes) -> bytes:
    assert 1 <= len(body) <= 65535
    return len(body).to_bytes(2, "big") + body


class Framer:
    """Reads frames from a trio stream, checking the prefix before buffering the body."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    async def read(self, limit: int) -> bytes | None:
        """One frame body, or None on EOF. Raises ProtocolViolation on bad prefixes."""
        if not await self._fill(2):
            return None
        n = int.from_bytes(self.buf[:2], "big")
        if n == 0:
            raise ProtocolViolation(CODE["PROTOCOL_ERROR"], "zero-length frame")
        if n > limit:
            raise ProtocolViolation(CODE["FRAME_TOO_LARGE"], f"{n} > {limit}")
        if not await self._fill(2 + n):
            return None
        body = bytes(self.buf[2:2 + n])
        del self.buf[:2 + n]
        return body


# --- section 4: handshake ---------------------------------------------------------------------------


class Handshake:
    """Noise XX with the p2pd prologue, one side. ``ephemeral`` only for test vectors."""

    def __init__(self, *, initiator: bool, static_private: bytes, community: str,
                 ephemeral: bytes | None = None) -> None:
        self.nc = NoiseConnection.from_name(NOISE_NAME)
        if initiator:
            self.nc.set_as_initiator()
        else:
            self.nc.set_as_responder()
        self.nc.set_keypair_from_private_bytes(Keypair.STATIC, static_private)
        self.nc.set_prologue(prologue(community))
        if ephemeral is not None:
            self.nc.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
            with warnings.catch_warnings():  # the library warns about fixed ephemerals
                warnings.simplefilter("ignore", UserWarning)
                self.nc.start_handshake()
        else:
            self.nc.start_handshake()
        self.rs: bytes | None = None

    def write(self, payload: bytes = b"") -> bytes:
        return bytes(self.nc.write_message(payload))

    def read(self, message: bytes) -> bytes:
        # noiseprotocol deletes handshake_state once the handshake completes:
        # keep a reference so the remote static key can still be read.
        hs = self.nc.noise_protocol.handshake_state
        payload = bytes(self.nc.read_message(message))
        rs = getattr(hs, "rs", None)
        if rs is not None and not isinstance(rs, type(None)) and hasattr(rs, "public_bytes"):
            self.rs = bytes(rs.public_bytes)
        return payload

    @property
    def complete(self) -> bool:
        return bool(self.nc.handshake_finished)

    @property
    def handshake_hash(self) -> bytes:
        return bytes(self.nc.get_handshake_hash())

    def encrypt(self, plaintext: bytes) -> bytes:
        return bytes(self.nc.encrypt(plaintext))

    def decrypt(self, body: bytes) -> bytes:
        if len(body) < 16:
            raise ProtocolViolation(CODE["DECRYPT_FAILED"], "shorter than the tag")
        try:
            return bytes(self.nc.decrypt(body))
        except Exception as exc:
            raise ProtocolViolation(CODE["DECRYPT_FAILED"], repr(exc)) from exc


class HandshakeError(Exception):
    def __init__(self, reason: int, text: str = "") -> None:
        super().__init__(f"{REASONS.get(reason, reason)}: {text}")
        self.reason = reason


# --- sessions and the peer ------------------------------------------------------------------------


@dataclass
class Trade:
    terms: list[Any]
    seller_sig: bytes
    buyer_sig: bytes

    def to_array(self) -> list[Any]:
        return [self.terms, self.seller_sig, self.buyer_sig]


class TradeRefusedError(Exception):
    def __init__(self, reason: int, remaining_wh: int, message: str) -> None:
        super().__init__(f"{REASONS.get(reason, reason)} (remaining {remaining_wh}): {message}")
        self.reason = reason
        self.remaining_wh = remaining_wh


@dataclass
class BookEntry:
    order: Order
    credential: Credential


@dataclass
class Peer:
    """One member: identity, trust configuration, its book and receipts, and one session."""

    identity: Identity
    community: str
    trusted: set[bytes]
    clock: Callable[[], float]
    slot_len: int = 900
    gate_closure: int = 300
    stream: trio.abc.Stream | None = None
    remote: Credential | None = None
    hs: Handshake | None = None
    book: dict[bytes, BookEntry] = field(default_factory=dict)
    receipts: dict[bytes, Trade] = field(default_factory=dict)
    refused_orders: list[tuple[bytes, int]] = field(default_factory=list)
    closed_by_peer: tuple[int, str] | None = None
    inbox: list[list[Any]] = field(default_factory=list)
    _send_lock: trio.Lock = field(default_factory=trio.Lock)
    _framer: Framer | None = None
    _changed: trio.Event = field(default_factory=trio.Event)

    @property
    def member_id(self) -> str:
        return self.identity.member_id

    def now(self) -> int:
        return int(self.clock())

    # -- handshake (initiator, section 4.3) --

    async def connect(self, stream: trio.abc.Stream, *, stage_deadline: float = 5.0,
                      request_orders: bool = True) -> Credential:
        """Run the XX handshake as initiator. Returns the responder's credential.

        Then, as section 12.3 asks of each side, sends one OrdersRequest.
        """
        self.stream = stream
        self._framer = Framer(stream)
        hs = Handshake(initiator=True, static_private=self.identity.noise_private, community=self.community)
        await stream.send_all(frame(hs.write(b"")))  # msg1, empty payload
        with trio.move_on_after(stage_deadline) as scope:
            body = await self._framer.read(HANDSHAKE_LIMIT)
        if scope.cancelled_caught:
            await self._abort()
            raise HandshakeError(CODE["TIMEOUT"], "no msg2")
        if body is None:
            await self._abort()
            raise HandshakeError(CODE["HANDSHAKE_FAILED"], "EOF before msg2")
        try:
            payload = hs.read(body)
            hello = decode_message(payload)
            if hello[1] != HELLO:
                raise ProtocolViolation(CODE["HANDSHAKE_FAILED"], "not a Hello")
        except Exception as exc:
            await self._abort()
            raise HandshakeError(CODE["HANDSHAKE_FAILED"], repr(exc)) from exc
        cred = Credential.from_array(hello[2])
        reason = cred.check(now=self.clock(), community=self.community, trusted=self.trusted, rs=hs.rs)
        if reason is not None:
            await self._abort()  # silently: we never reveal our credential
            raise HandshakeError(reason, "responder credential refused")
        msg3 = hs.write(pack([1, HELLO, self.identity.credential.to_array()]))
        await stream.send_all(frame(msg3))
        assert hs.complete
        self.hs = hs
        self.remote = cred
        if request_orders:
            await self.send([1, ORDERS_REQUEST])
        return cred

    async def _abort(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()

    # -- transport --

    async def send(self, msg: list[Any]) -> None:
        assert self.hs is not None and self.stream is not None
        plaintext = pack(msg)
        async with self._send_lock:
            await self.stream.send_all(frame(self.hs.encrypt(plaintext)))
            if msg[1] == REKEY:  # section 8.2: rekey the sending direction right after
                self.hs.nc.rekey_outbound_cipher()

    async def close(self, reason: int = 0, message: str = "") -> None:
        await self.send([1, CLOSE, reason, message])
        await self.stream.aclose()  # type: ignore[union-attr]

    async def receive(self) -> list[Any] | None:
        """Next transport message, or None at EOF / after Close (recorded in closed_by_peer)."""
        assert self.hs is not None and self._framer is not None
        try:
            body = await self._framer.read(ESTABLISHED_LIMIT)
        except trio.BrokenResourceError:
            # A TCP reset: the peer closed with our frames unread (see section 4.3).
            return None
        if body is None:
            return None
        msg = decode_message(self.hs.decrypt(body))
        if msg[1] == REKEY:
            self.hs.nc.rekey_inbound_cipher()
        if msg[1] == CLOSE:
            self.closed_by_peer = (msg[2], msg[3])
        return msg

    async def run(self, *, auto_pong: bool = True) -> None:
        """Read and dispatch until the session ends. Automatic answers as the spec requires."""
        try:
            while True:
                try:
                    msg = await self.receive()
                except ProtocolViolation as exc:
                    with trio.move_on_after(1):
                        await self.close(exc.reason, str(exc)[:100])
                    return
                if msg is None:
                    return
                self.inbox.append(msg)
                self._changed.set()
                self._changed = trio.Event()
                mtype = msg[1]
                if mtype == CLOSE:
                    return
                if mtype == PING and auto_pong:
                    await self.send([1, PONG, msg[2]])
                elif mtype == ORDERS_REQUEST:
                    await self.send_snapshot()
                elif mtype in (ORDER_GOSSIP,):
                    self.accept_order(msg[2], msg[3], forward_hops=msg[4])
                elif mtype == ORDERS_SNAPSHOT:
                    for order, cred, _hops in msg[2]:
                        self.accept_order(order, cred, forward_hops=0)
                elif mtype == TAKE:
                    await self.answer_take(msg[2], msg[3])
                elif mtype == FEEDBACK:
                    await self.send([1, ECHO, *msg[2:]])  # section 13.3: echo at once
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def wait_for(self, predicate: Callable[[list[Any]], bool]) -> list[Any]:
        """First message in the inbox (already received or arriving) matching ``predicate``.

        Raises trio.TooSlowError after :data:`ANSWER_WAIT` seconds.
        """
        seen = 0
        with trio.fail_after(ANSWER_WAIT):
            while True:
                for msg in self.inbox[seen:]:
                    if predicate(msg):
                        return msg
                seen = len(self.inbox)
                await self._changed.wait()

    # -- trading: orders (section 12.3, OrderGossip rules) --

    def check_order(self, order: Order, cred: Credential, now: int) -> int | None:
        reason = cred.check(now=now, community=self.community, trusted=self.trusted, rs=None)
        if reason is not None:
            return reason
        if cred.member_id != order.member_id:
            return CODE["NOT_A_MEMBER"]
        if cred.role not in ("prosumer", "representative"):
            return CODE["BAD_ROLE"]
        if not order.verify(cred.sign_pk):
            return CODE["BAD_SIGNATURE"]
        if order.slot_len != self.slot_len:
            return CODE["OUT_OF_BOUNDS"]
        if not order.expiry > now:
            return CODE["EXPIRED"]
        if not order.expiry <= order.slot_start - self.gate_closure:
            return CODE["OUT_OF_BOUNDS"]
        if not order.slot_start <= now + 172800:
            return CODE["OUT_OF_BOUNDS"]
        return None

    def accept_order(self, order_arr: list[Any], cred_arr: list[Any], *, forward_hops: int) -> int | None:
        order = Order.from_array(order_arr)
        if order.order_id in self.book:
            return None
        cred = Credential.from_array(cred_arr)
        reason = self.check_order(order, cred, self.now())
        if reason is not None:
            self.refused_orders.append((order.order_id, reason))
            return reason
        self.book[order.order_id] = BookEntry(order, cred)
        # This peer has a single session, so there is nobody to forward to.
        return None

    async def post(self, side: str, slot_start: int, wh: int, price: int, *,
                   order_id: bytes | None = None, expiry: int | None = None, hops: int = 8) -> Order:
        order = Order.create(
            self.identity.sign_seed, order_id=order_id or os.urandom(16), member_id=self.member_id,
            side=side, slot_start=slot_start, slot_len=self.slot_len, wh=wh, price=price,
            expiry=slot_start - self.gate_closure if expiry is None else expiry)
        self.book[order.order_id] = BookEntry(order, self.identity.credential)
        await self.send([1, ORDER_GOSSIP, order.to_array(), self.identity.credential.to_array(), hops])
        return order

    async def send_snapshot(self) -> None:
        now = self.now()
        live = [[e.order.to_array(), e.credential.to_array(), 0] for e in self.book.values()
                if e.order.expiry > now]
        # "as many OrdersSnapshot messages as needed": one (possibly empty) per 128 orders.
        chunks = [live[i:i + 128] for i in range(0, len(live), 128)] or [[]]
        for chunk in chunks:
            await self.send([1, ORDERS_SNAPSHOT, chunk])

    # -- trading: taker side (Take / TradeAccepted / TradeRefused) --

    async def take(self, order_id: bytes, wh: int, *, retry_terms: list[Any] | None = None) -> Trade:
        """Take ``wh`` of a booked order. ``retry_terms``: resend exactly these terms
        (a retry after a lost answer must reuse the trade_id *and* the terms)."""
        entry = self.book[order_id]
        order, owner_cred = entry.order, entry.credential
        seller, buyer = parties(order, self.member_id)
        terms = retry_terms or [os.urandom(16), order.order_id, order.wh, seller, buyer,
                                order.slot_start, order.slot_len, wh, order.price, self.now()]
        my_sig = ed25519_sign(self.identity.sign_seed, terms_bytes(terms))
        await self.send([1, TAKE, terms, my_sig])
        answer = await self.wait_for(
            lambda m: (m[1] == TRADE_ACCEPTED and m[2][0][0] == terms[0])
            or (m[1] == TRADE_REFUSED and m[2] == terms[0]))
        if answer[1] == TRADE_REFUSED:
            raise TradeRefusedError(answer[3], answer[4], answer[5])
        rterms, seller_sig, buyer_sig = answer[2]
        if rterms != terms:
            raise ValueError("receipt terms differ from the terms sent")
        mine, owners = (seller_sig, buyer_sig) if seller == self.member_id else (buyer_sig, seller_sig)
        if mine != my_sig:
            raise ValueError("our signature in the receipt is not the one we sent")
        if not ed25519_verify(owner_cred.sign_pk, owners, terms_bytes(terms)):
            raise ValueError("owner signature does not verify")
        trade = Trade(terms, seller_sig, buyer_sig)
        self.receipts[terms[0]] = trade
        return trade

    # -- trading: owner side (section 12.3, Take rules 1-6) --

    async def answer_take(self, terms: list[Any], taker_sig: bytes) -> None:
        assert self.remote is not None
        trade_id = terms[0]

        async def refuse(reason: int, remaining: int = 0, text: str = "") -> None:
            await self.send([1, TRADE_REFUSED, trade_id, reason, remaining, text])

        stored = self.receipts.get(trade_id)
        if stored is not None:  # rule 1
            if self.remote.member_id in (stored.terms[3], stored.terms[4]):
                await self.send([1, TRADE_ACCEPTED, stored.to_array()])
            else:
                await refuse(CODE["REPLAY"])
            return
        entry = self.book.get(terms[1])
        if entry is None or entry.order.member_id != self.member_id:  # rule 2
            await refuse(CODE["NOT_FOUND"])
            return
        order = entry.order
        seller, buyer = parties(order, self.remote.member_id)
        expected = [order.order_id, order.wh, seller, buyer, order.slot_start, order.slot_len]
        if terms[1:7] != expected or terms[8] != order.price:  # rule 3
            await refuse(CODE["OUT_OF_BOUNDS"])
            return
        if not ed25519_verify(self.remote.sign_pk, taker_sig, terms_bytes(terms)):  # rule 4
            await refuse(CODE["BAD_SIGNATURE"])
            return
        if not order.expiry > self.now():  # rule 5
            await refuse(CODE["EXPIRED"])
            return
        sold = sum(t.terms[7] for t in self.receipts.values() if t.terms[1] == order.order_id)
        if sold + terms[7] > order.wh:  # rule 6 (single task: atomic)
            await refuse(CODE["INSUFFICIENT"], order.wh - sold)
            return
        my_sig = ed25519_sign(self.identity.sign_seed, terms_bytes(terms))
        trade = (Trade(terms, my_sig, taker_sig) if seller == self.member_id
                 else Trade(terms, taker_sig, my_sig))
        self.receipts[trade_id] = trade  # "durable": in memory for this test peer
        await self.send([1, TRADE_ACCEPTED, trade.to_array()])
