"""What the daemon's components share: their config sections and small helpers.

The components themselves live in ``p2pd/component_*.py`` and
``p2pd/components/settlement.py`` (listed in :data:`p2pd.components.COMPONENTS`).
This module validates their TOML sections (docs/configuration.md):

* ``[trading]`` -> :class:`TradingConfig` (market rules and the agent);
* ``[limits]`` -> :class:`p2pd.net.policing.PolicingConfig`;
* ``[settlement]`` -> :class:`SettlementConfig`;
* ``[revocations]`` -> :class:`RevocationsConfig`;
* ``[broker]``, ``[representative]``, ``[delegation]``, ``[replication]`` ->
  :class:`BrokerConfig`, :class:`RepresentativeConfig`,
  :class:`DelegationConfig`, :class:`ReplicationConfig` (scenarios S2-S4: what
  runs is decided by the credential's role, see :func:`trading_mode`).

The validators are registered in :data:`p2pd.config.SECTION_VALIDATORS` when
this module is imported (every component module imports it). Checks that
need two sections, such as agent prices against ``[tariffs]``, run when the
component starts (:func:`agent_config`) and raise the same key-named
:class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from p2pd.config import SECTION_VALIDATORS, Config, Table
from p2pd.control.server import ControlServer
from p2pd.errors import ConfigError
from p2pd.market.settlement import Tariff
from p2pd.net.policing import PolicingConfig
from p2pd.roles.agent import AgentConfig, AgentConfigError
from p2pd.roles.trading import MarketRules
from protocol import ID_PATTERN, MAX_HOPS, MAX_PRICE, MAX_WH

DAY = 86400


@dataclass(frozen=True)
class TradingConfig:
    """``[trading]``: market rules beyond [community], and the automatic agent.

    Prices are money units per kWh (docs/settlement.md); ``None`` takes the
    agent's defaults, derived from ``[tariffs]``.
    """

    # Defaults come from the objects these keys configure, so there is one
    # source of truth for each (AgentConfig for the agent, MarketRules for
    # the market).
    agent: bool = AgentConfig.enabled
    lead_slots: int = AgentConfig.lead_slots
    min_wh: int = AgentConfig.min_wh
    sell_price: int | None = AgentConfig.sell_price
    sell_floor: int | None = AgentConfig.sell_floor
    buy_ceiling: int | None = AgentConfig.buy_ceiling
    post_bids: bool = AgentConfig.post_bids
    bid_price: int | None = AgentConfig.bid_price
    ticks_per_slot: int = AgentConfig.ticks_per_slot
    max_takes_per_tick: int = AgentConfig.max_takes_per_tick
    max_ahead_seconds: int = MarketRules.max_ahead
    gossip_hops: int = MarketRules.hops
    take_timeout: float = MarketRules.take_timeout
    take_attempts: int = MarketRules.take_attempts


@dataclass(frozen=True)
class SettlementConfig:
    """``[settlement]``: when each slot is settled and how far back to catch up."""

    enabled: bool = True
    delay_seconds: int = 120
    """Wait this long after a slot ends for the readings around its end."""
    backfill_seconds: int = 2 * DAY
    """On the first start, settle slots this far back (if readings exist)."""
    reading_gap_seconds: int = 3600
    """Readings are looked up this far either side of a slot boundary; a slot
    still without readings at both ends this long after it ended is skipped."""


@dataclass(frozen=True)
class RevocationsConfig:
    """``[revocations]``: revocation list files installed at start."""

    lists: tuple[str, ...] = ()
    """Paths (relative to the config file) of lists, raw bytes or hex text."""


@dataclass(frozen=True)
class BrokerConfig:
    """``[broker]``: on a broker, the auction; on a prosumer, the broker it trades through (S4)."""

    member: str | None = None
    """Prosumers and representatives: the broker's member id. Unset: no broker."""
    sign_timeout: float = 10.0
    """Broker: how long a match waits for both countersignatures."""
    submit_timeout: float = 5.0
    """Parties: how long a submission waits for BrokerAccepted before falling back."""
    place_before_gate: int = 300
    """Prosumers (S4): send each slot's order this many seconds before gate closure."""


@dataclass(frozen=True)
class RepresentativeConfig:
    """``[representative]``: how a representative trades for its clients (S2, S3)."""

    broker: str | None = None
    """S3: submit aggregated orders to this broker. Unset: S2, trade directly."""
    ask: int | None = None
    """Price of clients' surplus in S2 (at least each client's min_sell_price);
    default the midpoint of the [tariffs]."""
    take_timeout: float = 5.0
    submit_before_gate: int = 60
    """S3: submit aggregated orders this many seconds before gate closure."""


@dataclass(frozen=True)
class DelegationConfig:
    """``[delegation]``: a prosumer lets its representative trade for it (S2, S3)."""

    representative: str | None = None
    """The representative's member id. Unset: no delegation."""
    max_wh_per_slot: int = 10_000
    min_sell_price: int | None = None
    """Default: [tariffs].export_price."""
    max_buy_price: int | None = None
    """Default: [tariffs].import_price."""
    valid_seconds: int = 30 * DAY
    """Each delegation signed is valid this long; a new one is signed a day before it ends."""
    report_before_gate: int = 900
    """Send each slot's meter report this many seconds before gate closure."""


@dataclass(frozen=True)
class ReplicationConfig:
    """``[replication]``: the receipt log, its replicas and head gossip (every node)."""

    enabled: bool = True
    replicas: int = 3


def _member(t: Table, key: str) -> str | None:
    value: str | None = t.string(key, None, max_len=64)
    if value is not None and not re.fullmatch(ID_PATTERN, value):
        raise t.error(key, f"expected a member id (letters, digits and . _ : -), got {value!r}")
    return value


def _broker(data: dict[str, Any]) -> BrokerConfig:
    t = Table("broker", data)
    d = BrokerConfig()
    cfg = BrokerConfig(
        member=_member(t, "member"),
        sign_timeout=t.number("sign_timeout", d.sign_timeout, 0.1, 300.0),
        submit_timeout=t.number("submit_timeout", d.submit_timeout, 0.1, 300.0),
        place_before_gate=t.integer("place_before_gate", d.place_before_gate, 1, DAY),
    )
    t.finish()
    return cfg


def _representative(data: dict[str, Any]) -> RepresentativeConfig:
    t = Table("representative", data)
    d = RepresentativeConfig()
    cfg = RepresentativeConfig(
        broker=_member(t, "broker"), ask=_price(t, "ask"),
        take_timeout=t.number("take_timeout", d.take_timeout, 0.1, 300.0),
        submit_before_gate=t.integer("submit_before_gate", d.submit_before_gate, 1, DAY),
    )
    t.finish()
    return cfg


def _delegation(data: dict[str, Any]) -> DelegationConfig:
    t = Table("delegation", data)
    d = DelegationConfig()
    cfg = DelegationConfig(
        representative=_member(t, "representative"),
        max_wh_per_slot=t.integer("max_wh_per_slot", d.max_wh_per_slot, 1, MAX_WH),
        min_sell_price=_price(t, "min_sell_price"), max_buy_price=_price(t, "max_buy_price"),
        valid_seconds=t.integer("valid_seconds", d.valid_seconds, 3600, 366 * DAY),
        report_before_gate=t.integer("report_before_gate", d.report_before_gate, 1, DAY),
    )
    t.finish()
    return cfg


def _replication(data: dict[str, Any]) -> ReplicationConfig:
    t = Table("replication", data)
    cfg = ReplicationConfig(enabled=t.boolean("enabled", True), replicas=t.integer("replicas", 3, 0, 16))
    t.finish()
    return cfg


def trading_mode(config: Config, role: str) -> str:
    """What this node runs (docs/configuration.md, "Roles"): one of

    ``"broker"`` (role broker), ``"representative"`` (role representative;
    S3 if ``[representative] broker`` is set), ``"delegated"`` (a prosumer
    with ``[delegation] representative``: its representative trades, the
    agent is off), ``"brokered"`` (a prosumer with ``[broker] member``: S4,
    the agent only trades what the broker cannot), or ``"direct"`` (S1).
    Raises :class:`ConfigError` for a combination that makes no sense.
    """
    delegation: DelegationConfig = section(config, "delegation")
    broker: BrokerConfig = section(config, "broker")
    if role in ("broker", "representative"):
        if delegation.representative is not None:
            raise ConfigError(f"[delegation].representative: a {role} does not delegate")
        return role
    if delegation.representative is not None and broker.member is not None:
        raise ConfigError("[delegation].representative and [broker].member: choose one "
                          "(a client's representative deals with the broker)")
    if delegation.representative is not None:
        return "delegated"
    return "brokered" if broker.member is not None else "direct"


def _price(t: Table, key: str) -> int | None:
    value: int | None = t.integer(key, None, 0, MAX_PRICE)
    return value


def _trading(data: dict[str, Any]) -> TradingConfig:
    t = Table("trading", data)
    d = TradingConfig()
    cfg = TradingConfig(
        agent=t.boolean("agent", d.agent),
        lead_slots=t.integer("lead_slots", d.lead_slots, 1, 96),
        min_wh=t.integer("min_wh", d.min_wh, 1, MAX_WH),
        sell_price=_price(t, "sell_price"),
        sell_floor=_price(t, "sell_floor"),
        buy_ceiling=_price(t, "buy_ceiling"),
        post_bids=t.boolean("post_bids", d.post_bids),
        bid_price=_price(t, "bid_price"),
        ticks_per_slot=t.integer("ticks_per_slot", d.ticks_per_slot, 1, 60),
        max_takes_per_tick=t.integer("max_takes_per_tick", d.max_takes_per_tick, 1, 1000),
        max_ahead_seconds=t.integer("max_ahead_seconds", d.max_ahead_seconds, 60, 7 * DAY),
        gossip_hops=t.integer("gossip_hops", d.gossip_hops, 0, MAX_HOPS),
        take_timeout=t.number("take_timeout", d.take_timeout, 0.1, 300.0),
        take_attempts=t.integer("take_attempts", d.take_attempts, 1, 10),
    )
    t.finish()
    return cfg


def _limits(data: dict[str, Any]) -> PolicingConfig:
    t = Table("limits", data)
    d = PolicingConfig()
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(PolicingConfig):
        default = getattr(d, f.name)
        if isinstance(default, int):
            kwargs[f.name] = t.integer(f.name, default, 1, 10**9)
        elif f.name == "grace":
            kwargs[f.name] = t.number(f.name, default, 0.0, 3600.0)
        else:
            kwargs[f.name] = t.number(f.name, default, 0.001, 10.0**9)
    t.finish()
    cfg = PolicingConfig(**kwargs)
    if cfg.ban_max < cfg.ban_base:
        raise t.error("ban_max", f"must be at least ban_base ({cfg.ban_base:g}), got {cfg.ban_max:g}")
    return cfg


def _settlement(data: dict[str, Any]) -> SettlementConfig:
    t = Table("settlement", data)
    d = SettlementConfig()
    cfg = SettlementConfig(
        enabled=t.boolean("enabled", d.enabled),
        delay_seconds=t.integer("delay_seconds", d.delay_seconds, 0, DAY),
        backfill_seconds=t.integer("backfill_seconds", d.backfill_seconds, 0, 30 * DAY),
        reading_gap_seconds=t.integer("reading_gap_seconds", d.reading_gap_seconds, 1, DAY),
    )
    t.finish()
    return cfg


def _revocations(data: dict[str, Any]) -> RevocationsConfig:
    t = Table("revocations", data)
    cfg = RevocationsConfig(lists=t.strings("lists", max_items=64))
    t.finish()
    return cfg


VALIDATORS: dict[str, Callable[[dict[str, Any]], object]] = {
    "trading": _trading, "limits": _limits, "settlement": _settlement, "revocations": _revocations,
    "broker": _broker, "representative": _representative, "delegation": _delegation,
    "replication": _replication,
}
SECTION_TYPES: dict[str, type] = {
    "trading": TradingConfig, "limits": PolicingConfig, "settlement": SettlementConfig,
    "revocations": RevocationsConfig, "broker": BrokerConfig, "representative": RepresentativeConfig,
    "delegation": DelegationConfig, "replication": ReplicationConfig,
}


def register() -> None:
    """Put this module's validators into :data:`p2pd.config.SECTION_VALIDATORS`."""
    SECTION_VALIDATORS.update(VALIDATORS)


def unregister() -> None:
    """Remove them again (tests that need a config module without them)."""
    for name, func in VALIDATORS.items():
        if SECTION_VALIDATORS.get(name) is func:
            del SECTION_VALIDATORS[name]


register()


def section(config: Config, name: str) -> Any:
    """``config.sections[name]`` as validated by this module (defaults if absent).

    A section read before the validators were registered is a plain
    mapping; it is validated here, so a component always gets its dataclass.
    """
    value = config.sections.get(name)
    if isinstance(value, SECTION_TYPES[name]):
        return value
    raw = value or {}
    if not isinstance(raw, Mapping):
        raise TypeError(f"[{name}]: expected a table, got {type(raw).__name__}")
    return VALIDATORS[name](dict(raw))


def market_rules(config: Config, trading: TradingConfig) -> MarketRules:
    return MarketRules(slot_len=config.community.slot_seconds,
                       gate_closure=config.community.gate_closure_seconds,
                       max_ahead=trading.max_ahead_seconds, hops=trading.gossip_hops,
                       take_timeout=trading.take_timeout, take_attempts=trading.take_attempts)


def tariff(config: Config) -> Tariff:
    t = config.tariffs
    return Tariff(t.import_price, t.export_price, t.currency)


def agent_config(config: Config, trading: TradingConfig) -> AgentConfig:
    """The agent's settings: [trading] prices bounded by [tariffs].

    Raises :class:`ConfigError` naming the keys, e.g. ``[trading].sell_floor:
    40000 is below [tariffs].export_price 47000``.
    """
    tariffs = config.tariffs
    checks: tuple[tuple[str, int | None, Callable[[int], bool], str], ...] = (
        ("sell_floor", trading.sell_floor, lambda v: v >= tariffs.export_price,
         f"is below [tariffs].export_price {tariffs.export_price}"),
        ("sell_price", trading.sell_price, lambda v: v >= tariffs.export_price,
         f"is below [tariffs].export_price {tariffs.export_price}"),
        ("buy_ceiling", trading.buy_ceiling, lambda v: v <= tariffs.import_price,
         f"is above [tariffs].import_price {tariffs.import_price}"),
        ("bid_price", trading.bid_price, lambda v: v <= tariffs.import_price,
         f"is above [tariffs].import_price {tariffs.import_price}"),
    )
    for key, value, ok, bound in checks:
        if value is not None and not ok(value):
            raise ConfigError(f"[trading].{key}: {value} {bound} (trading would lose against the supplier)")
    try:
        return AgentConfig(
            enabled=trading.agent, lead_slots=trading.lead_slots, min_wh=trading.min_wh,
            export_tariff=tariffs.export_price, retail_tariff=tariffs.import_price,
            sell_price=trading.sell_price, sell_floor=trading.sell_floor,
            buy_ceiling=trading.buy_ceiling, post_bids=trading.post_bids,
            bid_price=trading.bid_price, ticks_per_slot=trading.ticks_per_slot,
            max_takes_per_tick=trading.max_takes_per_tick)
    except AgentConfigError as exc:
        raise ConfigError(f"[trading]: {str(exc).removeprefix('agent config: ')}") from exc


def extend_status(server: ControlServer, key: str, part: Callable[[], Any]) -> None:
    """Make the ``status`` method's result also carry ``key: part()``."""
    method = server.methods["status"]
    inner = method.func

    async def status(**kwargs: Any) -> Any:
        result = inner(**kwargs)
        if inspect.isawaitable(result):
            result = await result
        return {**result, key: part()}

    server.methods["status"] = dataclasses.replace(method, func=status)
