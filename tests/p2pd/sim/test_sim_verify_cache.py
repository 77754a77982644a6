"""The cache of verified credentials (TrustPolicy) skips only the issuer-signature verify.

Checked through a simulated node's market, where orders arrive with their
owners' credentials: a cached credential never lets a tampered order, a
tampered credential or an expired one through.
"""

from __future__ import annotations

import dataclasses

import pytest
import trio
from p2pd_test_helpers import eventually

from p2pd.errors import TradeError
from p2pd.sim.build import open_community
from p2pd.sim.community import SIM_START, SimConfig
from protocol import CredentialError, Reason
from protocol.trading import Order

CFG = SimConfig(nodes=2, hours=1, start=SIM_START + 10 * 3600, memory=True, store="memory", virtual=True)


def signature_verifies(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record every issuer-signature verify (the work the cache saves)."""
    from protocol.credentials import Credential

    calls: list[bytes] = []
    real = Credential.verify_signature

    def counting(self: Credential) -> None:
        calls.append(self.member_id.encode())
        real(self)

    monkeypatch.setattr(Credential, "verify_signature", counting)
    return calls


async def test_cached_credential_still_rejects_forged_and_expired(
        autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_community(config=CFG, start_agents=False) as com:
        seller, buyer = com.nodes
        market, cred = buyer.market, seller.identity.credential
        now = market.now()
        slot = (now // 900 + 4) * 900
        order = Order.create(seller.identity.keys.signing, order_id=bytes(16), member_id=seller.member_id,
                             side="sell", slot_start=slot, slot_len=900, wh=500, price=93_000,
                             expiry=slot - 300)
        calls = signature_verifies(monkeypatch)
        market.check_order(order, cred, now)
        assert cred in buyer.node.policy._verified
        verifies_before = len(calls)

        # A tampered order with the cached (genuine) credential: its own signature fails.
        for tampered in (dataclasses.replace(order, wh=50_000), dataclasses.replace(order, price=1),
                         dataclasses.replace(order, signature=bytes(64))):
            with pytest.raises(TradeError) as err:
                market.check_order(tampered, cred, now)
            assert err.value.reason == Reason.BAD_SIGNATURE
        assert len(calls) == verifies_before  # the credential itself was not verified again

        # A credential altered in any field is another key: verified, and refused.
        stretched = dataclasses.replace(cred, valid_until=cred.valid_until + 10 * 365 * 86400)
        with pytest.raises(TradeError) as err:
            market.check_order(order, stretched, now)
        assert err.value.reason == Reason.BAD_SIGNATURE
        assert len(calls) == verifies_before + 1

        # Expired (and not yet valid) while cached: refused on time, every call.
        with pytest.raises(CredentialError) as cerr:
            buyer.node.policy.check(cred, cred.valid_until + 3600)
        assert cerr.value.reason == Reason.CREDENTIAL_EXPIRED
        with pytest.raises(TradeError) as err:
            market.check_order(order, cred, cred.valid_until + 3600)
        assert err.value.reason == Reason.CREDENTIAL_EXPIRED
        with pytest.raises(CredentialError) as cerr:
            buyer.node.policy.check(cred, cred.valid_from - 3600)
        assert cerr.value.reason == Reason.CREDENTIAL_NOT_YET_VALID

        # Revocation and issuer trust are checked on every call too.
        revoking = dataclasses.replace(buyer.node.policy, is_revoked=lambda c: c == cred)
        revoking._verified[cred] = None
        with pytest.raises(CredentialError) as cerr:
            revoking.check(cred, now)
        assert cerr.value.reason == Reason.REVOKED
        distrusting = dataclasses.replace(buyer.node.policy, trusted_issuers=frozenset())
        distrusting._verified[cred] = None
        with pytest.raises(CredentialError) as cerr:
            distrusting.check(cred, now)
        assert cerr.value.reason == Reason.UNTRUSTED_ISSUER


async def test_each_simulated_node_verifies_for_itself(autojump_clock: trio.abc.Clock) -> None:
    async with open_community(config=CFG, start_agents=False) as com:
        a, b = com.nodes
        assert a.node.policy is not b.node.policy
        assert a.node.policy._verified is not b.node.policy._verified
        # In XX the responder finishes last.
        await eventually(lambda: a.member_id in b.node.sessions and b.member_id in a.node.sessions)
        # Each verified the other's credential in the handshake, once.
        assert b.identity.credential in a.node.policy._verified
        assert a.identity.credential in b.node.policy._verified
