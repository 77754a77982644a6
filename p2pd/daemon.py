"""``p2pd run``: wires configuration, keys, store, node, listener, discovery,
control socket, meter, systemd notification and signals.

Extension point: a *component* is any object with a ``name`` and
``async def start(ctx: DaemonContext) -> None``. ``start`` runs after the node,
store, discovery and control server exist and before READY=1; it may
register message handlers (``ctx.node.handle``), session hooks
(``ctx.node.on_open``), control methods (``ctx.control.register``), reload
hooks (``ctx.on_reload``), and start background tasks in ``ctx.nursery``
(cancelled at shutdown, before sessions close). To add one, define
``DAEMON_COMPONENT`` in your module and list the module in
:data:`COMPONENT_MODULES` (a missing module is skipped). A module that
validates a config section registers it in ``p2pd.config.SECTION_VALIDATORS``
at import time; components are imported before the configuration is read.

Shutdown (SIGTERM, SIGINT or :meth:`DaemonContext.stop`): STOPPING=1, the
control socket, listener, discovery and components stop, then every session
closes with SHUTDOWN and the store is closed. Store calls made through
``trio.to_thread.run_sync`` finish first (threads are not abandoned).
SIGHUP re-reads the configuration (:meth:`DaemonContext.reload`).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from p2pd import log
from p2pd.config import Config, load_config
from p2pd.control import ControlServer, serve_control
from p2pd.control_methods import register_builtin_methods
from p2pd.discovery import Discovery
from p2pd.errors import ConfigError, KeyFileError, P2pdError
from p2pd.identity import NodeIdentity, load_credential, load_node_keys
from p2pd.listener import serve_p2p
from p2pd.node import Node, NodeLimits, open_node
from p2pd.notify import Notifier
from p2pd.revocations import RevocationRegistry
from protocol import CredentialError, TrustPolicy

# Modules that may define DAEMON_COMPONENT; missing ones are skipped.
# Order matters: later components use what earlier ones put in ctx.services
# (the agent needs the market; replication wraps the market's writer before
# the broker, representative and client components commit through it;
# settlement and the APIs need the store). The credential's role decides
# which of broker/representative/client actually run.
COMPONENT_MODULES: tuple[str, ...] = (
    "p2pd.component_revocations",
    "p2pd.component_policing",
    "p2pd.component_trading",
    "p2pd.component_replication",
    "p2pd.component_agent",
    "p2pd.component_broker",
    "p2pd.component_representative",
    "p2pd.component_client",
    "p2pd.settlement_loop",
)
# Config keys applied at run time by the daemon itself; components add theirs
# (e.g. "sections.limits") to ctx.reloadable.
RELOADABLE = {"node.log_level", "p2p.peers", "p2p.announce", "p2p.max_connections",
              "p2p.max_handshakes", "p2p.exchange"}
WILDCARD_HOSTS = {"", "0.0.0.0", "::", "*"}


class Component(Protocol):
    name: str

    async def start(self, ctx: DaemonContext) -> None: ...


ReloadHook = Callable[[Config], Awaitable[None] | None]


def load_components() -> list[Component]:
    """Import :data:`COMPONENT_MODULES` and return their ``DAEMON_COMPONENT``s."""
    found: list[Component] = []
    for name in COMPONENT_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        component = getattr(module, "DAEMON_COMPONENT", None)
        if component is not None:
            found.append(component)
    return found


@dataclass
class DaemonContext:
    """Everything a component may use; one per daemon run."""

    config: Config
    identity: NodeIdentity
    policy: TrustPolicy
    repo: Any
    node: Node
    control: ControlServer
    nursery: trio.Nursery
    notifier: Notifier
    discovery: Discovery | None = None
    meter: Any = None
    revocations: RevocationRegistry | None = None
    """Backs ``policy.is_revoked``: lists installed here refuse members at the handshake."""
    services: dict[str, Any] = field(default_factory=dict)
    """Objects components share by name ("market", "policer", ...); see COMPONENT_MODULES."""
    listen_addresses: list[str] = field(default_factory=list)
    on_reload: list[ReloadHook] = field(default_factory=list)
    reloadable: set[str] = field(default_factory=lambda: set(RELOADABLE))
    _stop: trio.Event = field(default_factory=trio.Event)

    def stop(self) -> None:
        """Ask the daemon to shut down (as SIGTERM does)."""
        self._stop.set()

    def meter_status(self) -> dict[str, Any] | None:
        if self.meter is None:
            return None
        h = self.meter.health
        last = h.last_reading
        return {"driver": self.config.meter.driver, "state": h.state.value, "healthy": self.meter.healthy,
                "attempt": h.attempt, "last_error": h.last_error,
                "last_reading": dataclasses.asdict(last) if last else None}

    def status_line(self) -> str:
        return f"member {self.identity.member_id}: {len(self.node.sessions)} sessions"

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration file; apply what can change at run time.

        Returns ``{"applied": [...], "restart_required": [...]}`` (dotted key
        names). Raises :class:`ConfigError` (nothing changes, the error is
        logged) if the new file cannot be loaded for any reason: a bug in
        loading, which load_config should never show, is logged with its
        traceback and reported as a ConfigError too.
        """
        path = self.config.path
        if path is None:
            raise ConfigError("the daemon was started without a configuration file")
        self.notifier.reloading()
        try:
            new = load_config(path)
        except ConfigError as exc:
            log.warning("config_reload_failed", error=str(exc))
            self.notifier.ready(self.status_line())
            raise
        except Exception as exc:  # noqa: BLE001 - a bad file must never stop the daemon
            log.exception("config_reload_failed", exc)
            self.notifier.ready(self.status_line())
            raise ConfigError(f"{path}: cannot be loaded ({type(exc).__name__}); "
                              "keeping the running configuration") from exc
        changed = _diff(self.config, new)
        applied = [k for k in changed if k in self.reloadable or k.split(".")[0] + ".*" in self.reloadable]
        restart = [k for k in changed if k not in applied]
        self.config = new
        logging.getLogger("p2pd").setLevel(new.node.log_level.upper())
        self.node.limits = dataclasses.replace(
            self.node.limits, max_connections=new.p2p.max_connections,
            max_handshakes=new.p2p.max_handshakes)
        if self.discovery is not None:
            self.discovery.exchange = new.p2p.exchange
            self.discovery.set_static((p.host, p.port) for p in new.p2p.peers)
            self.discovery.set_announce(announce_address(new, self.listen_addresses))
        for hook in self.on_reload:
            result = hook(new)
            if result is not None:
                await result
        log.info("config_reloaded", applied=",".join(applied) or "-",
                 restart_required=",".join(restart) or "-")
        self.notifier.ready(self.status_line())
        return {"applied": applied, "restart_required": restart}


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            out.update(_flatten(getattr(value, f.name), f"{prefix}.{f.name}"))
        return out
    return {prefix: value}


def _diff(old: Config, new: Config) -> list[str]:
    changed: list[str] = []
    for name in ("node", "community", "p2p", "store", "meter", "tariffs"):
        a, b = _flatten(getattr(old, name), name), _flatten(getattr(new, name), name)
        changed += [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    for name in sorted(set(old.sections) | set(new.sections)):
        if old.sections.get(name) != new.sections.get(name):
            changed.append(f"sections.{name}")
    return changed


def announce_address(config: Config, listen: list[str]) -> tuple[str, int] | None:
    """The address to announce: [p2p].announce, else the listen address if it is specific."""
    if config.p2p.announce is not None:
        return config.p2p.announce.host, config.p2p.announce.port
    if config.p2p.host in WILDCARD_HOSTS or not listen:
        return None
    port = int(listen[0].rsplit(":", 1)[1])
    return config.p2p.host, port


def load_identity(config: Config, registry: RevocationRegistry | None = None,
                  ) -> tuple[NodeIdentity, TrustPolicy]:
    """Read keys and credential; check the credential against our own policy.

    The policy's ``is_revoked`` reads ``registry`` (a new, empty one if not
    given), so lists installed there later refuse revoked members at the
    handshake. Raises :class:`KeyFileError` or :class:`ConfigError` with a
    fixable message.
    """
    keys = load_node_keys(config.node.keys_dir)
    cred = load_credential(config.node.credential)
    identity = NodeIdentity(keys, cred)
    registry = registry or RevocationRegistry(config.community.issuers)
    policy = registry.policy(config.community.id)
    if cred.sign_pk != keys.signing.public or cred.noise_pk != keys.noise_public:
        raise KeyFileError(f"{config.node.credential} was issued for other keys than those in "
                           f"{config.node.keys_dir}")
    try:
        policy.check(cred, time.time())
    except CredentialError as exc:
        raise ConfigError(f"our credential {config.node.credential} is not acceptable: {exc}") from exc
    return identity, policy


async def _open_meter(ctx: DaemonContext) -> None:
    """Create the configured meter and keep reading it into the store."""
    import meter_drivers
    from store import ReadingRecord

    cfg = ctx.config.meter
    if cfg.driver is None:
        return
    try:
        driver = meter_drivers.create_driver(cfg.driver, dict(cfg.options))
    except meter_drivers.DriverConfigError as exc:
        raise ConfigError(f"[meter]: {exc}") from exc
    ctx.meter = meter_drivers.MonitoredMeter(driver)
    meter_id = ctx.identity.credential.metering_point

    async def poll() -> None:
        try:
            while True:
                r = await ctx.meter.read()
                rec = ReadingRecord(meter_id, r.ts, r.import_wh, r.export_wh, r.power_w)
                await trio.to_thread.run_sync(ctx.repo.add_readings, [rec])
                ctx.node.events.publish("meter_reading", ts=r.ts, import_wh=r.import_wh,
                                        export_wh=r.export_wh, power_w=r.power_w)
                await trio.sleep(cfg.interval)
        finally:
            with trio.CancelScope(shield=True):
                await ctx.meter.aclose()

    ctx.nursery.start_soon(poll)


async def _handle_signals(ctx: DaemonContext, receiver: Any) -> None:
    async for signum in receiver:
        if signum == signal.SIGHUP:
            log.info("signal", name="SIGHUP", action="reload")
            try:
                await ctx.reload()
            except ConfigError:
                pass  # logged by reload(); keep running on the old configuration
            except Exception as exc:  # noqa: BLE001 - e.g. a reload hook's bug: keep running
                log.exception("config_reload_failed", exc)
        else:
            log.info("signal", name=signal.Signals(signum).name, action="stop")
            ctx.stop()


async def run_daemon(
    config: Config,
    *,
    components: list[Component] | None = None,
    notifier: Notifier | None = None,
    control: ControlServer | None = None,
    task_status: trio.TaskStatus[DaemonContext] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until SIGTERM/SIGINT or ``ctx.stop()``; returns after a clean shutdown.

    Raises :class:`P2pdError` (bad keys, unusable paths, port in use, ...)
    before READY if the daemon cannot start.
    """
    log.setup(config.node.log_level)
    notifier = notifier or Notifier()
    components = load_components() if components is None else components
    for d in (config.node.state_dir, config.node.runtime_dir):
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as exc:
            raise P2pdError(f"cannot create {d}: {exc.strerror}") from exc
    revocations = RevocationRegistry(config.community.issuers)
    identity, policy = load_identity(config, revocations)
    import store

    try:
        repo = await trio.to_thread.run_sync(store.open_repository, config.store.url)
    except store.StoreError as exc:
        raise P2pdError(f"cannot open store {config.store.url}: {exc}") from exc
    log.info("starting", member=identity.member_id, community=policy.community,
             store=config.store.url.split("://")[0])
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        try:
            limits = NodeLimits(max_connections=config.p2p.max_connections,
                                max_handshakes=config.p2p.max_handshakes)
            async with open_node(identity, policy, limits=limits) as node:
                async with trio.open_nursery() as nursery:
                    # The control server counts its internal errors with the
                    # node's counters, so `p2pctl status` shows them.
                    control = control or ControlServer(counters=node.counters)
                    ctx = DaemonContext(config, identity, policy, repo, node, control, nursery,
                                        notifier, revocations=revocations)
                    nursery.start_soon(_handle_signals, ctx, signals)
                    try:
                        listeners = await nursery.start(serve_p2p, node, config.p2p.host, config.p2p.port)
                    except OSError as exc:
                        raise P2pdError(f"cannot listen on {config.p2p.host}:{config.p2p.port}: "
                                        f"{exc.strerror}") from exc
                    ctx.listen_addresses = [
                        "{}:{}".format(*lst.socket.getsockname()[:2]) for lst in listeners]
                    ctx.discovery = Discovery(
                        node, static_peers=[(p.host, p.port) for p in config.p2p.peers],
                        announce=announce_address(config, ctx.listen_addresses),
                        exchange=config.p2p.exchange)
                    await nursery.start(ctx.discovery.run)
                    await _open_meter(ctx)
                    register_builtin_methods(ctx.control, ctx)
                    for component in components:
                        await component.start(ctx)
                        log.info("component_started", name=component.name)
                    await nursery.start(serve_control, ctx.control, config.node.control_socket)
                    await nursery.start(notifier.serve_watchdog)
                    notifier.ready(ctx.status_line())
                    log.info("ready", member=identity.member_id, listen=",".join(ctx.listen_addresses),
                             control=str(config.node.control_socket))
                    task_status.started(ctx)
                    nursery.start_soon(_report_status, ctx)
                    await ctx._stop.wait()
                    notifier.stopping()
                    log.info("stopping", sessions=len(node.sessions))
                    # Close sessions first: inbound ones run in the listener's
                    # tasks, which the cancel below would end without a Close.
                    await node.aclose()
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(repo.close)
    log.info("stopped")


async def _report_status(ctx: DaemonContext) -> None:
    """Keep systemd's STATUS= line current (shown by systemctl status)."""
    last = ""
    while True:
        line = ctx.status_line()
        if line != last:
            ctx.notifier.status(line)
            last = line
        await trio.sleep(5)
