"""What a running daemon gives its components: :class:`DaemonContext`.

One context exists per daemon run (p2pd/daemon.py makes it). Components
(p2pd/components/) and control methods (p2pd/control/) receive it; this
module imports only the layers below them (net, control's server, config).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from p2pd import log
from p2pd.config import Config, Section, load_config
from p2pd.control.server import ControlServer
from p2pd.errors import ConfigError
from p2pd.net.discovery import Discovery
from p2pd.net.identity import NodeIdentity
from p2pd.net.node import Node
from p2pd.net.revocations import RevocationRegistry
from p2pd.notify import Notifier
from p2pd.storage import StoreHealth
from protocol import TrustPolicy

# Config keys applied at run time by the daemon itself; components add theirs
# (e.g. "sections.limits") to ctx.reloadable.
RELOADABLE = {"node.log_level", "p2p.peers", "p2p.announce", "p2p.max_connections",
              "p2p.max_handshakes", "p2p.exchange"}
WILDCARD_HOSTS = {"", "0.0.0.0", "::", "*"}


class Component(Protocol):
    """A part of the daemon (p2pd/components/): named, started once with the context."""

    name: str

    @property
    def section(self) -> Section[Any] | None:
        """The configuration section this component owns, if any."""
        ...

    async def start(self, ctx: DaemonContext) -> None: ...


class CheckedComponent(Component, Protocol):
    """A component whose section needs checks beyond its own keys (other
    sections, the credential, files it names). ``check`` runs in
    :func:`p2pd.daemon.check_startup`, so ``p2pd config check`` refuses what
    ``p2pd run`` would; it changes nothing and raises :class:`ConfigError`
    naming the key."""

    def check(self, config: Config, identity: NodeIdentity) -> None: ...


ReloadHook = Callable[[Config], Awaitable[None] | None]


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
    """Objects components share by name ("market", "policer", ...); see p2pd.components."""
    listen_addresses: list[str] = field(default_factory=list)
    on_reload: list[ReloadHook] = field(default_factory=list)
    reloadable: set[str] = field(default_factory=lambda: set(RELOADABLE))
    sections: tuple[Section[Any], ...] = ()
    """The components' configuration sections: :meth:`reload` validates the file with them."""
    store_health: StoreHealth = field(default_factory=StoreHealth)
    """Whether the store can write (fed by the SQL store's ``on_write``); in ``status``."""
    status_changed: trio.Event = field(default_factory=trio.Event)
    """Set when :meth:`status_line` may have changed between its periodic checks."""
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
        line = f"member {self.identity.member_id}: {len(self.node.sessions)} sessions"
        store = self.store_health.summary()
        return line if store is None else f"{line}; {store}"

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
            new = load_config(path, sections=self.sections)
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
