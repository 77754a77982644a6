"""Settlement of one trading slot: delivered energy, money, signed statements.

Pure functions: no I/O, no clock (``settled_at`` is passed in). Both parties
of a trade run :func:`settle_slot` on the same inputs (the trade terms and
every party's :class:`SlotEnergy`) and get identical trade lines. The rules
are documented in ``docs/settlement.md``; in short:

Units. Energy: integer Wh. Money: integer units of 1/1,000,000 of the
currency (``PRICE_SCALE`` units = 1 GBP, so 1 unit = 1/10,000 penny).
Prices: money units per kWh, so 0.139 GBP/kWh = 139_000 and 0.047 GBP/kWh =
47_000, both exact.

Delivery rule. A seller's slot export is shared among its sales, a buyer's
slot import among its purchases, each pro rata to contracted energy by
:func:`allocate` (largest remainder, ties by trade id) and only when the
meter shows less than was contracted. ``delivered = min(contracted,
seller share, buyer share)``.

Rounding rule. ``amount = delivered_wh * price // 1000`` once per trade (all
terms non-negative, so floor rounds towards the buyer by less than one unit);
that single integer is both the buyer's cost and the seller's revenue.
Supplier amounts use the same formula on each member's totals.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

from protocol import (
    MAX_PRICE,
    MAX_WH,
    SIGNATURE_LEN,
    DecodeError,
    SigningKey,
    pack,
    signed_bytes,
    unpack,
    verify,
)

STATEMENT_DOMAIN = "p2pd/statement/1"
PRICE_SCALE = 1_000_000
"""Money units per unit of currency."""
WH_PER_KWH = 1000
DEFAULT_IMPORT_PRICE = 139_000  # 0.139 GBP/kWh
DEFAULT_EXPORT_PRICE = 47_000  # 0.047 GBP/kWh

# A trade's energy and price, and the tariff's prices, are checked against the
# wire's bounds (protocol.MAX_WH, protocol.MAX_PRICE): trades come from
# receipts, and [tariffs] is validated with the same bound.
MAX_SLOT_ENERGY_WH = 10**9
"""Bound on a member's metered import or export in one slot (1 GWh).

Not the wire's MAX_WH: this is what the member's meter registers moved, not
what one order or trade may carry, and a member may import or export more in
a slot than it trades (the rest is with the supplier). The bound only keeps
every product in int64: ``MAX_SLOT_ENERGY_WH * MAX_PRICE`` is 10^17."""
MAX_ID = 64


class SettlementError(ValueError):
    """Raised by :func:`settle_slot` and :func:`slot_energy` for unusable input.

    Examples: a trade for another slot, duplicate trade ids, a trade party
    with no slot energy ("readings not in yet"), values out of range.
    """


@dataclass(frozen=True)
class Tariff:
    """The supplier's prices (money units per kWh) and the currency code."""

    import_price: int = DEFAULT_IMPORT_PRICE
    export_price: int = DEFAULT_EXPORT_PRICE
    currency: str = "GBP"


@dataclass(frozen=True)
class Trade:
    """The terms of one matched trade in the slot being settled."""

    trade_id: bytes
    seller: bytes
    """Seller's member id (its Ed25519 public key)."""
    buyer: bytes
    energy_wh: int
    """Contracted energy."""
    price: int
    """Money units per kWh."""


@dataclass(frozen=True)
class SlotEnergy:
    """A member's metered grid import and export during the slot, Wh."""

    import_wh: int
    export_wh: int


@dataclass(frozen=True)
class TradeLine:
    """The settled outcome of one trade; the same in both parties' statements."""

    trade_id: bytes
    seller: bytes
    buyer: bytes
    contracted_wh: int
    delivered_wh: int
    price: int
    amount: int
    """Money the buyer pays the seller: ``delivered_wh * price // 1000``."""

    @property
    def shortfall_wh(self) -> int:
        return self.contracted_wh - self.delivered_wh

    def fields(self) -> list[Any]:
        return [getattr(self, f.name) for f in fields(self)]


@dataclass(frozen=True)
class Statement:
    """One member's account for one slot. Field order is the wire order.

    Money fields are money units; ``bill`` and ``bill_without_p2p`` are net
    (import costs minus export revenue) and may be negative.
    """

    member: bytes
    slot_start: int
    slot_seconds: int
    currency: str
    import_price: int
    export_price: int
    import_wh: int
    export_wh: int
    p2p_bought_wh: int
    p2p_sold_wh: int
    p2p_cost: int
    p2p_revenue: int
    supplier_import_wh: int
    supplier_export_wh: int
    supplier_import_cost: int
    supplier_export_revenue: int
    bill: int
    bill_without_p2p: int
    saving: int
    lines: tuple[TradeLine, ...]
    settled_at: int

    def fields(self) -> list[Any]:
        """The canonical field list that is encoded and signed."""
        out = [getattr(self, f.name) for f in fields(self)]
        out[19] = [line.fields() for line in self.lines]
        return out

    def encode(self) -> bytes:
        """Canonical bytes: ``pack([STATEMENT_DOMAIN, *fields()])``, exactly what is signed."""
        return signed_bytes(STATEMENT_DOMAIN, self.fields())

    @classmethod
    def decode(cls, data: bytes) -> Statement:
        """Parse and check :meth:`encode` output. Raises :class:`DecodeError`."""
        items = unpack(data)
        if len(items) != 22 or items[0] != STATEMENT_DOMAIN:
            raise DecodeError("not a p2pd/statement/1 array")
        f = items[1:]
        kinds = "bii" + "s" + "i" * 15 + "l" + "i"
        for value, kind in zip(f, kinds, strict=False):
            _expect(value, kind)
        if not isinstance(f[19], list) or len(f[19]) > 4096:
            raise DecodeError("bad trade lines")
        lines = []
        for raw in f[19]:
            if not isinstance(raw, list) or len(raw) != 7:
                raise DecodeError("bad trade line")
            for value, kind in zip(raw, "bbbiiii", strict=False):
                _expect(value, kind)
            lines.append(TradeLine(*raw))
        values = [*f[:19], tuple(lines), f[20]]  # wire order is field order
        st = cls(**{fl.name: v for fl, v in zip(fields(cls), values, strict=True)})
        problem = _inconsistency(st)
        if problem:
            raise DecodeError(f"inconsistent statement: {problem}")
        return st


def _expect(value: Any, kind: str) -> None:
    ok = {
        "b": isinstance(value, bytes) and 0 < len(value) <= MAX_ID,
        "i": isinstance(value, int) and not isinstance(value, bool),
        "s": isinstance(value, str) and 0 < len(value) <= 16,
        "l": isinstance(value, list),
    }[kind]
    if not ok:
        raise DecodeError(f"field has wrong type: {type(value).__name__}")


def _inconsistency(st: Statement) -> str | None:
    """Re-derive a statement's totals from its inputs; None if they agree."""
    if min(st.slot_seconds, st.import_price, st.export_price, st.import_wh, st.export_wh) < 0:
        return "negative input"
    if not all(0 <= ln.delivered_wh <= ln.contracted_wh for ln in st.lines):
        return "delivered outside [0, contracted]"
    if any(st.member not in (ln.buyer, ln.seller) or ln.buyer == ln.seller for ln in st.lines):
        return "line of another member"
    ids = [ln.trade_id for ln in st.lines]
    if ids != sorted(set(ids)):
        return "lines not in trade id order"
    if any(ln.amount != amount(ln.delivered_wh, ln.price) for ln in st.lines):
        return "line amount"
    expected = _account(st.member, SlotEnergy(st.import_wh, st.export_wh), st.lines,
                        Tariff(st.import_price, st.export_price, st.currency))
    for name, value in expected.items():
        if getattr(st, name) != value:
            return name
    return None


@dataclass(frozen=True)
class SignedStatement:
    """A statement with the member node's Ed25519 signature over ``statement.encode()``."""

    statement: Statement
    signature: bytes

    def encode(self) -> bytes:
        """Canonical ``[statement bytes, signature]`` for storage or sending."""
        return pack([self.statement.encode(), self.signature])

    @classmethod
    def decode(cls, data: bytes) -> SignedStatement:
        """Raises :class:`DecodeError`. Does not verify the signature."""
        items = unpack(data)
        if len(items) != 2 or not all(isinstance(x, bytes) for x in items):
            raise DecodeError("not a signed statement")
        if len(items[1]) != SIGNATURE_LEN:
            raise DecodeError("bad signature length")
        return cls(Statement.decode(items[0]), items[1])


def sign_statement(key: SigningKey, statement: Statement) -> SignedStatement:
    """Sign with the member's own key. Raises ValueError if the key is not ``statement.member``'s."""
    if key.public != statement.member:
        raise ValueError("a statement is signed by the member it belongs to")
    return SignedStatement(statement, key.sign(STATEMENT_DOMAIN, statement.fields()))


def verify_statement(signed: SignedStatement) -> None:
    """Check the signature by ``statement.member``. Raises :class:`protocol.errors.SignatureError`."""
    st = signed.statement
    verify(st.member, signed.signature, STATEMENT_DOMAIN, st.fields())


# --- the rules -------------------------------------------------------------


def amount(wh: int, price: int) -> int:
    """Money for ``wh`` at ``price`` per kWh: ``wh * price // 1000`` (floor)."""
    return wh * price // WH_PER_KWH


def allocate(total: int, claims: Sequence[tuple[bytes, int]]) -> dict[bytes, int]:
    """Share ``total`` Wh among ``claims`` of (trade id, contracted Wh).

    If ``total`` covers every claim, each gets its claim. Otherwise each gets
    ``total * claim // sum`` and the Wh left over go one each to the claims
    with the largest remainders ``total * claim % sum``, ties to the smaller
    trade id (bytewise). No claim gets more than it asked; shares sum to ``total``.
    """
    whole = sum(c for _, c in claims)
    if total >= whole:
        return dict(claims)
    shares = {k: total * c // whole for k, c in claims}
    left = total - sum(shares.values())
    by_remainder = sorted(claims, key=lambda kc: (-(total * kc[1] % whole), kc[0]))
    for k, _ in by_remainder[:left]:
        shares[k] += 1
    return shares


def deliveries(trades: Sequence[Trade], energy: Mapping[bytes, SlotEnergy]) -> list[TradeLine]:
    """Apply the delivery rule; returns lines in trade id order."""
    ordered = sorted(trades, key=lambda t: t.trade_id)
    seller_share: dict[bytes, int] = {}
    buyer_share: dict[bytes, int] = {}
    for member, e in energy.items():
        sales = [(t.trade_id, t.energy_wh) for t in ordered if t.seller == member]
        buys = [(t.trade_id, t.energy_wh) for t in ordered if t.buyer == member]
        seller_share.update(allocate(e.export_wh, sales))
        buyer_share.update(allocate(e.import_wh, buys))
    lines = []
    for t in ordered:
        wh = min(t.energy_wh, seller_share[t.trade_id], buyer_share[t.trade_id])
        lines.append(TradeLine(t.trade_id, t.seller, t.buyer, t.energy_wh, wh, t.price, amount(wh, t.price)))
    return lines


def _account(member: bytes, e: SlotEnergy, lines: Iterable[TradeLine], tariff: Tariff) -> dict[str, int]:
    lines = list(lines)
    bought = sum(ln.delivered_wh for ln in lines if ln.buyer == member)
    sold = sum(ln.delivered_wh for ln in lines if ln.seller == member)
    cost = sum(ln.amount for ln in lines if ln.buyer == member)
    revenue = sum(ln.amount for ln in lines if ln.seller == member)
    sup_imp, sup_exp = e.import_wh - bought, e.export_wh - sold
    imp_cost, exp_rev = amount(sup_imp, tariff.import_price), amount(sup_exp, tariff.export_price)
    bill = imp_cost - exp_rev + cost - revenue
    without = amount(e.import_wh, tariff.import_price) - amount(e.export_wh, tariff.export_price)
    return {
        "p2p_bought_wh": bought, "p2p_sold_wh": sold, "p2p_cost": cost, "p2p_revenue": revenue,
        "supplier_import_wh": sup_imp, "supplier_export_wh": sup_exp,
        "supplier_import_cost": imp_cost, "supplier_export_revenue": exp_rev,
        "bill": bill, "bill_without_p2p": without, "saving": without - bill,
    }


@dataclass(frozen=True)
class SlotSettlement:
    lines: tuple[TradeLine, ...]
    """Every trade's outcome, in trade id order."""
    statements: dict[bytes, Statement]
    """One per member in the energy mapping."""


def settle_slot(
    slot_start: int,
    slot_seconds: int,
    trades: Sequence[Trade],
    energy: Mapping[bytes, SlotEnergy],
    tariff: Tariff = Tariff(),
    *,
    settled_at: int,
) -> SlotSettlement:
    """Settle every trade of one slot and build each member's statement.

    ``trades`` are the slot's trades; ``energy`` maps every member to be
    settled (at least every trade party) to its metered slot energy.
    Raises :class:`SettlementError` for invalid or incomplete input.
    """
    _validate(slot_start, slot_seconds, trades, energy, tariff)
    lines = deliveries(trades, energy)
    statements = {}
    for member in sorted(energy):
        e = energy[member]
        own = tuple(ln for ln in lines if member in (ln.buyer, ln.seller))
        acct = _account(member, e, own, tariff)
        statements[member] = Statement(
            member=member, slot_start=slot_start, slot_seconds=slot_seconds,
            currency=tariff.currency, import_price=tariff.import_price,
            export_price=tariff.export_price, import_wh=e.import_wh, export_wh=e.export_wh,
            lines=own, settled_at=settled_at, **acct,
        )
    return SlotSettlement(tuple(lines), statements)


def _validate(slot_start: int, slot_seconds: int, trades: Sequence[Trade],
              energy: Mapping[bytes, SlotEnergy], tariff: Tariff) -> None:
    if slot_start < 0 or slot_seconds <= 0:
        raise SettlementError("bad slot")
    if not (0 <= tariff.import_price <= MAX_PRICE and 0 <= tariff.export_price <= MAX_PRICE):
        raise SettlementError("tariff out of range")
    if not 0 < len(tariff.currency) <= 16:
        raise SettlementError("bad currency code")
    ids = set()
    for t in trades:
        if t.trade_id in ids:
            raise SettlementError(f"duplicate trade id {t.trade_id.hex()}")
        ids.add(t.trade_id)
        if not all(0 < len(x) <= MAX_ID for x in (t.trade_id, t.seller, t.buyer)):
            raise SettlementError("bad id length")
        if t.seller == t.buyer:
            raise SettlementError("a member cannot trade with itself")
        if not (0 < t.energy_wh <= MAX_WH and 0 <= t.price <= MAX_PRICE):
            raise SettlementError(f"trade {t.trade_id.hex()} out of range")
        for party in (t.seller, t.buyer):
            if party not in energy:
                raise SettlementError(f"no slot energy for {party.hex()}: readings not in")
    for member, e in energy.items():
        if not 0 < len(member) <= MAX_ID:
            raise SettlementError("bad member id")
        if not (0 <= e.import_wh <= MAX_SLOT_ENERGY_WH and 0 <= e.export_wh <= MAX_SLOT_ENERGY_WH):
            raise SettlementError(f"slot energy of {member.hex()} out of range")


# --- slot energy from cumulative readings ------------------------------------


class CumulativeReading(Protocol):
    @property
    def ts(self) -> int: ...
    @property
    def import_wh(self) -> int: ...
    @property
    def export_wh(self) -> int: ...


def register_at(readings: Sequence[CumulativeReading], t: int) -> tuple[int, int]:
    """(import, export) register values at time ``t``, from readings sorted by ts.

    A reading at exactly ``t`` is used as is; otherwise the registers are
    interpolated linearly between the last reading before ``t`` and the
    first after it, rounded down. Raises :class:`SettlementError` when no
    readings bracket ``t``.
    """
    i = bisect.bisect_left(readings, t, key=lambda r: r.ts)  # first with ts >= t
    if i == len(readings) or (readings[i].ts != t and i == 0):
        raise SettlementError(f"no readings on both sides of {t}")
    after = readings[i]
    before = after if after.ts == t else readings[i - 1]
    if after.ts == before.ts:
        return before.import_wh, before.export_wh
    span, gone = after.ts - before.ts, t - before.ts
    return (
        before.import_wh + (after.import_wh - before.import_wh) * gone // span,
        before.export_wh + (after.export_wh - before.export_wh) * gone // span,
    )


def slot_energy(readings: Sequence[CumulativeReading], start: int, end: int) -> SlotEnergy:
    """A member's import and export in ``[start, end)`` by :func:`register_at`.

    Raises :class:`SettlementError` if the readings do not cover both ends
    or the registers decrease.
    """
    i0, e0 = register_at(readings, start)
    i1, e1 = register_at(readings, end)
    if i1 < i0 or e1 < e0:
        raise SettlementError("cumulative registers decreased within the slot")
    return SlotEnergy(i1 - i0, e1 - e0)
