"""Shared clearing (S3): representatives' curves in additive shares, the broker sees sums.

Each representative turns its clients' wishes for a slot into two cumulative
curves over the community's price grid: ``supply[k]``, the Wh its clients
sell at ``grid[k]`` or more, and ``demand[k]``, the Wh they buy at
``grid[k]`` or less. It splits the concatenated vector ``supply ‖ demand``
into additive shares modulo 2^64, one per participant, and sends each other
participant its share (``Share``, inside their Noise session). Each
participant adds the shares it holds and sends the sum to the broker
(``ShareSum``); the broker adds the sums, which gives the community's
aggregate curves and nothing else, clears them and returns the signed
:class:`SharedClearing` (``ShareResult``). Each representative then tells the
broker only its own point at the clearing price (``FillClaim``), and the
trades are proposed and countersigned like any broker match.
docs/protocol.md section 15, "Shared clearing".

Vectors travel as ``bin``: big-endian unsigned 64-bit integers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from protocol.credentials import ID_PATTERN
from protocol.messages import Message, register
from protocol.schema import Bin, Fixed, Int, ListOf, Nested, Record, Str, f
from protocol.signing import SigningKey, digest, verify
from protocol.trading import MAX_PRICE, MAX_SLOT, MAX_TIME, MIN_SLOT

SHARED_CLEARING_DOMAIN = "p2pd/shared-clearing/1"
GRID_MAX = 256
"""Price points in a community grid: a share vector is at most 4 KiB."""
PARTICIPANTS_MAX = 64
MAX_ROUNDS = 3
"""A slot's shared clearing restarts at most twice (dropouts, docs/protocol.md 15)."""
MAX_CURVE_WH = 2**48
"""Bound on any aggregate curve point: a larger sum means a broken or cheated round."""
MODULUS = 2**64

_MEMBER = Str(64, ID_PATTERN)


def pack_vector(values: Sequence[int]) -> bytes:
    """Big-endian u64 encoding of a share vector; values are taken modulo 2^64."""
    return b"".join((v % MODULUS).to_bytes(8, "big") for v in values)


def unpack_vector(data: bytes) -> list[int]:
    """The u64 values of a packed vector. Raises ValueError if not a multiple of 8 bytes."""
    if len(data) % 8:
        raise ValueError("a vector is a multiple of 8 bytes")
    return [int.from_bytes(data[i : i + 8], "big") for i in range(0, len(data), 8)]


def _check_members(members: Sequence[str], what: str, minimum: int) -> None:
    if list(members) != sorted(set(members)):
        raise ValueError(f"{what} must be sorted and distinct")
    if len(members) < minimum:
        raise ValueError(f"{what}: at least {minimum}")


def _check_grid(grid: Sequence[int]) -> None:
    if not grid or any(a >= b for a, b in zip(grid, grid[1:], strict=False)):
        raise ValueError("the grid is a non-empty, strictly ascending list of prices")


@register
@dataclass(frozen=True)
class ShareJoin(Message):
    """A representative takes part in the shared clearing of a slot (to the broker)."""

    TYPE: ClassVar[int] = 85
    CATEGORY: ClassVar[str] = "trade"
    slot_start: int = f(Int(0, MAX_TIME))
    slot_len: int = f(Int(MIN_SLOT, MAX_SLOT))


@register
@dataclass(frozen=True)
class ShareRound(Message):
    """The broker opens round ``round`` of a slot's shared clearing among ``participants``."""

    TYPE: ClassVar[int] = 86
    CATEGORY: ClassVar[str] = "trade"
    slot_start: int = f(Int(0, MAX_TIME))
    round: int = f(Int(1, MAX_ROUNDS))
    grid: tuple[int, ...] = f(ListOf(Int(1, MAX_PRICE), GRID_MAX))
    participants: tuple[str, ...] = f(ListOf(_MEMBER, PARTICIPANTS_MAX))

    def __post_init__(self) -> None:
        _check_grid(self.grid)
        _check_members(self.participants, "participants", 2)


@register
@dataclass(frozen=True)
class Share(Message):
    """One participant's share for the receiver: ``2 * len(grid)`` u64 (supply, then demand)."""

    TYPE: ClassVar[int] = 87
    CATEGORY: ClassVar[str] = "trade"
    slot_start: int = f(Int(0, MAX_TIME))
    round: int = f(Int(1, MAX_ROUNDS))
    share: bytes = f(Bin(16, 16 * GRID_MAX))

    def __post_init__(self) -> None:
        if len(self.share) % 16:
            raise ValueError("a share is 2 * grid points of 8 bytes")


@register
@dataclass(frozen=True)
class ShareSum(Message):
    """A participant's sum of the shares it holds (its own included), from ``senders``."""

    TYPE: ClassVar[int] = 88
    CATEGORY: ClassVar[str] = "trade"
    slot_start: int = f(Int(0, MAX_TIME))
    round: int = f(Int(1, MAX_ROUNDS))
    senders: tuple[str, ...] = f(ListOf(_MEMBER, PARTICIPANTS_MAX))
    sums: bytes = f(Bin(16, 16 * GRID_MAX))

    def __post_init__(self) -> None:
        _check_members(self.senders, "senders", 1)
        if len(self.sums) % 16:
            raise ValueError("a sum is 2 * grid points of 8 bytes")


@dataclass(frozen=True)
class SharedClearing(Record):
    """The broker's signed result of a slot's shared clearing (domain ``p2pd/shared-clearing/1``).

    ``supply`` and ``demand`` are the aggregate curves (u64 per grid point);
    ``price`` and ``volume_wh`` what :func:`p2pd.market.sharing.clear_curves`
    gives for them (``price`` 0: nothing crosses). Sent to the participants only.
    """

    broker: str = f(_MEMBER)
    slot_start: int = f(Int(0, MAX_TIME))
    slot_len: int = f(Int(MIN_SLOT, MAX_SLOT))
    round: int = f(Int(1, MAX_ROUNDS))
    participants: tuple[str, ...] = f(ListOf(_MEMBER, PARTICIPANTS_MAX))
    grid: tuple[int, ...] = f(ListOf(Int(1, MAX_PRICE), GRID_MAX))
    supply: bytes = f(Bin(8, 8 * GRID_MAX))
    demand: bytes = f(Bin(8, 8 * GRID_MAX))
    price: int = f(Int(0, MAX_PRICE))
    volume_wh: int = f(Int(0, MAX_CURVE_WH))
    signature: bytes = f(Fixed(64))

    def __post_init__(self) -> None:
        _check_grid(self.grid)
        _check_members(self.participants, "participants", 2)
        if not len(self.supply) == len(self.demand) == 8 * len(self.grid):
            raise ValueError("curves of another length than the grid")

    def body(self) -> list[object]:
        return self.to_wire()[:-1]

    @classmethod
    def create(cls, key: SigningKey, **fields: object) -> SharedClearing:
        unsigned = cls(**fields, signature=bytes(64))  # type: ignore[arg-type]
        return replace(unsigned, signature=key.sign(SHARED_CLEARING_DOMAIN, unsigned.body()))

    def verify(self, broker_pk: bytes) -> None:
        """Raises SignatureError unless the broker with ``broker_pk`` signed it."""
        verify(broker_pk, self.signature, SHARED_CLEARING_DOMAIN, self.body())

    @property
    def result_id(self) -> bytes:
        """BLAKE2b-256 of the encoding: trade ids and the slot's summary refer to it."""
        return digest(self.encode())


@register
@dataclass(frozen=True)
class ShareResult(Message):
    TYPE: ClassVar[int] = 89
    CATEGORY: ClassVar[str] = "trade"
    result: SharedClearing = f(Nested(SharedClearing))


@register
@dataclass(frozen=True)
class FillClaim(Message):
    """A participant's own curve at the clearing price, and the order refs its trades will name."""

    TYPE: ClassVar[int] = 90
    CATEGORY: ClassVar[str] = "trade"
    slot_start: int = f(Int(0, MAX_TIME))
    round: int = f(Int(1, MAX_ROUNDS))
    sell_ref: bytes = f(Fixed(16))
    supply_wh: int = f(Int(0, MAX_CURVE_WH))
    buy_ref: bytes = f(Fixed(16))
    demand_wh: int = f(Int(0, MAX_CURVE_WH))

    def __post_init__(self) -> None:
        if self.sell_ref == self.buy_ref:
            raise ValueError("the two refs must differ")
