"""Config sections of the daemon components: key-named errors, defaults, cross-section checks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from p2pd.components import sections as components
from p2pd.config import ConfigError, parse_config
from p2pd.net.policing import Policer, PolicingConfig
from protocol import TokenBucket

components.unregister()  # other test modules expect SECTION_VALIDATORS without ours
BASE: dict[str, Any] = {"community": {"id": "c", "issuers": ["ab" * 32]}}


@pytest.fixture(autouse=True)
def _sections() -> Iterator[None]:
    components.register()
    yield
    components.unregister()


def test_defaults_for_missing_sections() -> None:
    cfg = parse_config(BASE)
    assert cfg.sections["trading"] == components.TradingConfig()
    assert cfg.sections["limits"] == PolicingConfig()
    assert cfg.sections["settlement"] == components.SettlementConfig()
    assert cfg.sections["revocations"] == components.RevocationsConfig()
    rules = components.market_rules(cfg, cfg.sections["trading"])
    assert (rules.slot_len, rules.gate_closure, rules.max_ahead) == (900, 300, 2 * 86400)


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
])
def test_each_mistake_names_its_key(section: str, body: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, section: body})
    assert str(info.value).startswith(message), str(info.value)


def test_agent_prices_are_bounded_by_the_tariffs() -> None:
    cfg = parse_config({**BASE, "tariffs": {"import_price": 139_000, "export_price": 47_000},
                        "trading": {"sell_price": 80_000}})
    agent = components.agent_config(cfg, cfg.sections["trading"])
    assert (agent.ask, agent.floor, agent.ceiling) == (80_000, 47_000, 139_000)
    for key, value, text in (("sell_floor", 40_000, "is below [tariffs].export_price 47000"),
                             ("buy_ceiling", 150_000, "is above [tariffs].import_price 139000")):
        bad = parse_config({**BASE, "trading": {key: value}})
        with pytest.raises(ConfigError) as info:
            components.agent_config(bad, bad.sections["trading"])
        assert str(info.value).startswith(f"[trading].{key}: {value} {text}"), str(info.value)
    inverted = parse_config({**BASE, "trading": {"sell_price": 50_000, "sell_floor": 60_000}})
    with pytest.raises(ConfigError, match=r"^\[trading\]: sell_price 50000 is below sell_floor"):
        components.agent_config(inverted, inverted.sections["trading"])


def test_section_validates_a_plain_mapping() -> None:
    components.unregister()
    cfg = parse_config({**BASE, "limits": {"gossip_rate": 5.0}})
    assert dict(cfg.sections["limits"]) == {"gossip_rate": 5.0}  # read before registration
    assert components.section(cfg, "limits") == PolicingConfig(gossip_rate=5.0)
    assert components.section(cfg, "trading") == components.TradingConfig()


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
