"""``p2pd run``: wires configuration, keys, store, node, listener, discovery,
control socket, meter, systemd notification and signals.

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
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
from typing import Any

import trio

from p2pd import log
from p2pd.components import COMPONENTS, sections_of
from p2pd.config import Config
from p2pd.context import Component, DaemonContext, announce_address
from p2pd.control.methods import TEST_HOOKS_ENV, register_builtin_methods, register_test_hooks
from p2pd.control.server import ControlServer, serve_control
from p2pd.errors import ConfigError, KeyFileError, P2pdError
from p2pd.events import MeterReading
from p2pd.net.discovery import Discovery
from p2pd.net.identity import NodeIdentity, load_credential, load_node_keys
from p2pd.net.listener import serve_p2p
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
    deadline = _StopDeadline(stop_timeout) if stop_timeout is not None else None
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
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
                    if os.environ.get(TEST_HOOKS_ENV) == "1":
                        register_test_hooks(ctx.control, ctx)
                        log.warning("test_hooks_enabled", env=TEST_HOOKS_ENV)
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
