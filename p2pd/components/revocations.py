"""Daemon component "revocations": revocation lists installed, kept, spread and enforced.

The daemon builds the node's TrustPolicy from ``ctx.revocations`` (a
:class:`~p2pd.net.revocations.RevocationRegistry`), so a list in the registry
refuses its members at the very next handshake. This component:

1. re-installs the lists kept in the store (the newest per issuer wins);
2. installs the files named in ``[revocations] lists`` (raw list bytes or
   hex text; relative to the config file), failing the start with a
   key-named ConfigError if one is unreadable, malformed or badly signed;
3. attaches the gossip (:func:`~p2pd.net.revocations.attach_revocations`): a
   newer list from a peer or from ``revocations.install`` closes sessions
   with the members it revokes (REVOKED) and is forwarded;
4. stores every newer list, whoever brought it, so a restart keeps it.

Store layout: one :class:`store.RevocationRecord` per list with
``member_id = "*"`` and the list's encoded bytes (a list may name thousands
of members; one row per member would repeat the whole list in each).

Owns ``[revocations]`` (:data:`REVOCATIONS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from p2pd import log, storage
from p2pd.config import Config, Section, Table
from p2pd.control.server import INVALID_PARAMS, Param, RpcError
from p2pd.control.trading import REVOCATION_REJECTED
from p2pd.errors import ConfigError
from p2pd.events import RevocationInstalled
from p2pd.net.identity import NodeIdentity
from p2pd.net.revocations import RevocationGossip, RevocationRegistry, attach_revocations
from protocol import DecodeError, Reason, RevocationList, SignatureError
from store import RevocationRecord, StorageUnavailable

if TYPE_CHECKING:
    from p2pd.context import DaemonContext

WHOLE_LIST = "*"
MAX_LIST_BYTES = 1 << 20


@dataclass(frozen=True)
class RevocationsConfig:
    """``[revocations]``: revocation list files installed at start."""

    lists: tuple[str, ...] = ()
    """Paths (relative to the config file) of lists, raw bytes or hex text."""


def parse_revocations(t: Table) -> RevocationsConfig:
    return RevocationsConfig(lists=t.strings("lists", max_items=64))


REVOCATIONS = Section("revocations", parse_revocations)


def list_path(config: Config, name: str) -> Path:
    """A ``lists`` entry as a path: ``~`` expanded, relative to the config file's directory."""
    base = config.path.resolve().parent if config.path else Path(".")
    path = Path(name).expanduser()
    return path if path.is_absolute() else base / path


def decode_list(data: bytes) -> RevocationList:
    """A list from its encoded bytes or their hex text. Raises DecodeError."""
    try:
        text = data.decode("ascii").strip()
        data = bytes.fromhex(text)
    except (UnicodeDecodeError, ValueError):
        pass  # not hex text: take the bytes as they are
    return RevocationList.decode(data)


class UnreadableList(Exception):
    """A revocation list file that cannot be read or is not a list; the text names the file."""


def read_list(path: Path) -> RevocationList:
    """Decode the list in ``path`` (at most :data:`MAX_LIST_BYTES` are read).

    Raises :class:`UnreadableList`; each caller says where the path came from
    (``p2pd revocation show``, a config entry) in its own kind of error.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_LIST_BYTES + 1)
    except OSError as exc:
        raise UnreadableList(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_LIST_BYTES:
        raise UnreadableList(f"{path} is larger than {MAX_LIST_BYTES} bytes: not a revocation list")
    try:
        return decode_list(data)
    except DecodeError as exc:
        raise UnreadableList(f"{path} is not a revocation list: {exc}") from exc


def read_list_file(path: Path, where: str) -> RevocationList:
    try:
        return read_list(path)
    except UnreadableList as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def configured_lists(config: Config) -> list[RevocationList]:
    """The lists ``[revocations] lists`` names, read and checked: each file
    readable, a list, from a ``[community].issuers`` key and verifying.
    Raises :class:`ConfigError` naming the entry (``[revocations].lists[i]``)."""
    lists = []
    for i, name in enumerate(REVOCATIONS.get(config).lists):
        where = f"[revocations].lists[{i}]"
        rl = read_list_file(list_path(config, name), where)
        if rl.issuer_pk not in config.community.issuers:
            raise ConfigError(f"{where}: {name} is signed by {rl.issuer_pk.hex()}, "
                              "which is not in [community].issuers")
        try:
            rl.verify_signature()
        except SignatureError as exc:
            raise ConfigError(f"{where}: {name} does not verify: {exc}") from exc
        lists.append(rl)
    return lists


class RevocationKeeper:
    """Installs lists through the gossip and keeps the newest of each issuer in the store."""

    def __init__(self, ctx: DaemonContext, registry: RevocationRegistry, gossip: RevocationGossip) -> None:
        self.repo = ctx.repo
        self.registry = registry
        self.gossip = gossip
        self.events = ctx.node.events
        self.counters = ctx.node.counters

    async def restore(self) -> int:
        """Offer every stored list to the registry; returns how many were taken."""
        taken = 0
        for rec in await storage.call(self.repo, self.repo.revocations):
            try:
                if self.registry.offer(RevocationList.decode(rec.encoded)):
                    taken += 1
            except (DecodeError, SignatureError) as exc:
                log.warning("revocation_stored_unusable", issuer=rec.issuer_pk.hex()[:16],
                            serial=rec.serial, error=str(exc))
        return taken

    async def install(self, rl: RevocationList) -> bool:
        """Apply ``rl`` now (cut sessions, spread it) and store it. Raises SignatureError."""
        new = await self.gossip.install(rl)
        if new:
            await self.save(rl)
        return new

    async def save(self, rl: RevocationList) -> None:
        rec = RevocationRecord(rl.issuer_pk, WHOLE_LIST, rl.serial, rl.encode())
        await storage.call(self.repo, self.repo.put_revocation, rec)

    async def serve_saving(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Store lists that peers bring (the gossip publishes a "revocation" event for each)."""
        async with self.events.subscribe() as events:
            task_status.started()
            async for event in events:
                if not isinstance(event, RevocationInstalled):
                    continue
                rl = self.registry.lists.get(bytes.fromhex(event.issuer))
                if rl is not None and rl.serial == event.serial:
                    try:
                        await self.save(rl)
                    except StorageUnavailable:
                        # A full disk: the list holds in memory and peers
                        # bring it again; the store's health logs the disk.
                        self.counters["revocations_unstored"] += 1


class RevocationsComponent:
    name = "revocations"
    section = REVOCATIONS

    def check(self, config: Config, identity: NodeIdentity) -> None:
        """The configured lists are readable, trusted and verify."""
        configured_lists(config)

    async def start(self, ctx: DaemonContext) -> None:
        registry = ctx.revocations
        if registry is None:  # a context built without the daemon's policy wiring
            registry = ctx.revocations = RevocationRegistry(ctx.config.community.issuers)
            log.warning("revocations_not_enforced_at_handshake", reason="policy built without registry")
        gossip = attach_revocations(ctx.node, registry)
        keeper = RevocationKeeper(ctx, registry, gossip)
        ctx.services["revocations"] = keeper
        await ctx.nursery.start(keeper.serve_saving)
        restored = await keeper.restore()
        for rl in configured_lists(ctx.config):  # checked by check() too; read again, they may have changed
            await keeper.install(rl)
        # Sessions opened before the gossip was attached missed its open hook.
        for conn in list(ctx.node.sessions.values()):
            await gossip.on_open(conn)
        # Lists restored above went into the registry directly: cut anyone they revoke.
        for rl in list(registry.lists.values()):
            for conn in [c for c in list(ctx.node.sessions.values()) if c.peer and rl.revokes(c.peer)]:
                ctx.nursery.start_soon(conn.close, Reason.REVOKED, "credential revoked by its issuer")
        log.info("revocations_ready", lists=len(registry.lists), restored=restored)

        async def install(list_hex: str) -> dict[str, Any]:
            """install a signed revocation list (hex); it spreads to the community"""
            try:
                rl = RevocationList.decode(bytes.fromhex(list_hex))
            except (ValueError, DecodeError) as exc:
                raise RpcError(INVALID_PARAMS, f"invalid params: list_hex is not a revocation list: {exc}") from exc
            if rl.issuer_pk not in registry.trusted_issuers:
                raise RpcError(REVOCATION_REJECTED, "the list's issuer is not in [community].issuers",
                               {"issuer": rl.issuer_pk.hex()})
            try:
                new = await keeper.install(rl)
            except SignatureError as exc:
                raise RpcError(REVOCATION_REJECTED, f"the list does not verify: {exc}",
                               {"issuer": rl.issuer_pk.hex()}) from exc
            held = registry.lists[rl.issuer_pk]
            return {"installed": new, "issuer": rl.issuer_pk.hex(), "serial": rl.serial,
                    "current_serial": held.serial, "members": list(rl.member_ids)}

        ctx.control.register("revocations.install", install, {
            "list_hex": Param(str, max_len=2 * MAX_LIST_BYTES, help="encoded RevocationList, hex")})
        ctx.control.register("revocations.list", lambda: {"lists": registry.snapshot()},
                             summary="the newest revocation list of each trusted issuer")


DAEMON_COMPONENT = RevocationsComponent()
