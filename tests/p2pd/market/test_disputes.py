from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from p2pd_test_helpers import NOW, Community, Identity

from p2pd.market.disputes import export_bundle, load_bundle, verify_bundle
from protocol.trading import Receipt, TradeTerms

SLOT = 900
SLOT_START = (int(NOW) // SLOT + 2) * SLOT


def trade(seller: Identity, buyer: Identity, *, order_id: bytes, order_wh: int, wh: int,
          trade_id: bytes | None = None) -> Receipt:
    terms = TradeTerms(trade_id or os.urandom(16), order_id, order_wh, seller.member_id,
                       buyer.member_id, SLOT_START, SLOT, wh, 90_000, int(NOW))
    return Receipt(terms, terms.sign(seller.signing), terms.sign(buyer.signing))


def bundle(community: Community, receipts: list[Receipt], *members: Identity) -> dict[str, object]:
    return export_bundle(community.name, [r.encode() for r in receipts],
                         [m.credential for m in members])


def test_honest_receipts_verify() -> None:
    c = Community()
    alice, bob, carol = c.member("alice"), c.member("bob"), c.member("carol")
    rs = [trade(alice, bob, order_id=b"o" * 16, order_wh=1000, wh=600),
          trade(alice, carol, order_id=b"o" * 16, order_wh=1000, wh=400)]
    report = verify_bundle(bundle(c, rs, alice, bob, carol), {c.issuer.public})
    assert report.ok and report.valid == 2


def test_double_selling_is_named_with_proof() -> None:
    c = Community()
    alice, bob, carol = c.member("alice"), c.member("bob"), c.member("carol")
    r1 = trade(alice, bob, order_id=b"o" * 16, order_wh=1000, wh=700)
    r2 = trade(alice, carol, order_id=b"o" * 16, order_wh=1000, wh=700)
    report = verify_bundle(bundle(c, [r1, r2], alice, bob, carol), {c.issuer.public})
    assert not report.ok
    [problem] = report.problems
    assert problem.kind == "double_selling"
    assert set(problem.trade_ids) == {r1.terms.trade_id.hex(), r2.terms.trade_id.hex()}
    assert problem.proof["sold_wh"] == 1400 and problem.proof["order_wh"] == [1000]
    assert problem.proof["seller"] == "alice"


def test_conflicting_order_sizes_are_double_selling() -> None:
    c = Community()
    alice, bob, carol = c.member("alice"), c.member("bob"), c.member("carol")
    r1 = trade(alice, bob, order_id=b"o" * 16, order_wh=1000, wh=500)
    r2 = trade(alice, carol, order_id=b"o" * 16, order_wh=2000, wh=500)
    report = verify_bundle(bundle(c, [r1, r2], alice, bob, carol), {c.issuer.public})
    assert [p.kind for p in report.problems] == ["double_selling"]


def test_tampered_receipt_is_detected() -> None:
    c = Community()
    alice, bob = c.member("alice"), c.member("bob")
    r = trade(alice, bob, order_id=b"o" * 16, order_wh=1000, wh=500)
    cheaper = dataclasses.replace(r, terms=dataclasses.replace(r.terms, price=1))
    report = verify_bundle(bundle(c, [cheaper], alice, bob), {c.issuer.public})
    assert [p.kind for p in report.problems] == ["bad_signature"]
    # a flipped byte in the hex is caught too (decode error or signature failure)
    data = bundle(c, [r], alice, bob)
    text = data["receipts"][0]  # type: ignore[index]
    data["receipts"] = [text[:-4] + ("00" if text[-4:-2] != "00" else "11") + text[-2:]]  # type: ignore[index]
    assert not verify_bundle(data, {c.issuer.public}).ok


def test_untrusted_issuer_credentials_do_not_count() -> None:
    c = Community()
    alice, bob = c.member("alice"), c.member("bob")
    r = trade(alice, bob, order_id=b"o" * 16, order_wh=1000, wh=500)
    other = Community(name=c.name)
    report = verify_bundle(bundle(c, [r], alice, bob), {other.issuer.public})
    kinds = {p.kind for p in report.problems}
    assert "bad_credential" in kinds and "unknown_member" in kinds


def test_cli_verify_prints_proof_and_fails(tmp_path: Path) -> None:
    c = Community()
    alice, bob, carol = c.member("alice"), c.member("bob"), c.member("carol")
    r1 = trade(alice, bob, order_id=b"o" * 16, order_wh=1000, wh=700)
    r2 = trade(alice, carol, order_id=b"o" * 16, order_wh=1000, wh=700)
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle(c, [r1, r2], alice, bob, carol)))
    cmd = [sys.executable, "-m", "p2pd", "receipts", "verify", str(path), "--issuer", c.issuer.public.hex()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "double_selling" in out.stdout and r1.encode().hex() in out.stdout
    good = tmp_path / "good.json"
    good.write_text(json.dumps(bundle(c, [r1], alice, bob)))
    out = subprocess.run(cmd[:5] + [str(good)] + cmd[6:] + ["--json"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout)["ok"] is True
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = subprocess.run(cmd[:5] + [str(bad)] + cmd[6:], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "not JSON" in out.stderr


def test_load_bundle_rejects_wrong_shapes() -> None:
    import pytest

    from p2pd.market.disputes import BundleError

    for text in ("[]", '{"format": "x"}', '{"format": "p2pd-receipts/1", "community": "c", '
                 '"credentials": [1], "receipts": []}'):
        with pytest.raises(BundleError):
            load_bundle(text)
