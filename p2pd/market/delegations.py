"""Delegations (S2, S3): who may trade for whom, within which bounds.

A client signs a :class:`~protocol.Delegation` for its representative; it
spreads by gossip, and every node that checks trades keeps what it saw here,
with revocations. ``now`` is an argument; nothing here sends anything.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from p2pd.market.errors import Refusal
from protocol import (
    Credential,
    CredentialError,
    Delegation,
    DelegationRevoke,
    Reason,
    SignatureError,
    TrustPolicy,
)


@dataclass
class Delegations:
    """Delegations and revocations seen so far, and the credentials that sign them."""

    policy: TrustPolicy
    by_id: dict[bytes, Delegation] = field(default_factory=dict)
    revoked: set[bytes] = field(default_factory=set)
    credentials: dict[str, Credential] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)

    def accept(self, d: Delegation, cred: Credential, now: float) -> bool:
        """Hold ``d`` if its principal (``cred``) signed it; False if known, revoked or invalid."""
        if d.delegation_id in self.by_id or d.delegation_id in self.revoked:
            return False
        try:
            self.policy.check(cred, now)
            if cred.member_id != d.principal:
                raise Refusal(Reason.NOT_A_MEMBER, "delegation not signed by its principal")
            d.verify(cred.sign_pk)
        except (CredentialError, Refusal, SignatureError) as exc:
            self.counters[f"delegations_rejected:{type(exc).__name__}"] += 1
            return False
        self.by_id[d.delegation_id] = d
        self.credentials.setdefault(cred.member_id, cred)
        self.counters["delegations_accepted"] += 1
        return True

    def revoke(self, r: DelegationRevoke) -> bool:
        """Apply a principal's signed revocation; True if it is new and valid."""
        if r.delegation_id in self.revoked:
            return False
        cred = self.credentials.get(r.principal)
        d = self.by_id.get(r.delegation_id)
        if cred is None or (d is not None and d.principal != r.principal):
            return False
        try:
            r.verify(cred.sign_pk)
        except SignatureError:
            return False
        self.revoked.add(r.delegation_id)
        self.counters["revocations"] += 1
        return True

    def check(self, d: Delegation | None) -> None:
        """Raise :class:`Refusal` if ``d`` was revoked or is not its principal's."""
        if d is None:
            return
        if d.delegation_id in self.revoked:
            raise Refusal(Reason.REVOKED, "delegation revoked")
        cred = self.credentials.get(d.principal)
        if cred is None:
            raise Refusal(Reason.NOT_A_MEMBER, f"principal {d.principal} unknown")
        try:
            d.verify(cred.sign_pk)
        except SignatureError as exc:
            raise Refusal(Reason.BAD_SIGNATURE, "delegation signature does not verify") from exc

    def active(self, principal: str, agent: str) -> Delegation | None:
        """The newest unrevoked delegation ``principal`` gave ``agent``."""
        best = None
        for d in self.by_id.values():
            if d.principal == principal and d.agent == agent and d.delegation_id not in self.revoked:
                if best is None or d.valid_from > best.valid_from:
                    best = d
        return best

    def clients_of(self, agent: str) -> list[str]:
        return sorted({d.principal for d in self.by_id.values()
                       if d.agent == agent and d.delegation_id not in self.revoked})
