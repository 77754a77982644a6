"""The loopback TCP mode on every core: the community spread over worker processes.

:func:`simulate_workers` (the coordinator, in the ``p2pd sim`` process)
starts ``workers`` processes (``python -m p2pd.sim.worker``,
:func:`serve_worker`) that connect back to it over a loopback socket, and
gives member *i* to worker *i* mod K. Each worker runs its members' nodes
(node, market, store, agent: the daemon's own parts, as in
p2pd/sim/community.py) with a listener on 127.0.0.1; nodes in different
workers talk over real TCP, nodes in one worker too (through their
listeners). The steps, one message each way (pickled, length-prefixed):

1. ``init``: the configuration, the worker's members, the community's
   issuer key (every worker's credentials come from the same issuer) and its
   pseudonym epoch keys (a node keeps the first key it sees for an epoch, so
   every worker must publish the same one);
   the worker starts its nodes and answers ``ready`` with their addresses;
2. ``peers``: every member's address; the worker dials its part of the seeded
   topology (the pairs whose dialer it holds) and answers ``connected``;
3. ``start``: the wall time at which the simulated day starts; every worker
   and the coordinator start their market clocks from it;
4. while it runs, each worker sends a ``status`` four times a second (trades, its
   event loop's lag, takes ended and timed out); the coordinator paces the
   run from them (p2pd/sim/pace.py) and sends ``rescale`` (a new scale from
   a wall time a little ahead, so all clocks switch at one simulated instant);
5. ``finish`` when the coordinator's clock reaches the end (or the pacer
   stops the run): each worker answers ``result`` (its receipts, traffic,
   agent counters, attacks, log counts, CPU), then ``exit``.

Attacks run in worker 0 against its own members. Scenarios S2-S4 run in one
worker (their roles are not split across processes). The coordinator
settles the accounts from every worker's receipts.
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio

from p2pd.sim.community import COMMUNITY, PSEUDONYM_QUOTA, SimConfig, SimError, households
from p2pd.sim.pace import Pacer, SimClock, trio_time_of_wall
from p2pd.sim.results import Interruption, Look, Progress, build_report, peak_rss_bytes, summed
from protocol import PseudonymIssuer, SigningKey, epoch_of
from store import ReceiptRecord

SETUP_S_PER_NODE = 1.0
"""Setup allowance per node (start, listen, dial), on top of :data:`SETUP_S`."""
SETUP_S = 60.0
RESULT_S = 300.0
"""How long the coordinator waits for the workers' results after ``finish``
(a worker may still be staging an attack: up to two simulated hours)."""
STATUS_S = 0.25
"""Wall seconds between a worker's status messages (the pacer looks every 0.5 s at high scales)."""


def default_workers() -> int:
    """The number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class WorkerFailed(SimError):
    """A worker process ended or stopped answering; the message holds the end of its log."""


class Channel:
    """Pickled messages over a byte stream, each after its 4-byte length.

    Only between this process and the workers it started (authenticated by
    a token), so pickle is safe here.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buf = bytearray()
        self._send_lock = trio.Lock()

    async def send(self, msg: dict[str, Any]) -> None:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        async with self._send_lock:
            await self.stream.send_all(len(data).to_bytes(4, "big") + data)

    async def receive(self) -> dict[str, Any]:
        """The next message. Raises EOFError when the other side closed."""
        while True:
            if len(self._buf) >= 4:
                n = int.from_bytes(self._buf[:4], "big")
                if len(self._buf) >= 4 + n:
                    msg = pickle.loads(self._buf[4:4 + n])
                    del self._buf[:4 + n]
                    assert isinstance(msg, dict)
                    return msg
            chunk = await self.stream.receive_some(1 << 20)
            if not chunk:
                raise EOFError("closed")
            self._buf += chunk


class _Worker:
    def __init__(self, index: int, log_path: str, proc: trio.Process) -> None:
        self.index = index
        self.log_path = log_path
        self.proc = proc
        self.chan: Channel | None = None
        self.status: dict[str, Any] = {}
        self.lags: list[float] = []
        self.result: dict[str, Any] | None = None
        self.got_result = trio.Event()

    def tail(self) -> str:
        """The last lines of its log that say something (a traceback's error line)."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            return "(no log)"
        lines = [ln.strip(" |+-\t") for ln in text.splitlines()]
        lines = [ln for ln in lines if ln and ln.strip("^~") and not ln.startswith("File ")]
        return " / ".join(lines[-2:]) if lines else "(no output)"

    async def receive(self) -> dict[str, Any]:
        assert self.chan is not None
        try:
            return await self.chan.receive()
        except (EOFError, trio.BrokenResourceError) as exc:
            raise WorkerFailed(f"worker {self.index} ended: {self.tail()}") from exc


async def simulate_workers(cfg: SimConfig, *, workers: int, progress: Progress | None = None,
                           plot: bool = False, min_time_scale: float, detail: bool = False,
                           log_counts: Callable[[], dict[str, int]] | None = None,
                           interruption: Interruption | None = None) -> dict[str, Any]:
    """Run ``cfg`` over loopback TCP in ``workers`` processes; the report (see the module docstring).

    With ``interruption``, Ctrl-C or SIGTERM ends the run as the pacer's stop
    does: the workers finish and the report covers the slots done (the
    workers ignore SIGINT, which a terminal sends to the whole group).

    Raises :class:`WorkerFailed` if a worker dies or does not answer in time.
    """
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    k = max(1, min(workers, cfg.nodes)) if cfg.scenario == "S1" else 1
    tmp = tempfile.mkdtemp(prefix="p2pd-sim-")
    issuer = SigningKey.generate()
    epoch_keys = pseudonym_keys(cfg, issuer)
    token = os.urandom(16).hex()
    pool: list[_Worker] = []
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        port = listeners[0].socket.getsockname()[1]
        for w in range(k):
            log_path = os.path.join(tmp, f"worker{w}.log")
            with open(log_path, "wb") as log:  # noqa: ASYNC230 - a new local file, once per worker
                proc = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "p2pd.sim.worker", str(port), str(w), token],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            pool.append(_Worker(w, log_path, proc))
        with _setup_deadline(SETUP_S, "start"):
            await _accept(listeners, pool, token)
        for ln in listeners:
            await ln.aclose()
        listeners = []
        store_dir = os.path.join(tmp, "stores")
        os.mkdir(store_dir)
        for wk in pool:
            assert wk.chan is not None
            await wk.chan.send({"type": "init", "cfg": cfg, "members": list(range(wk.index, cfg.nodes, k)),
                                "issuer": issuer.seed(), "epoch_keys": epoch_keys, "store_dir": store_dir,
                                "attacks": wk.index == 0})
        addresses: dict[str, tuple[str, int]] = {}
        ids: dict[int, str] = {}
        with _setup_deadline(SETUP_S + SETUP_S_PER_NODE * cfg.nodes / k, "build the community"):
            for wk in pool:
                ready = await _expect(wk, "ready")
                addresses.update(ready["addresses"])
                ids.update(ready["ids"])
            for wk in pool:
                assert wk.chan is not None
                await wk.chan.send({"type": "peers", "addresses": addresses,
                                    "ids": [ids[i] for i in range(cfg.nodes)]})
            for wk in pool:
                await _expect(wk, "connected")
        setup_s = time.perf_counter() - t0
        try:
            report = await _run(cfg, pool, progress=progress, min_time_scale=min_time_scale,
                                interruption=interruption)
        except BaseExceptionGroup as group:  # one line for the user, not a trio traceback
            failed = group.subgroup(WorkerFailed)
            if failed is None:
                raise
            raise _first(failed) from group
        run_s = time.perf_counter() - t0 - setup_s
    finally:
        with trio.CancelScope(shield=True):
            for ln in listeners:
                await ln.aclose()
            for wk in pool:
                await _stop(wk)
            shutil.rmtree(tmp, ignore_errors=True)
    results = [wk.result for wk in pool if wk.result is not None]
    receipts: dict[bytes, ReceiptRecord] = {}
    traffic = summed(*(r["traffic"] for r in results))
    agents = summed(*(r["agents"] for r in results))
    logs = summed(log_counts() if log_counts else {}, *(r["log_counts"] for r in results))
    attacks: dict[str, dict[str, Any]] = {}
    roles: dict[str, Any] = {}
    for r in results:
        for rec in r["receipts"]:
            receipts.setdefault(rec.trade_id, rec)
        attacks.update(r["attacks"])
        roles = roles or r["roles"]
    slot_len = pool[0].status.get("slot_len", 900) if pool else 900
    homes = households(cfg, slot_len, 0)
    return build_report(
        cfg, homes, list(receipts.values()), slot_len=slot_len, reached=report["reached"], roles=roles,
        traffic=traffic, agents=agents, attacks=attacks, setup_s=setup_s, run_s=run_s,
        wall_s=time.perf_counter() - t0,
        cpu_s=time.process_time() - cpu0 + sum(r["cpu_s"] for r in results),
        peak_rss=max([peak_rss_bytes(), *(r["peak_rss"] for r in results)]), workers=k,
        pace=report["pace"], log_counts=logs, plot=plot, detail=detail,
        stopped=interruption.reason if interruption is not None else None)


def pseudonym_keys(cfg: SimConfig, issuer: SigningKey) -> bytes:
    """The issuer's pseudonym epoch keys for the run's days and the next (orders are posted
    ahead), made once, pickled for the workers (``PseudonymIssuer.keys``)."""
    service = PseudonymIssuer(issuer, COMMUNITY, quota=PSEUDONYM_QUOTA)
    for epoch in range(epoch_of(cfg.run_start), epoch_of(cfg.end) + 2):
        service.epoch_key(epoch)
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
    # cryptography's RSA keys do not pickle; they travel as DER (between our own processes).
    rsa_type = type(next(iter(service.keys.values()))[1].key)
    pickler.dispatch_table = {**copyreg.dispatch_table, rsa_type: _reduce_rsa}
    pickler.dump(service.keys)
    return out.getvalue()


def _reduce_rsa(key: Any) -> tuple[Any, tuple[bytes]]:
    from cryptography.hazmat.primitives import serialization

    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return load_rsa_der, (der,)


def load_rsa_der(der: bytes) -> Any:
    """An RSA private key from PKCS#8 DER (unpickling :func:`pseudonym_keys` in a worker)."""
    from cryptography.hazmat.primitives import serialization

    return serialization.load_der_private_key(der, None)


@contextmanager
def _setup_deadline(seconds: float, what: str) -> Iterator[None]:
    """``trio.fail_after``, raising :class:`WorkerFailed` (one line) instead; unwraps a worker's
    failure from trio's exception groups."""
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise WorkerFailed(f"the workers did not {what} within {seconds:.0f} s") from None
    except BaseExceptionGroup as group:
        failed = group.subgroup(WorkerFailed)
        if failed is None:
            raise
        raise _first(failed) from group


def _first(group: BaseExceptionGroup[WorkerFailed]) -> WorkerFailed:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, WorkerFailed)
    return exc


async def _accept(listeners: list[trio.SocketListener], pool: list[_Worker], token: str) -> None:
    """Wait for every worker's hello. Raises :class:`WorkerFailed` if one exits first."""
    waiting = {wk.index: wk for wk in pool}

    async def watch(wk: _Worker) -> None:
        await wk.proc.wait()
        if wk.chan is None:
            raise WorkerFailed(f"worker {wk.index} exited with status {wk.proc.returncode} before it "
                               f"connected: {wk.tail()}")

    async with trio.open_nursery() as nursery:
        for wk in pool:
            nursery.start_soon(watch, wk)
        while waiting:
            stream = await listeners[0].accept()
            chan = Channel(stream)
            with trio.move_on_after(10):
                hello = await chan.receive()
                found = waiting.get(hello.get("worker", -1)) if hello.get("token") == token else None
                if found is not None:
                    found.chan = chan
                    del waiting[found.index]
                    continue
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def _expect(wk: _Worker, kind: str) -> dict[str, Any]:
    msg = await wk.receive()
    if msg.get("type") == "error":
        raise WorkerFailed(f"worker {wk.index}: {msg['error']}")
    if msg.get("type") != kind:
        raise WorkerFailed(f"worker {wk.index}: expected {kind}, got {msg.get('type')}")
    return msg


async def _run(cfg: SimConfig, pool: list[_Worker], *, progress: Progress | None,
               min_time_scale: float, interruption: Interruption | None) -> dict[str, Any]:
    start_wall = time.time() + 0.5
    for wk in pool:
        assert wk.chan is not None
        await wk.chan.send({"type": "start", "at_wall": start_wall, "scale": cfg.time_scale})
    clock = SimClock(float(cfg.run_start), cfg.time_scale)
    clock.origin = trio_time_of_wall(start_wall, time.time())
    pacer = Pacer(cfg.time_scale, min_time_scale)
    seen = (0, 0)
    async with trio.open_nursery() as nursery:
        for wk in pool:
            nursery.start_soon(_listen, wk)
        if interruption is not None:
            await nursery.start(interruption.watch, lambda: None)  # the loop looks at it
        await trio.sleep_until(clock.origin)
        while clock.now() < cfg.end:
            await trio.sleep(0.25)
            if interruption is not None and interruption.signal is not None:
                break
            now = clock.now()
            trades = sum(wk.status.get("trades", 0) for wk in pool)
            wh = sum(wk.status.get("wh", 0) for wk in pool)
            if progress is not None:
                progress(Look(min(1.0, (now - cfg.run_start) / (cfg.end - cfg.run_start)), min(now, cfg.end), trades,
                              wh, clock.scale))
            ended = (sum(wk.status.get("takes", 0) for wk in pool),
                     sum(wk.status.get("timeouts", 0) for wk in pool))
            lags: list[float] = []
            for wk in pool:
                lags += wk.lags
                wk.lags = []
            decision = pacer.look(time.monotonic(), lags, ended[0] - seen[0], ended[1] - seen[1], now)
            seen = ended
            if decision is not None and decision.rescale is not None:
                at = time.time() + 0.1
                clock.rescale(decision.rescale, at=trio_time_of_wall(at, time.time()))
                for wk in pool:
                    assert wk.chan is not None
                    await wk.chan.send({"type": "rescale", "at_wall": at, "scale": decision.rescale})
            if decision is not None and decision.stop is not None:
                break
        reached = min(cfg.end, int(clock.now()))
        for wk in pool:
            assert wk.chan is not None
            await wk.chan.send({"type": "finish"})
        with trio.fail_after(RESULT_S + 7200 / clock.scale):
            for wk in pool:
                await wk.got_result.wait()
        nursery.cancel_scope.cancel()
    return {"reached": reached, "pace": pacer.report()}


async def _listen(wk: _Worker) -> None:
    while True:
        msg = await wk.receive()
        kind = msg.get("type")
        if kind == "status":
            wk.lags += msg.pop("lags")
            wk.status = msg
        elif kind == "result":
            wk.result = msg
            wk.got_result.set()
            return
        elif kind == "error":
            raise WorkerFailed(f"worker {wk.index}: {msg['error']}")


async def _stop(wk: _Worker) -> None:
    if wk.chan is not None:
        with trio.move_on_after(2):
            try:
                await wk.chan.send({"type": "exit"})
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
    with trio.move_on_after(30 if wk.result is not None else 5):
        await wk.proc.wait()
    if wk.proc.returncode is None:
        wk.proc.kill()
        with trio.move_on_after(5):
            await wk.proc.wait()
    if wk.chan is not None:
        await trio.aclose_forcefully(wk.chan.stream)
