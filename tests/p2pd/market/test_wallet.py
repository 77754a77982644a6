"""The pseudonym wallet's rules (p2pd/market/pseudonyms.py): batches within the quota, restoring after a restart."""

from __future__ import annotations

import os

import pytest

from p2pd.market.pseudonyms import Wallet, wallet_secret
from protocol import PseudonymIssuer, SigningKey, credentials

EPOCH = 20_600


def _member(issuer: SigningKey, member_id: str = "alice") -> credentials.Credential:
    key = SigningKey.generate()
    return credentials.Credential.issue(issuer, community="c", member_id=member_id, role="prosumer",
                                        metering_point="EAN1", sign_pk=key.public, noise_pk=os.urandom(32),
                                        valid_from=0, valid_until=2**40)


@pytest.fixture(scope="module")
def service() -> PseudonymIssuer:
    issuer = PseudonymIssuer(SigningKey.generate(), "c", quota=5)
    issuer.epoch_key(EPOCH)
    return issuer


def _fill(wallet: Wallet, service: PseudonymIssuer, cred: credentials.Credential,
          remaining: int | None = None) -> list[int]:
    key = service.epoch_key(EPOCH)
    reqs = wallet.requests(key, os.urandom, remaining)
    sigs = service.grant(cred, EPOCH, [r.blinded_msg for r in reqs], os.urandom)
    return [o.keys.index for o in wallet.add(key, reqs, sigs)]


def test_a_batch_asks_no_more_than_the_quota_left(service: PseudonymIssuer) -> None:
    cred = _member(service.issuer)
    wallet = Wallet(secret=bytes(32), batch=4)
    assert _fill(wallet, service, cred) == [0, 1, 2, 3]
    assert _fill(wallet, service, cred, remaining=1) == [4]  # not refused for overshooting
    assert len(wallet.requests(service.epoch_key(EPOCH), os.urandom, 0)) == 4  # unknown or none: a batch


def test_a_restored_wallet_spends_no_index_twice_and_knows_its_orders(service: PseudonymIssuer) -> None:
    cred = _member(service.issuer, "bob")
    secret = wallet_secret(b"n" * 32, b"salt")
    wallet = Wallet(secret=secret, batch=3)
    _fill(wallet, service, cred)
    used = wallet.draw(EPOCH * 86_400)
    assert used is not None
    kept = [(EPOCH, o.keys.index, o.pseudonym, False) for o in wallet.unused[EPOCH]]
    kept += [(EPOCH, used.keys.index, used.pseudonym, True), (EPOCH, 3, None, False)]  # 3: asked, never granted

    again = Wallet(secret=secret, batch=3)
    for epoch, index, cert, is_used in kept:
        again.restore(epoch, index, cert, is_used)
    [(oid, back)] = again.owned.items()
    assert oid == used.pseudonym.order_id and back.pseudonym == used.pseudonym
    assert (back.keys.signing.public, back.keys.box_private) == (used.keys.signing.public, used.keys.box_private)
    assert [o.keys.index for o in again.unused[EPOCH]] == [1, 2]
    assert [r.keys.index for r in again.requests(service.epoch_key(EPOCH), os.urandom)] == [4, 5, 6]

    stranger = Wallet(secret=wallet_secret(b"m" * 32, b"salt"))
    with pytest.raises(ValueError, match="not made from this wallet's secret"):
        stranger.restore(EPOCH, used.keys.index, used.pseudonym, True)
    assert wallet_secret(b"n" * 32, b"other salt") != secret
