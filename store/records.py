"""Plain values the store takes and gives back.

Every record is a frozen dataclass of ints, strs and bytes. Energy is in Wh,
money in integer minor units and times in unix seconds: never floats. Signed
messages are kept as opaque ``encoded`` bytes next to the few parsed fields the
store needs for its queries; the store never decodes or verifies them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MemberRecord:
    """A community member and the credential that admits them."""

    member_id: str
    role: str
    metering_point: str
    sign_pk: bytes
    noise_pk: bytes
    credential: bytes
    valid_until: int


@dataclass(frozen=True)
class OrderRecord:
    """A signed sell or buy order for one delivery slot.

    ``side`` is ``"sell"`` or ``"buy"``; ``wh`` is the order's total energy;
    ``price`` is per kWh in minor units (the store does no arithmetic on it).
    """

    order_id: bytes
    member_id: str
    side: str
    slot_start: int
    slot_len: int
    wh: int
    price: int
    expiry: int
    encoded: bytes
    cancelled: bool = False


@dataclass(frozen=True)
class ReceiptRecord:
    """A signed trade receipt that draws ``wh`` from order ``order_id``.

    ``order_wh`` is the total energy of that order: the store keeps the sum of
    ``wh`` over all receipts of one order at or below it.
    """

    trade_id: bytes
    order_id: bytes
    seller: str
    buyer: str
    slot_start: int
    slot_len: int
    wh: int
    price: int
    order_wh: int
    encoded: bytes
    created_at: int


@dataclass(frozen=True)
class ReadingRecord:
    """One meter register reading: cumulative import/export in Wh at ``ts``."""

    meter_id: str
    ts: int
    import_wh: int
    export_wh: int
    power_w: int | None


@dataclass(frozen=True)
class StatementRecord:
    """A member's settlement statement for one slot.

    ``fields`` holds named integer totals (Wh, minor units); it is compared by
    value, so two statements with equal fields are equal.
    """

    member_id: str
    slot_start: int
    slot_len: int
    encoded: bytes
    fields: dict[str, int] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class BanRecord:
    """A ban on ``member_id`` that is active while ``now < until``."""

    member_id: str
    until: int
    level: int
    reason: str


@dataclass(frozen=True)
class PeerAddressRecord:
    """The last known network address of a member, as signed by them."""

    member_id: str
    host: str
    port: int
    seen_at: int
    encoded: bytes


@dataclass(frozen=True)
class RevocationRecord:
    """A revocation of ``member_id``'s credential, issued by ``issuer_pk``.

    ``(issuer_pk, member_id, serial)`` identifies a revocation.
    """

    issuer_pk: bytes
    member_id: str
    serial: int
    encoded: bytes


def check_receipt(rec: ReceiptRecord) -> None:
    """Raise ValueError unless ``rec.wh > 0`` and ``rec.order_wh >= 0``.

    A receipt with ``wh <= 0`` would give energy back to its order and defeat
    the per-order sum check, so no implementation may store one.
    """
    if rec.wh <= 0 or rec.order_wh < 0:
        raise ValueError(
            f"receipt {rec.trade_id.hex()}: wh must be > 0 and order_wh >= 0 "
            f"(got wh={rec.wh}, order_wh={rec.order_wh})"
        )


@dataclass(frozen=True)
class PendingTakeRecord:
    """A take we sent (or are about to send) and hold no receipt for yet.

    Its terms are fixed once, signed and stored before the take leaves the
    node, so every retry -- by the user, after a reconnect or a restart -- is
    the same take (same trade id, same bytes) and the owner's stored receipt
    answers it.
    """

    trade_id: bytes
    owner: str
    terms: bytes
    taker_sig: bytes
    created_at: int


@dataclass(frozen=True)
class ReplicaRecord:
    """Entry ``seq`` of ``member``'s receipt log, held for it, with the head after it."""

    member: str
    seq: int
    entry: bytes
    """The receipt bytes of the entry."""
    head: bytes
    """A LogHead the member signed (encoded) at ``seq`` or later, which the
    member's entries up to its seq reproduce: the head sent with the entry,
    or the head ending the page of entries it was fetched in."""


@dataclass(frozen=True)
class HeadRecord:
    """A signed head of another member's receipt log, as learnt (schema version 3).

    Kept so that a head conflicting with one seen before a restart is still
    caught as equivocation: both heads of a pair are stored.
    """

    member: str
    seq: int
    head_hash: bytes
    signature: bytes


@dataclass(frozen=True)
class FollowRecord:
    """A log this node follows, and how far it verified it (schema version 3):
    the member's entries 1..``seq``, held as replicas, reproduce ``head_hash``."""

    member: str
    seq: int
    head_hash: bytes


# Outcomes of commit_receipts, one per receipt in the batch.


@dataclass(frozen=True)
class Committed:
    """The receipt is now stored (the transaction holding it has committed).

    ``seq`` is its place in this node's receipt log (1, 2, ...): assigned in
    the same transaction, so a receipt and its log position are durable
    together and never change (docs/protocol.md section 15, receipt logs).
    """

    receipt: ReceiptRecord
    seq: int = 0


@dataclass(frozen=True)
class Duplicate:
    """A receipt with this trade_id was stored already; ``receipt`` is the stored
    one, which may differ from the one passed in. Retrying a commit is safe."""

    receipt: ReceiptRecord


@dataclass(frozen=True)
class Insufficient:
    """Storing the receipt would take its order past ``order_wh``; nothing was
    stored for it. ``remaining_wh`` is what the order had left (never < 0)."""

    remaining_wh: int


Outcome = Committed | Duplicate | Insufficient
