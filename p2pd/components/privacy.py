"""Daemon component "privacy": pseudonymous orders (docs/protocol.md 12.8, docs/privacy.md).

Two independent roles, both off by default:

* a **member** with ``pseudonyms = true`` posts every order under a fresh
  pseudonym from its wallet, refilled from the pseudonym service of the node
  ``issuer_node`` in their session
  (:class:`~p2pd.roles.issuance.RemotePseudonymSource`). The wallet lives in
  the store (:mod:`p2pd.roles.wallet_store`): a restart keeps its pseudonyms
  and its live pseudonymous orders, and never reuses a pseudonym. If no
  pseudonym can be had, posting fails with the issuer's reason (quota used
  up, issuer unreachable) rather than falling back to a named order.
* the **community operator's node**, with ``issuer_key`` (the issuer's
  ``issuer.key``), runs the pseudonym service
  (:class:`~p2pd.roles.issuance.IssuerService`): it blind-signs at most
  ``quota`` pseudonyms per member and epoch (day), which bounds how many
  orders one member can have in the book whatever names they carry. Counts
  and epoch keys are kept in the store, so the store must be durable.

A node without the service answers asks with NOT_FOUND. Every node, with or
without this section, checks and trades pseudonymous orders (the market).

Owns ``[privacy]`` (:data:`PRIVACY`); adds ``privacy`` to ``status``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pd import log
from p2pd.components.status import extend_status
from p2pd.config import Config, Section, Table
from p2pd.errors import ConfigError, KeyFileError
from p2pd.net.identity import NodeIdentity, load_issuer_key
from p2pd.roles.issuance import IssuerService, RemotePseudonymSource, refuse_asks
from p2pd.roles.trading import Market
from p2pd.roles.wallet_store import StoredWallet, open_wallet
from protocol import MAX_ASK, MAX_QUOTA, PseudonymAsk, SigningKey, epoch_of

if TYPE_CHECKING:
    from p2pd.context import DaemonContext


@dataclass(frozen=True)
class PrivacyConfig:
    """``[privacy]``: pseudonymous orders (member) and the pseudonym service (operator)."""

    pseudonyms: bool = False
    """Post orders under pseudonyms drawn from ``issuer_node``'s service."""
    issuer_node: str | None = None
    """Member id of the node that runs the community's pseudonym service."""
    batch: int = 16
    """Pseudonyms asked for at a time (the issuer learns roughly how often a member refills)."""
    ask_timeout: float = 10.0
    """Seconds to wait for the issuer's node to answer an ask."""
    issuer_key: str | None = None
    """Path (relative to the config file) of the issuer's ``issuer.key``: run the service here."""
    quota: int = 256
    """Service: pseudonyms (orders) per member and day."""


def parse_privacy(t: Table) -> PrivacyConfig:
    d = PrivacyConfig()
    cfg = PrivacyConfig(
        pseudonyms=t.boolean("pseudonyms", d.pseudonyms),
        issuer_node=t.member("issuer_node"),
        batch=t.integer("batch", d.batch, 1, MAX_ASK),
        ask_timeout=t.number("ask_timeout", d.ask_timeout, 0.1, 300.0),
        issuer_key=t.string("issuer_key", None),
        quota=t.integer("quota", d.quota, 1, MAX_QUOTA),
    )
    if cfg.pseudonyms and cfg.issuer_node is None:
        raise t.error("issuer_node", "pseudonyms = true needs the member id of the node that runs "
                                     "the pseudonym service")
    if cfg.pseudonyms and cfg.issuer_key is not None:
        raise t.error("pseudonyms", "a node that runs the pseudonym service (issuer_key) cannot also draw "
                                    "pseudonyms from it; post from another node")
    return cfg


PRIVACY = Section("privacy", parse_privacy)


def issuer_key_path(config: Config, name: str) -> Path:
    """``issuer_key`` as a path: ``~`` expanded, relative to the config file's directory."""
    base = config.path.resolve().parent if config.path else Path(".")
    path = Path(name).expanduser()
    return path if path.is_absolute() else base / path


def load_service_key(config: Config, cfg: PrivacyConfig) -> SigningKey | None:
    """The issuer key of ``[privacy].issuer_key``, checked; None without one. Raises ConfigError."""
    if cfg.issuer_key is None:
        return None
    path = issuer_key_path(config, cfg.issuer_key)
    try:
        key = load_issuer_key(path)
    except (KeyFileError, ValueError) as exc:
        raise ConfigError(f"[privacy].issuer_key: {exc}") from exc
    if key.public not in config.community.issuers:
        raise ConfigError(f"[privacy].issuer_key: {path} is the key {key.public.hex()}, which is not in "
                          "[community].issuers (members would refuse its epoch keys)")
    if config.store.url in ("memory://", "sqlite://", ":memory:"):
        raise ConfigError(f"[privacy].issuer_key: the service keeps its counts and keys in the store, but "
                          f"[store].url is {config.store.url!r}: a restart would reset every quota; "
                          "use a database file or server")
    return key


class PrivacyComponent:
    name = "privacy"
    section = PRIVACY

    def check(self, config: Config, identity: NodeIdentity) -> None:
        cfg = PRIVACY.get(config)
        load_service_key(config, cfg)
        if cfg.pseudonyms:
            if cfg.issuer_node == identity.member_id:
                raise ConfigError("[privacy].issuer_node: that is this node's own member id; name the node "
                                  "that runs the pseudonym service")
            if identity.credential.role not in ("prosumer", "representative"):
                raise ConfigError(f"[privacy].pseudonyms: a {identity.credential.role} posts no orders")

    async def start(self, ctx: DaemonContext) -> None:
        cfg = PRIVACY.get(ctx.config)
        market: Market = ctx.services["market"]
        key = load_service_key(ctx.config, cfg)
        service: IssuerService | None = None
        if key is not None:
            service = IssuerService(ctx.node, ctx.repo, key, quota=cfg.quota, clock=market.clock,
                                    announce=market.add_epoch_key)
            try:
                await service.load()
            except ValueError as exc:
                raise ConfigError(f"[privacy].issuer_key: the store's epoch keys: {exc}") from exc
            await ctx.nursery.start(service.serve)
            log.info("pseudonym_service_ready", quota=cfg.quota, epochs=sorted(service.core.keys))
        else:
            ctx.node.handle(PseudonymAsk, refuse_asks)
        source: RemotePseudonymSource | None = None
        if cfg.pseudonyms:
            assert cfg.issuer_node is not None
            dial = getattr(ctx.discovery, "dial_member", None)
            source = RemotePseudonymSource(ctx.node, cfg.issuer_node, timeout=cfg.ask_timeout, dial=dial)
            try:
                wallet = await open_wallet(ctx.repo, ctx.identity.keys.signing, batch=cfg.batch, now=market.now())
            except ValueError as exc:
                raise ConfigError(f"[privacy].pseudonyms: the store's wallet: {exc}") from exc
            market.wallet, market.pseudonym_source = wallet, source
            market.wallet_keeper = StoredWallet(ctx.repo)
            if market.dial is None:
                market.dial = dial  # the owner reaches its takers with it
            reloaded = await market.reload_pseudonymous_orders()
            log.info("pseudonyms_ready", issuer_node=cfg.issuer_node, reloaded_orders=reloaded,
                     unused=sum(len(p) for p in wallet.unused.values()))
        ctx.services["privacy"] = (service, source)
        extend_status(ctx.control, "privacy", lambda: privacy_status(market, service, source))


def privacy_status(market: Market, service: IssuerService | None,
                   source: RemotePseudonymSource | None) -> dict[str, Any]:
    """What ``status`` says of pseudonyms: the wallet's, and the service's if this node runs it."""
    out: dict[str, Any] = {"pseudonyms": market.wallet is not None}
    if market.wallet is not None:
        epoch = epoch_of(market.now())
        out["wallet"] = {
            "unused": len(market.wallet.unused.get(epoch, [])),
            "issuer_remaining": source.remaining if source is not None else None,
            "last_refusal": str(market.refill_refusal) if market.refill_refusal is not None else None,
        }
    if service is not None:
        epoch = epoch_of(market.now())
        # A copy in one step: grants update the counts in a worker thread.
        today = [n for (_, e), n in dict(service.core.used).items() if e == epoch]
        out["service"] = {
            "quota": service.core.quota,
            "epochs": sorted(dict(service.core.keys)),
            "members_today": len(today),
            "issued_today": sum(today),
        }
    return out


DAEMON_COMPONENT = PrivacyComponent()
