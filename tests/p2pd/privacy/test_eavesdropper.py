"""An eavesdropper's capture of a whole simulated day shows no member, meter, Wh or price.

Issue 16, goal 4: a small community trades a day over loopback TCP (p2pd/sim,
wall-clock at a high scale) while every byte each node writes to a socket is
recorded (``Node.new_connection`` wraps the stream: every byte on the wire is
written by one of the nodes). The capture is then searched for every member
id and metering point, and for the Wh and prices of the day's trades, as
msgpack encodings and as text. What stays visible is in docs/privacy.md:
frame sizes, timing, who connects to whom by address, and the first handshake
message (an ephemeral key).

Short needles would match random ciphertext by chance (any 3-byte string
appears about once in 16 MB), so numbers are searched where a leak would put
them: msgpack runs as they sit in trade terms and orders
(``slot_start, slot_len, wh, price``; ``wh, price``), prices as decimal text
(5 digits or more), and Wh as text next to a label (``wh=1500``,
``"wh": 1500``, ``1500 Wh``). A positive control runs the same search over the
plaintext receipts and must find every trade there.
"""

from __future__ import annotations

from typing import Any

import trio
from p2pd_test_helpers import MIN_NEEDLE, Recording

from p2pd.net.node import Node
from p2pd.sim.build import open_community
from p2pd.sim.community import SIM_START, SimConfig
from protocol import Receipt, canonical

NODES = 4


def needles(receipt: Receipt) -> dict[str, bytes]:
    t = receipt.terms
    p = canonical.pack
    out = {
        "terms run": p(t.slot_start) + p(t.slot_len) + p(t.wh) + p(t.price),
        "wh, price": p(t.wh) + p(t.price),
        "order run": p(t.slot_start) + p(t.slot_len) + p(t.order_wh) + p(t.price),
        "price text": str(t.price).encode(),
        "wh= text": f"wh={t.wh}".encode(),
        "wh json": f'"wh": {t.wh}'.encode(),
        "Wh text": f"{t.wh} Wh".encode(),
    }
    return {label: needle for label, needle in out.items() if len(needle) >= MIN_NEEDLE}


async def test_a_days_capture_holds_no_member_meter_wh_or_price(monkeypatch: Any) -> None:
    tape = bytearray()
    original = Node.new_connection

    def recording(self: Node, stream: trio.abc.Stream, **kw: Any) -> Any:
        return original(self, Recording(stream, tape), **kw)

    monkeypatch.setattr(Node, "new_connection", recording)
    cfg = SimConfig(nodes=NODES, start=SIM_START, hours=24, seed=3, memory=False, store="memory",
                    virtual=False, time_scale=5760.0)
    with trio.fail_after(120):
        async with open_community(config=cfg) as com:
            await com.wait_until(cfg.end)
            records = com.receipts()
            members = [(s.identity.member_id, s.identity.credential.metering_point) for s in com.nodes]
    receipts = [Receipt.decode(r.encoded) for r in records]
    assert len(receipts) >= 10, "too few trades for the capture to mean anything"
    assert len(tape) > 100_000
    plain = b"".join(r.encode() for r in receipts)
    found: list[str] = []
    for member_id, meter in members:
        for label, needle in (("member id", member_id.encode()), ("metering point", meter.encode()),
                              ("member id (msgpack)", canonical.pack(member_id))):
            if needle in tape:
                found.append(f"{label} {member_id}")
    for r in receipts:
        for label, needle in needles(r).items():
            if label in ("terms run", "wh, price"):
                assert needle in plain  # the positive control: the search finds plaintext
            if needle in tape:
                found.append(f"{label} of trade {r.terms.trade_id.hex()}: {needle!r}")
    assert not found, found
