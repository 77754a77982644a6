"""Config sections of the daemon components: key-named errors, defaults, cross-section checks."""

from __future__ import annotations

from typing import Any

import pytest

from p2pd.components import COMPONENTS, SECTIONS
from p2pd.components.policing import LIMITS
from p2pd.components.revocations import RevocationsConfig
from p2pd.components.settlement import SettlementConfig
from p2pd.components.trading import TRADING, TradingConfig, agent_config, market_rules
from p2pd.config import Config, ConfigError, parse_config
from p2pd.net.policing import Policer, PolicingConfig
from protocol import TokenBucket

BASE: dict[str, Any] = {"community": {"id": "c", "issuers": ["ab" * 32]}}


def parse(data: dict[str, Any]) -> Config:
    return parse_config(data, sections=SECTIONS)


def test_each_component_owns_its_section_next_to_its_code() -> None:
    owned = {c.name: c.section.name for c in COMPONENTS if c.section is not None}
    assert owned == {"revocations": "revocations", "policing": "limits", "trading": "trading",
                     "replication": "replication", "broker": "broker",
                     "representative": "representative", "client": "delegation",
                     "settlement": "settlement", "mqtt": "mqtt", "dashboard": "dashboard"}
    for c in COMPONENTS:
        if c.section is not None:
            assert c.section.parse.__module__ == type(c).__module__, c.name
    assert [s.name for s in SECTIONS] == list(owned.values())


def test_defaults_for_missing_sections() -> None:
    cfg = parse(BASE)
    assert cfg.sections["trading"] == TradingConfig()
    assert cfg.sections["limits"] == PolicingConfig()
    assert cfg.sections["settlement"] == SettlementConfig()
    assert cfg.sections["revocations"] == RevocationsConfig()
    rules = market_rules(cfg, TRADING.get(cfg))
    assert (rules.slot_len, rules.gate_closure, rules.max_ahead) == (900, 300, 2 * 86400)


def test_what_is_valid_is_the_list_passed_not_what_was_imported() -> None:
    # Every component module is imported by now; without their sections a
    # component section is still unknown.
    with pytest.raises(ConfigError, match=r"^\[limits\]: unknown section"):
        parse_config({**BASE, "limits": {"gossip_rate": 5.0}}, sections=())
    cfg = parse_config(BASE, sections=())
    assert dict(cfg.sections) == {}
    assert LIMITS.get(cfg) == PolicingConfig() and TRADING.get(cfg) == TradingConfig()
    assert LIMITS.get(parse({**BASE, "limits": {"gossip_rate": 5.0}})) == PolicingConfig(gossip_rate=5.0)
    with pytest.raises(ValueError, match="distinct"):
        parse_config(BASE, sections=(*SECTIONS, TRADING))


@pytest.mark.parametrize("section, body, message", [
    ("trading", {"agent": "yes"}, "[trading].agent: expected true or false"),
    ("trading", {"sell_floor": -1}, "[trading].sell_floor: expected an integer 0..100000000, got -1"),
    ("trading", {"lead_slots": 0}, "[trading].lead_slots: expected an integer 1..96"),
    ("trading", {"role": "seller"}, "[trading].role: unknown key"),
    ("limits", {"gossip_rate": 0}, "[limits].gossip_rate: expected a number in 0.001"),
    ("limits", {"max_excess": 0.5}, "[limits].max_excess: expected an integer 1..1000000000"),
    ("limits", {"ban_base": 100.0, "ban_max": 50.0}, "[limits].ban_max: must be at least ban_base"),
    ("settlement", {"delay_seconds": -1}, "[settlement].delay_seconds: expected an integer 0..86400"),
    ("revocations", {"lists": "a.rl"}, "[revocations].lists: expected a list of strings"),
    ("revocations", ["a.rl"], "[revocations]: expected a table"),
])
def test_each_mistake_names_its_key(section: str, body: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse({**BASE, section: body})
    assert str(info.value).startswith(message), str(info.value)


def test_agent_prices_are_bounded_by_the_tariffs() -> None:
    cfg = parse({**BASE, "tariffs": {"import_price": 139_000, "export_price": 47_000},
                 "trading": {"sell_price": 80_000}})
    agent = agent_config(cfg, TRADING.get(cfg))
    assert (agent.ask, agent.floor, agent.ceiling) == (80_000, 47_000, 139_000)
    for key, value, text in (("sell_floor", 40_000, "is below [tariffs].export_price 47000"),
                             ("buy_ceiling", 150_000, "is above [tariffs].import_price 139000")):
        bad = parse({**BASE, "trading": {key: value}})
        with pytest.raises(ConfigError) as info:
            agent_config(bad, TRADING.get(bad))
        assert str(info.value).startswith(f"[trading].{key}: {value} {text}"), str(info.value)
    inverted = parse({**BASE, "trading": {"sell_price": 50_000, "sell_floor": 60_000}})
    with pytest.raises(ConfigError, match=r"^\[trading\]: sell_price 50000 is below sell_floor"):
        agent_config(inverted, TRADING.get(inverted))


def test_reloaded_limits_apply_to_existing_buckets() -> None:
    from p2pd.components.policing import apply_limits

    policer = Policer.__new__(Policer)  # only the parts apply_limits touches
    policer.config = PolicingConfig()
    policer.pacer = type("P", (), {"config": None})()
    state = type("S", (), {"buckets": {"gossip": TokenBucket.full(50.0, 100.0, 0.0)}})()
    policer.members = {"bob": state}  # type: ignore[dict-item]
    apply_limits(policer, PolicingConfig(gossip_rate=2.0, burst_seconds=3.0))
    bucket = state.buckets["gossip"]
    assert (bucket.rate, bucket.burst, bucket.tokens) == (2.0, 6.0, 6.0)
    assert policer.config.gossip_rate == 2.0 and policer.pacer.config is policer.config
