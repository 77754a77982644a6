"""``p2pd run``: wires configuration, keys, store, node, listener, discovery,
control socket, meter, systemd notification and signals.

Start-up order: the port is bound first (a busy port fails before anything
runs), then the meter, the control methods and every component start, and
only then does the node accept connections and dial peers, so the first
message of every session finds its handler.

The components it runs are the explicit list :data:`p2pd.components.COMPONENTS`
(see that package for what a component may do).

Shutdown (SIGTERM, SIGINT or :meth:`DaemonContext.stop`), in order:
STOPPING=1 and ``stopping``; every session closes with SHUTDOWN (all at
once, at most a second each); the control socket, listener, discovery,
components and the receipt writer stop: the batch of receipts on its way to
disk finishes, every take still waiting for the writer is refused
(``ShuttingDown``: nothing acknowledged is lost, nothing refused was
stored); the node's tasks end; the store is closed; ``stopped``. Store calls
made through ``trio.to_thread.run_sync`` finish first (threads are not
abandoned). With ``stop_timeout`` (``p2pd run``: :data:`STOP_TIMEOUT_S`,
under the unit's ``TimeoutStopSec=30s``) a stop that has not finished in
time (a store thread stuck in I/O on a failing disk) logs ``stop_timeout``
with every thread's stack and exits with status 1 rather than wait for
systemd's SIGKILL. SIGHUP re-reads the configuration
(:meth:`DaemonContext.reload`).

Start-up checks (issue 13): :func:`check_startup` makes every check that
needs no listening socket: directories, keys, credential, store, and each
component's ``check`` (price bounds, revocation lists, role and section
combinations). ``p2pd config check`` runs it and ``run_daemon`` runs it
first, so both refuse the same files with the same key-named
:class:`ConfigError`. What only serving can find out (the port is taken,
the database server is down) is :class:`Unavailable`.
"""

from __future__ import annotations

import errno
import faulthandler
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from p2pd import log
from p2pd.components import COMPONENTS, sections_of
from p2pd.config import Config
from p2pd.context import Component, DaemonContext, announce_address
from p2pd.control.methods import TEST_HOOKS_ENV, register_builtin_methods, register_test_hooks
from p2pd.control.server import ControlServer, serve_control
from p2pd.errors import ConfigError, KeyFileError, P2pdError, Unavailable
from p2pd.events import MeterReading
from p2pd.net.discovery import Discovery
from p2pd.net.identity import NodeIdentity, load_credential, load_node_keys
from p2pd.net.listener import open_p2p_listeners, serve_p2p_listeners
from p2pd.net.node import NodeLimits, open_node
from p2pd.net.revocations import RevocationRegistry
from p2pd.notify import Notifier
from protocol import CredentialError, TrustPolicy

STOP_TIMEOUT_S = 25.0
"""How long ``p2pd run`` lets a stop take before it exits anyway (status 1,
``stop_timeout`` logged): a little under ``TimeoutStopSec=30s`` in
systemd/p2pd.service, so the log says why instead of systemd's SIGKILL."""


class _StopDeadline:
    """A thread that ends the process if the shutdown overruns; trio-independent, so a
    wedged event loop or a store thread stuck in I/O cannot hold it up."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._timer = threading.Timer(seconds, self._overrun)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()

    def _overrun(self) -> None:  # pragma: no cover - ends the process
        log.error("stop_timeout", after_s=self.seconds, action="exit")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(1)


def load_components() -> list[Component]:
    """The components the daemon runs: :data:`p2pd.components.COMPONENTS`, in order."""
    return list(COMPONENTS)

def load_identity(config: Config, registry: RevocationRegistry | None = None,
                  ) -> tuple[NodeIdentity, TrustPolicy]:
    """Read keys and credential; check the credential against our own policy.

    The policy's ``is_revoked`` reads ``registry`` (a new, empty one if not
    given), so lists installed there later refuse revoked members at the
    handshake. Raises :class:`ConfigError` naming ``[node].keys_dir`` or
    ``[node].credential`` with a fixable message (missing, unreadable or
    group/world-readable files, a credential for other keys, from an
    untrusted issuer, for another community or expired).
    """
    try:
        keys = load_node_keys(config.node.keys_dir)
    except KeyFileError as exc:
        raise ConfigError(f"[node].keys_dir: {exc}") from exc
    try:
        cred = load_credential(config.node.credential)
    except KeyFileError as exc:
        raise ConfigError(f"[node].credential: {exc}") from exc
    identity = NodeIdentity(keys, cred)
    registry = registry or RevocationRegistry(config.community.issuers)
    policy = registry.policy(config.community.id)
    if cred.sign_pk != keys.signing.public or cred.noise_pk != keys.noise_public:
        raise ConfigError(f"[node].credential: {config.node.credential} was issued for other keys "
                          f"than those in {config.node.keys_dir}")
    try:
        policy.check(cred, time.time())
    except CredentialError as exc:
        raise ConfigError(f"[node].credential: {config.node.credential} is not acceptable: {exc}") from exc
    return identity, policy


@dataclass(frozen=True)
class Startup:
    """What :func:`check_startup` found: the node's identity and trust policy,
    whose ``is_revoked`` reads ``revocations``."""

    identity: NodeIdentity
    policy: TrustPolicy
    revocations: RevocationRegistry


def check_startup(config: Config, components: Sequence[Component] | None = None) -> Startup:
    """Every check ``p2pd run`` makes before it serves, changing nothing.

    ``[node].state_dir`` must be a writable directory (it holds the keys;
    p2pd never creates it); ``runtime_dir`` a writable directory, or missing
    with a writable parent (``run_daemon`` creates it, mode 0750); keys and
    credential as :func:`load_identity` checks them; ``[store].url`` a
    supported database whose driver is installed and, for a server, that
    answers (:func:`store.probe`); then each component's ``check``
    (:class:`p2pd.context.CheckedComponent`) of ``components`` (default: the
    daemon's). Blocking (files, a database connection). Raises
    :class:`ConfigError` naming the key, or :class:`Unavailable` if the
    database server cannot be reached.
    """
    import store

    components = load_components() if components is None else components
    _check_dir(config.node.state_dir, "[node].state_dir", create=False)
    _check_dir(config.node.runtime_dir, "[node].runtime_dir", create=True)
    revocations = RevocationRegistry(config.community.issuers)
    identity, policy = load_identity(config, revocations)
    with _store_errors(config.store.url):
        store.probe(config.store.url)
    for component in components:
        check = getattr(component, "check", None)
        if check is not None:
            check(config, identity)
    return Startup(identity, policy, revocations)


def _check_dir(path: Path, key: str, *, create: bool) -> None:
    """``path`` is a directory we can write, or (``create``) can be made in one."""
    if not path.exists():
        if not create:
            raise ConfigError(f"{key}: {path} does not exist (create it for the daemon's user, "
                              f"e.g. install -d -m 0700 {path})")
        if not path.parent.is_dir():
            raise ConfigError(f"{key}: {path} does not exist, nor does its parent {path.parent}")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{key}: {path} does not exist and {path.parent} is not writable "
                              f"by uid {os.geteuid()}")
        return
    if not path.is_dir():
        raise ConfigError(f"{key}: {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {path} is not writable by uid {os.geteuid()}")


def _make_runtime_dir(path: Path) -> None:
    """Create ``runtime_dir`` (not its parents) mode 0750 if systemd has not."""
    try:
        path.mkdir(mode=0o750)
    except FileExistsError:
        return
    except OSError as exc:
        raise ConfigError(f"[node].runtime_dir: cannot create {path}: {exc.strerror}") from exc
    path.chmod(0o750)  # whatever the umask (systemd's UMask=0077 would make it 0700)


@contextmanager
def _closed_on_error(listeners: list[trio.SocketListener]) -> Iterator[None]:
    """Close listening sockets nobody serves yet if the start fails before serving them."""
    try:
        yield
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise


def _first_line(text: str, limit: int = 200) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


@contextmanager
def _store_errors(url: str) -> Iterator[None]:
    """Store errors as key-named ones: the URL, driver or schema is the
    configuration's fault; a server that does not answer may come back."""
    import store

    where = f"[store].url: {store.safe_url(url)}"
    try:
        yield
    except (store.StoreURLError, store.SchemaVersionError) as exc:
        raise ConfigError(f"{where}: {_first_line(str(exc))}") from exc
    except store.StoreError as exc:
        raise Unavailable(f"{where}: cannot open the store: {_first_line(str(exc))}") from exc


@contextmanager
def _sole_error() -> Iterator[None]:
    """Re-raise a start-up error alone rather than inside the nurseries' exception groups,
    so the command line prints its one line instead of a traceback."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if leaves and all(isinstance(e, P2pdError) for e in leaves):
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:  # bounded by the group's (finite) size
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(reversed(exc.exceptions))
        else:
            out.append(exc)
    return out


async def _open_meter(ctx: DaemonContext) -> None:
    """Create the configured meter and keep reading it into the store."""
    import meter_drivers
    from store import ReadingRecord, StorageUnavailable

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
                try:
                    r = await ctx.meter.read()
                    rec = ReadingRecord(meter_id, r.ts, r.import_wh, r.export_wh, r.power_w)
                    await trio.to_thread.run_sync(ctx.repo.add_readings, [rec])
                except StorageUnavailable:
                    # A full disk: the store's health logs it once; count
                    # what it costs instead of logging every reading.
                    ctx.node.counters["readings_unstored"] += 1
                except Exception as exc:
                    # Containment: a reading the driver failed to refuse, or a
                    # store that cannot write, costs this reading, not the node.
                    ctx.node.counters["meter_faults"] += 1
                    # The first with its traceback, then one line per 100.
                    total = ctx.node.counters["meter_faults"]
                    if total == 1:
                        log.exception("meter_fault", exc)
                    elif total % 100 == 0:
                        log.warning("meter_fault", error=f"{type(exc).__name__}: {exc}"[:200], total=total)
                else:
                    ctx.node.events.publish(MeterReading(r.ts, r.import_wh, r.export_wh, r.power_w))
                await trio.sleep(cfg.interval)
        finally:
            with trio.CancelScope(shield=True):
                await ctx.meter.aclose()

    ctx.nursery.start_soon(poll)


def _watch_store(ctx: DaemonContext) -> None:
    """Feed the SQL store's write outcomes to ``ctx.store_health``; a change wakes the STATUS= reporter."""
    import store

    if not isinstance(ctx.repo, store.SqlRepository):
        return  # the in-memory store cannot run out of disk
    token = trio.lowlevel.current_trio_token()

    def changed() -> None:  # any thread: the store calls on_write where it ran
        try:
            token.run_sync_soon(lambda: ctx.status_changed.set())
        except trio.RunFinishedError:
            pass

    ctx.store_health.on_change = changed
    ctx.repo.on_write = ctx.store_health.observe


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
    stop_timeout: float | None = None,
    task_status: trio.TaskStatus[DaemonContext] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until SIGTERM/SIGINT or ``ctx.stop()``; returns after a clean shutdown.

    Raises :class:`P2pdError` (bad keys, unusable paths, port in use, ...)
    before READY if the daemon cannot start. ``config`` comes from
    ``load_config(path, sections=...)`` with the sections of ``components``
    (:data:`p2pd.components.SECTIONS` for the default list); reload validates
    the file with the same sections. ``stop_timeout``: seconds a stop may
    take before the process exits anyway (``p2pd run`` passes
    :data:`STOP_TIMEOUT_S`; None, for callers in-process, never exits).
    """
    log.setup(config.node.log_level)
    notifier = notifier or Notifier()
    components = load_components() if components is None else components
    startup = await trio.to_thread.run_sync(check_startup, config, components)
    identity, policy, revocations = startup.identity, startup.policy, startup.revocations
    _make_runtime_dir(config.node.runtime_dir)
    import store

    with _store_errors(config.store.url):
        repo = await trio.to_thread.run_sync(store.open_repository, config.store.url)
    for note in repo.upgrade_notes:  # once, at the start that upgraded the store
        log.info("store_upgraded", note=note)
    log.info("starting", member=identity.member_id, community=policy.community,
             store=config.store.url.split("://")[0])
    deadline = _StopDeadline(stop_timeout) if stop_timeout is not None else None
    with _sole_error(), trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        try:
            limits = NodeLimits(max_connections=config.p2p.max_connections,
                                max_handshakes=config.p2p.max_handshakes)
            async with open_node(identity, policy, limits=limits) as node:
                async with trio.open_nursery() as nursery:
                    # The control server counts its internal errors with the
                    # node's counters, so `p2pctl status` shows them.
                    control = control or ControlServer(counters=node.counters)
                    ctx = DaemonContext(config, identity, policy, repo, node,
                                        control, nursery, notifier,
                                        revocations=revocations, sections=sections_of(components))
                    nursery.start_soon(_handle_signals, ctx, signals)
                    _watch_store(ctx)
                    try:
                        listeners = await open_p2p_listeners(config.p2p.host, config.p2p.port)
                    except OSError as exc:
                        raise _listen_error(config, exc) from exc
                    with _closed_on_error(listeners):
                        ctx.listen_addresses = [
                            "{}:{}".format(*lst.socket.getsockname()[:2]) for lst in listeners]
                        ctx.discovery = Discovery(
                            node, static_peers=[(p.host, p.port) for p in config.p2p.peers],
                            announce=announce_address(config, ctx.listen_addresses),
                            exchange=config.p2p.exchange)
                        await _open_meter(ctx)
                        register_builtin_methods(ctx.control, ctx)
                        if os.environ.get(TEST_HOOKS_ENV) == "1":
                            register_test_hooks(ctx.control, ctx)
                            log.warning("test_hooks_enabled", env=TEST_HOOKS_ENV)
                        for component in components:
                            await component.start(ctx)
                            log.info("component_started", name=component.name)
                        # Only now do sessions open (accepting, dialling): every
                        # message handler and session hook exists, so nothing a
                        # peer sends first (OrdersRequest, HeadGossip) is dropped
                        # as unhandled. Connections made meanwhile wait in the
                        # kernel's listen queue.
                        await nursery.start(serve_p2p_listeners, node, listeners)
                    await nursery.start(ctx.discovery.run)
                    try:
                        await nursery.start(serve_control, ctx.control, config.node.control_socket)
                    except (ConfigError, Unavailable) as exc:
                        raise type(exc)(f"[node].runtime_dir: {exc}") from exc
                    await nursery.start(notifier.serve_watchdog)
                    notifier.ready(ctx.status_line())
                    log.info("ready", member=identity.member_id, listen=",".join(ctx.listen_addresses),
                             control=str(config.node.control_socket))
                    task_status.started(ctx)
                    nursery.start_soon(_report_status, ctx)
                    await ctx._stop.wait()
                    if deadline is not None:
                        deadline.start()
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
    if deadline is not None:
        deadline.cancel()


def _listen_error(config: Config, exc: OSError) -> P2pdError:
    """Why we cannot listen, named by key: a port in use may be freed; the rest is the file's."""
    where = f"cannot listen on {config.p2p.host}:{config.p2p.port}"
    reason = (exc.strerror or str(exc)).lower()
    if exc.errno == errno.EADDRINUSE:
        return Unavailable(f"[p2p].port: {where}: {reason} (another p2pd, or another program?)")
    if exc.errno == errno.EACCES:
        return ConfigError(f"[p2p].port: {where}: {reason} (ports below 1024 need privileges)")
    return ConfigError(f"[p2p].host: {where}: {reason}")


async def _report_status(ctx: DaemonContext) -> None:
    """Keep systemd's STATUS= line current (shown by systemctl status).

    Checked every 5 s, and at once when ``ctx.status_changed`` is set (the
    store starts or stops failing).
    """
    last = ""
    while True:
        line = ctx.status_line()
        if line != last:
            ctx.notifier.status(line)
            last = line
        with trio.move_on_after(5):
            await ctx.status_changed.wait()
        ctx.status_changed = trio.Event()
