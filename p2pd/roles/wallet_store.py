"""A member's pseudonym wallet kept in the store (docs/protocol.md 12.8, docs/configuration.md ``[privacy]``).

What must survive kill -9, and when it is committed:

* the wallet's salt, on first use (:func:`open_wallet`); with the node's
  signing key it derives every pseudonym's keys (``wallet_secret``);
* every index, *before* its blinded request leaves (:meth:`StoredWallet.reserve`):
  an index is never blinded twice, whatever the issuer answered;
* the issuer's certificates, before any is used (:meth:`StoredWallet.granted`);
* "used", before the order it signs exists (:meth:`StoredWallet.use`, a
  compare-and-set in the store): a pseudonym never signs two orders.

The rules (restoring, deriving keys) are :class:`p2pd.market.pseudonyms.Wallet`'s;
this module only moves records.
"""

from __future__ import annotations

import os

from p2pd import storage
from p2pd.errors import TradeNotStored, TradeRefused
from p2pd.market.pseudonyms import KEEP_EPOCHS_BEHIND, Owned, Wallet, wallet_secret
from protocol import DecodeError, Pseudonym, Reason, SigningKey, epoch_of
from store import PseudonymRecord, Repository, StorageUnavailable


class StoredWallet:
    """The :class:`~p2pd.roles.anon.WalletKeeper` of a daemon: every change committed before it is used."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    async def _put(self, records: list[PseudonymRecord]) -> None:
        try:
            await storage.call(self.repo, self.repo.put_pseudonyms, records)
        except StorageUnavailable as exc:
            raise TradeNotStored(f"our store cannot keep the pseudonym wallet: {exc}") from exc

    async def reserve(self, epoch: int, indices: list[int]) -> None:
        await self._put([PseudonymRecord(epoch, i, None, False) for i in indices])

    async def granted(self, owned: list[Owned]) -> None:
        await self._put([PseudonymRecord(o.keys.epoch, o.keys.index, o.pseudonym.encode(), False)
                         for o in owned])

    async def use(self, owned: Owned) -> None:
        try:
            fresh = await storage.call(self.repo, self.repo.use_pseudonym, owned.keys.epoch, owned.keys.index)
        except StorageUnavailable as exc:
            raise TradeNotStored(f"our store cannot keep the pseudonym wallet: {exc}") from exc
        if not fresh:
            raise TradeRefused("the wallet's pseudonym was used already (or never kept); not reusing it",
                               Reason.REPLAY)


async def open_wallet(repo: Repository, node_key: SigningKey, *, batch: int, now: float) -> Wallet:
    """The wallet as the store keeps it: salt, spent indices, unused and used pseudonyms.

    Pseudonyms of epochs too old to be valid are dropped from the store.
    Raises StorageUnavailable / StoreError from the store, and ValueError if
    a kept pseudonym was not made from this node's key (the key files were
    replaced under an existing database).
    """
    salt = await storage.call(repo, repo.wallet_salt, os.urandom(32))
    wallet = Wallet(secret=wallet_secret(node_key.seed(), salt), batch=batch)
    oldest = epoch_of(now) - KEEP_EPOCHS_BEHIND
    for rec in await storage.call(repo, repo.pseudonyms, oldest):
        try:
            cert = Pseudonym.decode(rec.cert) if rec.cert is not None else None
        except DecodeError as exc:
            raise ValueError(f"kept pseudonym {rec.epoch}/{rec.index} does not decode: {exc}") from exc
        wallet.restore(rec.epoch, rec.index, cert, rec.used)
    await storage.call(repo, repo.drop_pseudonyms, oldest)
    return wallet
