"""The dashboard and /metrics as a user meets them: two daemons trade, then a real
headless chromium loads the page (its DOM is checked, its screenshot kept under
test-artefacts/), and plain HTTP GETs read /metrics and try to change things.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from p2pd_test_helpers import DaemonCommunity, trade_between
from prometheus_client.parser import text_string_to_metric_families

from meter_drivers import SimulatedMeter
from p2pd.components.dashboard import parse_dashboard
from p2pd.config import Table
from p2pd.context import DaemonContext
from p2pd.daemon import run_daemon
from p2pd.errors import ConfigError
from p2pd.events import MeterReading
from p2pd.views.summary import day_start
from store import ReadingRecord

ROOT = Path(__file__).resolve().parents[3]
ARTEFACTS = ROOT / "test-artefacts"
WAIT = 15.0
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-quic")


@pytest.fixture
def home() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="p2db", dir="/tmp") as d:
        yield Path(d)


async def http(url: str, method: str = "GET", headers: dict[str, str] | None = None
               ) -> tuple[int, dict[str, str], bytes]:
    """One request with the standard library, in a thread."""
    def call() -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(url, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=WAIT) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()

    return await trio.to_thread.run_sync(call)


async def dashboard_url(ctx: DaemonContext) -> str:
    status = await ctx.control.call("status")
    url: str = status["dashboard"]["urls"][0]
    return url


async def fill_todays_readings(ctx: DaemonContext) -> None:
    """The day so far as the same simulated meter saw it, hour by hour, before its first live reading."""
    async with ctx.node.events.subscribe() as events:
        async for ev in events:
            if isinstance(ev, MeterReading):
                first = ev.ts
                break
    start = day_start(first)
    hours = iter(range(start, first, 900))
    model = SimulatedMeter({"seed": 1, "clock": lambda: next(hours), "origin": start})
    rows = []
    for _ in range(start, first, 900):
        r = await model.read()
        rows.append(ReadingRecord(ctx.identity.credential.metering_point, r.ts, r.import_wh,
                                  r.export_wh, r.power_w))
    await trio.to_thread.run_sync(ctx.repo.add_readings, rows)


async def chromium(*args: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="chr") as profile:
        with trio.fail_after(90):
            done = await trio.run_process(
                ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    out: bytes = done.stdout
    return out


@pytest.mark.slow
async def test_the_page_shows_a_trade_in_a_real_browser(home: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    c = DaemonCommunity(home)
    alice_cfg = c.config("alice", "[dashboard]\nenabled = true\nport = 0\n",
                         meter='driver = "simulated"\ninterval = 0.5\noptions = {seed = 1}')
    async with trio.open_nursery() as daemons:
        alice = await daemons.start(run_daemon, alice_cfg)
        bob = await daemons.start(run_daemon, c.config("bob"))
        with trio.fail_after(WAIT):
            await fill_todays_readings(alice)
        trade = await trade_between(alice, bob, 400)
        url = await dashboard_url(alice)
        assert url.startswith("http://127.0.0.1:")

        dom = (await chromium("--dump-dom", url)).decode()
        assert "<title>p2pd: alice</title>" in dom
        today = trade["slot_start"] < day_start(int(time.time())) + 86400
        trades_table = dom.split('id="trades"', 1)[1].split("</table>", 1)[0]
        if today:
            assert "bob" in trades_table and "0.400 kWh" in trades_table and "sell" in trades_table
        peers_table = dom.split('id="peers"', 1)[1].split("</table>", 1)[0]
        assert "bob" in peers_table
        assert 'id="our-offer">0.600 kWh' in dom
        assert 'id="meter-state">ok' in dom
        assert dom.count('class="import"') == 24 and 'id="day-chart"' in dom

        ARTEFACTS.mkdir(exist_ok=True)
        shot = ARTEFACTS / "dashboard.png"
        shot.unlink(missing_ok=True)
        await chromium(f"--screenshot={shot}", "--window-size=1280,1500", "--hide-scrollbars", url)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        print(f"dashboard screenshot: {shot}")
        alice.stop()
        bob.stop()


async def test_metrics_and_nothing_changes_state(home: Path) -> None:
    c = DaemonCommunity(home)
    alice_cfg = c.config("alice", "[dashboard]\nenabled = true\nport = 0\n",
                         meter='driver = "simulated"\ninterval = 0.2')
    async with trio.open_nursery() as daemons:
        alice = await daemons.start(run_daemon, alice_cfg)
        bob = await daemons.start(run_daemon, c.config("bob"))
        await trade_between(alice, bob, 250)
        base = await dashboard_url(alice)

        code, headers, body = await http(base + "/metrics")
        assert code == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}

        def value(name: str, **labels: str) -> float:
            return samples[(name, tuple(sorted(labels.items())))]

        assert value("p2pd_sessions") == 1 and value("p2pd_sessions_established_total") == 1
        assert value("p2pd_receipts_committed_total") == 1
        assert value("p2pd_store_commit_seconds_count") == 1
        assert value("p2pd_messages_total", direction="in", type="Take", category="trade") == 1
        assert value("p2pd_messages_total", direction="out", type="TradeAccepted",
                     category="trade") == 1
        assert value("p2pd_store_ok") == 1 and value("p2pd_bans_active") == 0
        assert value("p2pd_info", member="alice", community="dt", role="prosumer",
                     version="0.1.0") == 1
        assert ("p2pd_event_loop_lag_seconds_count", ()) in samples
        assert value("p2pd_meter_state", state="starting") + value("p2pd_meter_state", state="ok") \
            + value("p2pd_meter_state", state="retrying") == 1

        # Read-only: every other method is refused, whatever the path.
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            for path in ("/", "/metrics", "/api/household", "/orders"):
                code, headers, _ = await http(base + path, method)
                assert code == 405 and headers["allow"] == "GET, HEAD", (method, path)
        code, _, body = await http(base + "/nothing")
        assert code == 404
        code, headers, body = await http(base + "/", "HEAD")
        assert code == 200 and body == b"" and "default-src 'none'" in headers[
            "content-security-policy"]
        # A page elsewhere that rebinds its name to 127.0.0.1 gets nothing.
        code, _, _ = await http(base + "/api/household", headers={"Host": "evil.example:80"})
        assert code == 421
        code, _, body = await http(base + "/api/household")
        doc = json.loads(body)
        assert doc["member_id"] == "alice" and doc["month"]["sold_wh"] in (250, 0)
        assert len(doc["chart"]) == 24
        alice.stop()
        bob.stop()


def test_dashboard_section() -> None:
    cfg = parse_dashboard(Table("dashboard", {}))
    assert (cfg.enabled, cfg.host, cfg.port, cfg.metrics) == (False, "127.0.0.1", 7480, True)
    with pytest.raises(ConfigError, match="pages"):
        parse_dashboard(Table("dashboard", {"pages": False, "metrics": False}))
    with pytest.raises(ConfigError, match="port"):
        parse_dashboard(Table("dashboard", {"port": 70000}))

