"""docs/privacy.md, checked cell by cell: observers in simulated communities learn no more.

Each check id in the tables of docs/privacy.md (``[broker.S3]``...) has one
entry in :data:`CHECKS`, and each entry one id. A community of eight
households trades a whole simulated day in each scenario (p2pd/sim, virtual
time), with an observer in every role:

* a member (S1), a representative (S2, S3) and the broker (S3, S4) record
  every message their node handles;
* every node is a replica holder, and its store is kept;
* the issuer's pseudonym service records every request it grants;
* an eavesdropper records every byte any node writes to its streams (each
  byte on the wire is written by one of the nodes), handshakes included.

Each check asserts that nothing recorded or stored holds more than its cell
says. One run per scenario serves every cell of its column.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from p2pd_test_helpers import MIN_NEEDLE, Recording

from p2pd.market.receipt_log import open_entry, receipt_kind, signers
from p2pd.market.sharing import at_price, curve, in_the_money
from p2pd.net.node import Node
from p2pd.net.peer import PeerConnection
from p2pd.sim.community import SIM_START, SimCommunity, SimConfig
from p2pd.sim.results import Look
from p2pd.sim.run import simulate
from p2pd.sim.scenarios import Scenario, attach_replication
from protocol import (
    RECEIPT_V1,
    AgentAccepted,
    AgentOrderGossip,
    AgentReceipt,
    AgentTake,
    BrokerSubmit,
    Credential,
    EquivocationGossip,
    FillClaim,
    GossipBatch,
    HeadGossip,
    LogEntries,
    LogRequest,
    MatchFinal,
    MatchPropose,
    Message,
    MeterReportMsg,
    OrderGossip,
    OrdersSnapshot,
    OwnerProof,
    Pseudonym,
    PseudonymIssuer,
    Receipt,
    ReceiptReplica,
    SealedEntry,
    Share,
    ShareResult,
    ShareSum,
    Take,
    TradeAccepted,
    canonical,
    digest,
    encode_message,
    unpack_vector,
)

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "privacy.md"
TAG = re.compile(r"`\[([a-z]+\.S[1-4])\]`")
UNIFORM = 2**32
"""A share or a sum of shares is uniform on [0, 2^64): below 2^32 with probability 2^-32."""
MEMBER = "m0000"
"""The member observer of S1."""


@dataclass
class Observed:
    """A run with observers: what each watched node handled, and the community at the end."""

    com: SimCommunity
    seen: dict[str, list[tuple[str, Message]]] = field(default_factory=dict)  # member -> (sender, message)
    tape: bytearray = field(default_factory=bytearray)
    """Every byte written to a stream by any node."""
    plain: list[bytes] = field(default_factory=list)
    """Encodings of messages the nodes handled (a sample), to be looked for on the wire."""
    grants: list[tuple[str, int, list[bytes], list[bytes]]] = field(default_factory=list)
    """What the issuer saw: (member, epoch, blinded requests, blind signatures)."""
    members: dict[str, Credential] = field(default_factory=dict)
    shared_slots: dict[str, dict[int, Any]] = field(default_factory=dict)
    """S3: each representative's shared clearing state per slot, kept as the run goes (it prunes)."""

    @property
    def scenario(self) -> Scenario:
        assert isinstance(self.com.scenario, Scenario)
        return self.com.scenario


def watch(node: Node, into: list[tuple[str, Message]] | None, plain: list[bytes], live: list[bool]) -> None:
    """Record every message ``node`` handles while ``live[0]``: all of them into ``into``, a
    sample of their encodings into ``plain``."""
    for cls, handler in list(node.handlers.items()):
        async def tap(conn: PeerConnection, msg: Message, handler: Any = handler) -> None:
            if live[0]:
                if into is not None:
                    into.append((conn.member_id, msg))
                if len(plain) < 20_000 and not live[1] % 5:
                    plain.append(encode_message(msg))
                live[1] += 1
            await handler(conn, msg)

        node.handlers[cls] = tap


async def observe(scenario: str, watched: tuple[str, ...]) -> Observed:
    cfg = SimConfig(nodes=8, scenario=scenario, hours=24, start=SIM_START, seed=3, memory=True, store="memory",
                    virtual=True)
    box: dict[str, Observed] = {}
    live: list[Any] = [True, 0]
    tape = bytearray()
    grants: list[tuple[str, int, list[bytes], list[bytes]]] = []

    def progress(look: Look) -> None:
        com: SimCommunity = look.community
        if "run" not in box:
            if scenario == "S1":  # S1 runs log receipts only when asked: as every daemon does
                for sim in com.nodes:
                    attach_replication(com, sim)
            box["run"] = run = Observed(com, tape=tape, grants=grants)
            for sim in com.nodes + com.extra:
                run.members[sim.member_id] = sim.identity.credential
                watch(sim.node, run.seen.setdefault(sim.member_id, []) if sim.member_id in watched else None,
                      run.plain, live)
        if isinstance(com.scenario, Scenario):
            for rep, runner in com.scenario.reps.items():
                if runner.shared is not None:
                    box["run"].shared_slots.setdefault(rep, {}).update(runner.shared.slots)
        if look.fraction >= 1.0:
            live[0] = False  # the run is over: what teardown sends is not part of it

    new_connection, grant = Node.new_connection, PseudonymIssuer.grant

    def recording(self: Node, stream: trio.abc.Stream, **kw: Any) -> Any:
        return new_connection(self, Recording(stream, tape), **kw)

    def granting(self: PseudonymIssuer, credential: Credential, epoch: int, blinded: Sequence[bytes],
                 random: Callable[[int], bytes]) -> list[bytes]:
        sigs = grant(self, credential, epoch, blinded, random)
        grants.append((credential.member_id, epoch, list(blinded), list(sigs)))
        return sigs

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Node, "new_connection", recording)
        mp.setattr(PseudonymIssuer, "grant", granting)
        report = await simulate(cfg, progress=progress)
    assert report["trades"] > 0
    return box["run"]


# --- the checks --------------------------------------------------------------------------------------


def check_representative(run: Observed, rep: str, scenario: str) -> None:
    runner = run.scenario.reps[rep]
    clients = set(runner.rep.clients)
    others = {c for m, r in run.scenario.reps.items() if m != rep for c in r.rep.clients}
    node = next(s.node for s in run.com.nodes + run.com.extra if s.member_id == rep)
    assert run.seen[rep], "the observer saw nothing"
    for sender, msg in run.seen[rep]:
        if isinstance(msg, MeterReportMsg):  # only its own clients' reports, from themselves
            assert msg.report.principal in clients and msg.report.agent == rep and sender == msg.report.principal
        elif isinstance(msg, ReceiptReplica):  # someone else's entry: sealed, not to it
            assert open_entry(msg.entry, node.identity.keys.noise_private) is None
        elif isinstance(msg, AgentAccepted | MatchFinal):  # a receipt: only of its own trades
            t = msg.receipt.terms
            assert rep in (t.seller_agent, t.buyer_agent)
        elif isinstance(msg, AgentTake):
            assert msg.terms.seller_agent == rep
        if scenario == "S3":
            # No offers, takes or reports of the other representatives' clients: only shares and sums.
            assert not isinstance(msg, AgentOrderGossip | AgentTake), msg
            if isinstance(msg, Share):
                assert sender in run.scenario.reps and all(v >= UNIFORM for v in unpack_vector(msg.share))
            if isinstance(msg, MatchPropose | MatchFinal):
                t = msg.terms if isinstance(msg, MatchPropose) else msg.receipt.terms
                assert t.seller == t.seller_agent and t.buyer == t.buyer_agent  # representatives, no client
                assert not {t.seller, t.buyer} & others
    if scenario == "S3":
        assert any(isinstance(m, Share) for _, m in run.seen[rep]) and any(
            isinstance(m, ShareResult) for _, m in run.seen[rep])


def check_broker(run: Observed, scenario: str) -> None:
    broker = run.scenario.broker
    assert broker is not None and run.scenario.broker_node is not None
    seen = run.seen[broker.broker.me]
    assert seen, "the observer saw nothing"
    for _, msg in seen:
        assert not isinstance(msg, MeterReportMsg), msg
    if scenario == "S4":
        assert any(isinstance(m, BrokerSubmit) for _, m in seen)  # every order: the cell says so
        return
    # S3: no order, no take, no share: sums of shares and each representative's point at the price.
    forbidden = (BrokerSubmit, AgentOrderGossip, AgentTake, Share)
    assert not [m for _, m in seen if isinstance(m, forbidden)]
    sums = [m for _, m in seen if isinstance(m, ShareSum)]
    assert sums and all(v >= UNIFORM for m in sums for v in unpack_vector(m.sums))
    claims = [(sender, m) for sender, m in seen if isinstance(m, FillClaim)]
    assert claims
    k = 2
    for sender, claim in claims:
        shared = run.scenario.reps[sender].shared
        assert shared is not None
        k = shared.min_households
        s = run.shared_slots[sender][claim.slot_start]
        assert s.result is not None
        n = len(s.grid)
        own = curve(s.steps, n)
        assert (claim.supply_wh, claim.demand_wh) == at_price(s.grid, own[:n], own[n:], s.result.price)
        for side, wh in (("sell", claim.supply_wh), ("buy", claim.demand_wh)):
            if wh:  # never one household: at least min_households clients behind the point
                assert len(in_the_money(s.steps, s.grid, side, s.result.price)) >= k
    # What it stores: the receipts it brokered, between representatives only.
    for rec in run.scenario.broker_node.repo.receipts():
        assert rec.seller in run.scenario.reps and rec.buyer in run.scenario.reps


def check_holders(run: Observed) -> None:
    """Every node as a replica holder: each entry held for others is a digest and a box it cannot open."""
    truth = {digest(r.encoded): r for s in run.com.nodes + run.com.extra for r in s.repo.receipts()}
    held = 0
    for member, rep in run.scenario.replication.items():
        key = rep.node.identity.keys.noise_private
        for owner in {h for h in rep.heads.heads}:
            for rec in rep.repo.replicas(owner):
                entry = SealedEntry.decode(rec.entry)
                assert open_entry(entry, key) is None or member in signers(truth[entry.digest].encoded)
                receipt = truth.get(entry.digest)
                assert receipt is not None  # the digest is one of a real receipt, the chain ran over it
                names = {receipt.seller, receipt.buyer} | set(signers(receipt.encoded))
                for needle in (receipt.encoded, *(n.encode() for n in names - {owner})):
                    assert needle not in rec.entry + rec.head, (member, owner, needle)
                held += 1
    assert held > 0


def orders_in(msg: Message) -> list[OrderGossip]:
    if isinstance(msg, OrderGossip):
        return [msg]
    if isinstance(msg, GossipBatch | OrdersSnapshot):
        return list(msg.orders)
    return []


def check_member(run: Observed, me: str) -> None:
    """A member (S1): orders name pseudonyms; member ids only where the cell says."""
    seen = run.seen[me]
    assert seen, "the observer saw nothing"
    key = run.com.by_id[me].node.identity.keys.noise_private
    ids = set(run.members) - {me}
    orders = 0
    for sender, msg in seen:
        for g in orders_in(msg):  # every live order: under a pseudonym, never a member id
            assert isinstance(g.credential, Pseudonym) and g.order.member_id not in run.members, g
            orders += 1
        allowed: set[str] = set()
        if isinstance(msg, HeadGossip):  # whose log grows: every node sees each node's count
            allowed = {msg.head.member}
        elif isinstance(msg, EquivocationGossip):
            allowed = {msg.proof.head_a.member}
        elif isinstance(msg, ReceiptReplica):  # someone else's entry: sealed, not to us
            assert open_entry(msg.entry, key) is None
            allowed = {msg.head.member}
        elif isinstance(msg, LogEntries | LogRequest):  # a log we follow: our own receipts in it only
            allowed = {msg.member}
            for e in msg.entries if isinstance(msg, LogEntries) else ():
                receipt = open_entry(e.entry, key)
                if receipt is not None:
                    assert me in signers(receipt)
                    allowed |= signers(receipt)
        elif isinstance(msg, Take | TradeAccepted):  # our own trades, with the counterparty's id
            t = msg.terms if isinstance(msg, Take) else msg.receipt.terms
            assert me in (t.seller, t.buyer)
            allowed = {t.seller, t.buyer}
        elif isinstance(msg, OwnerProof):  # an owner proves its pseudonym to us, its taker
            allowed = {sender}
        named = {m for m in ids if m.encode() in encode_message(msg)}
        assert named <= allowed, (type(msg).__name__, named - allowed)
    assert orders > 0


def check_issuer(run: Observed) -> None:
    """The issuer: which member asked for how many pseudonyms per epoch, never which pseudonym is whose."""
    assert run.grants, "no pseudonym was issued"
    shown: set[bytes] = set()
    for seen in run.seen.values():
        for _, msg in seen:
            for g in orders_in(msg):
                if isinstance(g.credential, Pseudonym):
                    shown |= {g.credential.token, g.credential.sign_pk, g.credential.box_pk, g.order.order_id}
    assert shown
    for member, _epoch, blinded, sigs in run.grants:
        assert member in run.members
        # What it signed and returned is blinded: none of it is a pseudonym, a key or an
        # order id the book shows, nor contains one.
        for value in blinded + sigs:
            assert value not in shown and not any(x in value for x in shown)


def receipt_needles(encoded: bytes) -> dict[str, bytes]:
    """Where a leak would put a trade's Wh and price: msgpack runs and labelled text
    (single numbers are too short to look for in random bytes)."""
    t = Receipt.decode(encoded).terms if receipt_kind(encoded) == RECEIPT_V1 else AgentReceipt.decode(encoded).terms
    p = canonical.pack
    out = {
        "slot, wh, price": p(t.slot_start) + p(t.slot_len) + p(t.wh) + p(t.price),
        "wh, price": p(t.wh) + p(t.price),
        "wh= text": f"wh={t.wh}".encode(),
        "wh json": f'"wh": {t.wh}'.encode(),
        "Wh text": f"{t.wh} Wh".encode(),
        "trade id": t.trade_id,
    }
    if t.price >= 10_000:
        out["price text"] = str(t.price).encode()
    return {label: needle for label, needle in out.items() if len(needle) >= MIN_NEEDLE}


def check_wire(run: Observed) -> None:
    """The eavesdropper's capture of the day: no member id, metering point, Wh or price in the clear."""
    tape = bytes(run.tape)
    assert len(tape) > 100_000
    found: list[str] = []
    for member, cred in run.members.items():
        # A member id as every message carries it (a msgpack str: its header
        # byte and the id), and the bare id when it is long enough to look
        # for: a 4-byte id ("rep0") turns up in 5.6 MB of ciphertext about
        # once in 800 runs by chance, its 5-byte packed form once in 200,000.
        needles = [("member id", canonical.pack(member)), ("metering point", cred.metering_point.encode())]
        if len(member) >= MIN_NEEDLE:
            needles.append(("member id", member.encode()))
        for label, needle in needles:
            if needle in tape:
                found.append(f"{label} of {member}")
    receipts = [r.encoded for r in run.com.receipts()]
    assert len(receipts) >= 10, "too few trades for the capture to mean anything"
    plain = b"".join(run.plain) + b"".join(receipts)
    # The positive control for the member ids: the messages the nodes handled carry them packed.
    assert all(canonical.pack(member) in plain for member in run.members)
    for encoded in receipts:
        for label, needle in receipt_needles(encoded).items():
            if label in ("slot, wh, price", "wh, price", "trade id"):
                assert needle in plain  # the positive control: the same search finds the plaintext
            if needle in tape:
                found.append(f"{label} of a trade: {needle!r}")
    reports = [m.report for seen in run.seen.values() for _, m in seen if isinstance(m, MeterReportMsg)]
    for r in reports:  # a household's meter, as its representative gets it
        p = canonical.pack
        if p(r.slot_start) + p(r.slot_len) + p(r.net_wh) in tape:
            found.append(f"meter report of {r.principal}")
    # Nothing any node handled travels in the clear.
    assert len(run.plain) > 1000
    found += [f"a message of type {m[2]}" for m in run.plain if len(m) >= 24 and m in tape]
    assert not found, found[:20]


Check = Callable[[], Awaitable[None]]


# One run per scenario serves every cell of its column (each run costs seconds of CPU).
_RUNS: dict[str, Observed] = {}


async def run_of(scenario: str) -> Observed:
    if scenario not in _RUNS:
        watched = {"S1": (MEMBER,), "S2": ("rep0",), "S3": ("rep0", "broker"), "S4": ("broker",)}[scenario]
        _RUNS[scenario] = await observe(scenario, watched)
    return _RUNS[scenario]


def cell(check: Callable[[Observed], None], scenario: str) -> Check:
    async def run() -> None:
        check(await run_of(scenario))

    return run


CHECKS: dict[str, Check] = {
    "member.S1": cell(lambda r: check_member(r, MEMBER), "S1"),
    "issuer.S1": cell(check_issuer, "S1"),
    "rep.S2": cell(lambda r: check_representative(r, "rep0", "S2"), "S2"),
    "rep.S3": cell(lambda r: check_representative(r, "rep0", "S3"), "S3"),
    "broker.S3": cell(lambda r: check_broker(r, "S3"), "S3"),
    "broker.S4": cell(lambda r: check_broker(r, "S4"), "S4"),
    **{f"holder.{s}": cell(check_holders, s) for s in ("S1", "S2", "S3", "S4")},
    **{f"wire.{s}": cell(check_wire, s) for s in ("S1", "S2", "S3", "S4")},
}


def test_every_check_id_of_the_table_has_its_check_and_back() -> None:
    text = DOC.read_text(encoding="utf-8")
    table = [line for line in text.splitlines() if line.startswith("| ")]
    tags = [t for line in table for t in TAG.findall(line)]
    assert len(tags) == len(set(tags))
    assert set(tags) == set(CHECKS)


@pytest.mark.parametrize("cell_id", sorted(CHECKS))
async def test_the_observer_learns_no_more_than_the_cell_says(cell_id: str, autojump_clock: Any) -> None:
    await CHECKS[cell_id]()
