"""Receipt bundles for disputes: export, and offline verification.

A bundle (docs/protocol.md §12.5) is a JSON object that carries everything needed
to check receipts with public keys only:

    {"format": "p2pd-receipts/1", "community": "...",
     "credentials": ["<hex credential>", ...],
     "receipts": ["<hex receipt>", ...]}

Verification checks each credential against the trusted issuers the verifier
names (never the bundle's own say-so), each receipt's two signatures against
the seller's and buyer's credentials, and then looks for double selling: the
same order id whose receipts sum to more than ``order_wh``, or receipts that
disagree on ``order_wh`` for one order. Both are proof against the owner,
because the owner signed every one of those receipts.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from protocol import (
    AgentReceipt,
    BoundsError,
    Credential,
    CredentialError,
    DecodeError,
    Receipt,
    SignatureError,
    check_agent_receipt,
    check_credential,
)

BUNDLE_FORMAT = "p2pd-receipts/1"
MAX_BUNDLE_BYTES = 64 * 1024 * 1024


class BundleError(ValueError):
    """The bundle is not a readable receipts bundle (message says why)."""


@dataclass
class Problem:
    kind: str  # "bad_receipt" | "bad_credential" | "unknown_member" | "bad_signature" | "double_selling" | "conflict"
    message: str
    trade_ids: list[str] = field(default_factory=list)
    proof: dict[str, Any] = field(default_factory=dict)


@dataclass
class VerifyReport:
    receipts: int = 0
    valid: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "receipts": self.receipts, "valid": self.valid,
            "problems": [p.__dict__ for p in self.problems],
        }


def export_bundle(community: str, receipts: Iterable[bytes], credentials: Iterable[Credential]) -> dict[str, Any]:
    """Build a bundle from encoded receipts and the parties' credentials."""
    creds = {c.credential_id: c for c in credentials}
    return {
        "format": BUNDLE_FORMAT,
        "community": community,
        "credentials": [c.encode().hex() for c in creds.values()],
        "receipts": [r.hex() for r in receipts],
    }


def load_bundle(text: str) -> dict[str, Any]:
    if len(text) > MAX_BUNDLE_BYTES:
        raise BundleError("bundle larger than 64 MiB")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"not a {BUNDLE_FORMAT} bundle")
    for key in ("credentials", "receipts"):
        if not isinstance(data.get(key), list) or not all(isinstance(x, str) for x in data[key]):
            raise BundleError(f"{key} must be a list of hex strings")
    if not isinstance(data.get("community"), str):
        raise BundleError("community must be a string")
    return data


def verify_bundle(data: dict[str, Any], trusted_issuers: set[bytes], *, at: float | None = None) -> VerifyReport:
    """Check every receipt of a loaded bundle; never raises for bad content.

    Credentials are checked for issuer, signature and community; their
    validity window is checked at each receipt's trade time (``created_at``)
    unless ``at`` is given.
    """
    report = VerifyReport()
    community = data["community"]
    members: dict[str, list[Credential]] = defaultdict(list)
    for i, text in enumerate(data["credentials"]):
        try:
            cred = Credential.decode(bytes.fromhex(text))
            check_credential(cred, now=cred.valid_from + 1 if at is None else at,
                             community=community, trusted_issuers=trusted_issuers)
        except (ValueError, DecodeError, CredentialError) as exc:
            report.problems.append(Problem("bad_credential", f"credential #{i}: {exc}"))
            continue
        members[cred.member_id].append(cred)

    by_order: dict[tuple[str, bytes], list[Receipt]] = defaultdict(list)
    seen: dict[bytes, bytes] = {}
    agent_receipts: list[AgentReceipt] = []
    for i, text in enumerate(data["receipts"]):
        report.receipts += 1
        try:
            raw = bytes.fromhex(text)
            receipt = Receipt.decode(raw)
        except (ValueError, DecodeError) as exc:
            try:
                agent_receipts.append(AgentReceipt.decode(bytes.fromhex(text)))
            except (ValueError, DecodeError):
                report.problems.append(Problem("bad_receipt", f"receipt #{i}: {exc}"))
            continue
        t = receipt.terms
        tid = t.trade_id.hex()
        if not _signed_by_member(receipt, members, t.created_at if at is None else at, report, tid):
            continue
        if t.trade_id in seen and seen[t.trade_id] != raw:
            report.problems.append(Problem("conflict", f"two different receipts share trade id {tid}",
                                           [tid]))
            continue
        if t.trade_id in seen:
            continue
        seen[t.trade_id] = raw
        report.valid += 1
        owner = t.seller  # orders are checked per seller: sells and bids alike
        by_order[(owner, t.order_id)].append(receipt)

    _verify_agent_receipts(agent_receipts, members, at, report)
    for (seller, order_id), group in by_order.items():
        totals = {r.terms.order_wh for r in group}
        sold = sum(r.terms.wh for r in group)
        ids = [r.terms.trade_id.hex() for r in group]
        proof = {"seller": seller, "order_id": order_id.hex(), "order_wh": sorted(totals),
                 "sold_wh": sold, "receipts": [r.encode().hex() for r in group]}
        if len(totals) > 1:
            report.problems.append(Problem(
                "double_selling",
                f"{seller} signed receipts for order {order_id.hex()} stating different order sizes "
                f"{sorted(totals)}", ids, proof))
        elif sold > min(totals):
            report.problems.append(Problem(
                "double_selling",
                f"{seller} sold {sold} Wh from order {order_id.hex()} that held {min(totals)} Wh",
                ids, proof))
    return report


def _signed_by_member(receipt: Receipt, members: dict[str, list[Credential]], when: float,
                      report: VerifyReport, tid: str) -> bool:
    t = receipt.terms
    for role, name, sig in (("seller", t.seller, receipt.seller_sig), ("buyer", t.buyer, receipt.buyer_sig)):
        creds = [c for c in members.get(name, []) if c.valid_from - 300 <= when < c.valid_until + 300]
        if not creds:
            report.problems.append(Problem("unknown_member",
                                           f"trade {tid}: no valid credential for {role} {name}", [tid]))
            return False
        for cred in creds:
            try:
                t.verify(cred.sign_pk, sig)
                break
            except SignatureError:
                continue
        else:
            report.problems.append(Problem("bad_signature",
                                           f"trade {tid}: {role} signature of {name} does not verify "
                                           "(receipt altered or forged)", [tid]))
            return False
    return True


def _verify_agent_receipts(receipts: list[AgentReceipt], members: dict[str, list[Credential]],
                           at: float | None, report: VerifyReport) -> None:
    """v2 receipts (S2-S4): signatures, delegation bounds, and per-slot caps.

    An agent that signed outside its principal's delegation is flagged
    ``delegation_exceeded`` with the receipt(s) and the delegation as proof:
    the agent's signature over terms the delegation does not allow.
    """
    used: dict[tuple[bytes, str, int], list[AgentReceipt]] = defaultdict(list)
    seen: set[bytes] = set()
    for r in receipts:
        t = r.terms
        tid = t.trade_id.hex()
        when = t.created_at if at is None else at
        creds = {name: c for name, cs in members.items() for c in cs
                 if c.valid_from - 300 <= when < c.valid_until + 300}
        try:
            check_agent_receipt(r, creds)
        except BoundsError as exc:
            kind = "unknown_member" if "no credential" in str(exc) else "delegation_exceeded"
            report.problems.append(Problem(kind, f"trade {tid}: {exc}", [tid],
                                           {"receipts": [r.encode().hex()]}))
            continue
        except SignatureError as exc:
            report.problems.append(Problem("bad_signature", f"trade {tid}: {exc}", [tid]))
            continue
        if t.trade_id in seen:
            continue
        seen.add(t.trade_id)
        report.valid += 1
        for side, d in (("sell", r.seller_delegation), ("buy", r.buyer_delegation)):
            if d is not None:
                used[(d.delegation_id, side, t.slot_start)].append(r)
    for (_, side, slot), group in used.items():
        d = group[0].seller_delegation if side == "sell" else group[0].buyer_delegation
        assert d is not None
        total = sum(r.terms.wh for r in group)
        if total > d.max_wh_per_slot:
            ids = [r.terms.trade_id.hex() for r in group]
            report.problems.append(Problem(
                "delegation_exceeded",
                f"{d.agent} traded {total} Wh for {d.principal} in slot {slot}, "
                f"delegation allows {d.max_wh_per_slot}", ids,
                {"delegation": d.encode().hex(), "receipts": [r.encode().hex() for r in group]}))
