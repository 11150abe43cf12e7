"""The ``pricing`` section and cost rules in the config: validation with exact paths, the
shipped price list, include and override, and the prices a request ends up with."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from gateway.apis import Usage
from gateway.config_loader import ConfigError, load_config, parse_config
from gateway.quota.pricing import UnitPrice
from tests.test_config import SECRET, minimal

ROOT = Path(__file__).resolve().parents[1]
ENV = {"OPENAI_API_KEY": "sk-x", "GATEWAY_JWT_SECRET": SECRET}


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_negative_price_names_its_path() -> None:
    data = minimal(pricing={"models": {"gpt-4o-mini": {"input": -1, "output": 0.6}}})
    with pytest.raises(
        ConfigError, match=r"pricing\.models\.gpt-4o-mini\.input: .*greater than or equal to 0"
    ):
        parse_config(data)


def test_an_unknown_price_key_is_an_error() -> None:
    data = minimal(pricing={"models": {"gpt-4o-mini": {"input": 0.15, "ouput": 0.6}}})
    with pytest.raises(ConfigError, match=r"pricing\.models\.gpt-4o-mini\.ouput: Extra inputs"):
        parse_config(data)


def test_an_unknown_service_tier_is_an_error() -> None:
    data = minimal(
        pricing={"models": {"o3": {"input": 2, "output": 8, "service_tiers": {"turbo": 2}}}}
    )
    with pytest.raises(ConfigError, match=r"pricing\.models\.o3\.service_tiers\.turbo"):
        parse_config(data)


def test_cost_limits_are_dollars_and_token_limits_whole_numbers() -> None:
    rule = {"metric": "cost_usd", "limit": 0.05, "window": "day"}
    config = parse_config(minimal(teams={"ml": {"quotas": [rule]}}))
    assert config.quota_rules("ml")[0].counter_limit == 50_000_000  # nano-dollars
    bad = {"metric": "total_tokens", "limit": 10.5, "window": "day"}
    with pytest.raises(ConfigError, match=r"teams\.ml\.quotas\[0\].*whole number"):
        parse_config(minimal(teams={"ml": {"quotas": [bad]}}))
    huge = {"metric": "cost_usd", "limit": 10_000_000, "window": "month"}
    with pytest.raises(ConfigError, match=r"teams\.ml\.user_quotas\[0\].*at most 9000000 USD"):
        parse_config(minimal(teams={"ml": {"user_quotas": [huge]}}))


def test_the_shipped_price_list_loads_and_prices_the_example_models() -> None:
    config = load_config(ROOT / "config" / "gateway.yaml", env=ENV)
    assert config.pricing.include == "pricing.yaml"
    assert config.pricing.as_of
    for team in config.teams.values():
        for pattern in team.models:
            if "*" not in pattern:
                assert config.pricing.price_of(pattern) is not None, pattern
    mini = config.pricing.price_of("gpt-4o-mini-2024-07-18")
    assert mini is not None and (mini.input, mini.cached_input, mini.output) == (0.15, 0.075, 0.6)
    # Audio and realtime variants are billed differently: left unpriced (fail closed).
    assert config.pricing.price_of("gpt-4o-mini-audio-preview") is None
    assert config.pricing.price_of("gpt-4o-realtime-preview") is None


def test_the_configs_own_prices_override_the_included_list(tmp_path: Path) -> None:
    write(
        tmp_path / "prices.yaml",
        {
            "as_of": "2026-01-01",
            "models": {
                "gpt-4o-mini": {"input": 0.15, "output": 0.6},
                "o3": {"input": 2, "output": 8},
            },
        },
    )
    own = {"include": "prices.yaml", "models": {"gpt-4o-mini": {"input": 0.1, "output": 0.5}}}
    config = load_config(write(tmp_path / "gateway.yaml", minimal(pricing=own)), env=ENV)
    assert [*config.pricing.models] == ["gpt-4o-mini", "o3"]
    price = config.pricing.price_of("gpt-4o-mini")
    assert price is not None and price.input == 0.1
    assert config.pricing.as_of == "2026-01-01"


def test_a_missing_or_bad_included_list_fails_at_start(tmp_path: Path) -> None:
    path = write(tmp_path / "gateway.yaml", minimal(pricing={"include": "nope.yaml"}))
    with pytest.raises(ConfigError, match=r"pricing\.include: cannot read .*nope\.yaml"):
        load_config(path, env=ENV)
    write(tmp_path / "bad.yaml", {"models": {"x": {"input": -3}}, "extra": 1})
    path = write(tmp_path / "gateway.yaml", minimal(pricing={"include": "bad.yaml"}))
    with pytest.raises(ConfigError, match=r"unknown keys extra"):
        load_config(path, env=ENV)
    write(tmp_path / "bad.yaml", {"models": {"x": {"input": -3}}})
    with pytest.raises(ConfigError, match=r"pricing\.models\.x\.input"):
        load_config(path, env=ENV)


def test_unit_prices_in_nano_dollars() -> None:
    config = parse_config(
        minimal(
            pricing={
                "models": {
                    "o3": {
                        "input": 2.0,
                        "cached_input": 0.5,
                        "output": 8.0,
                        "service_tiers": {"flex": 0.5},
                        "batch": 0.5,
                    },
                    "gpt-5-nano": {"input": 0.05, "cached_input": 0.005, "output": 0.4},
                }
            }
        )
    )
    o3 = config.pricing.price_of("o3")
    assert o3 is not None
    standard = UnitPrice.of(o3, service_tier=None, batch=False)
    assert (standard.input, standard.cached_input, standard.output) == (2000, 500, 8000)
    assert UnitPrice.of(o3, service_tier="flex", batch=False).output == 4000
    assert UnitPrice.of(o3, service_tier="priority", batch=False).output == 8000  # no multiplier
    assert UnitPrice.of(o3, service_tier=None, batch=True).output == 4000
    usage = Usage(prompt_tokens=1000, cached_prompt_tokens=400, completion_tokens=100)
    assert standard.cost(usage) == 600 * 2000 + 400 * 500 + 100 * 8000
    nano = config.pricing.price_of("gpt-5-nano")
    assert nano is not None
    flexed = UnitPrice.of(nano, service_tier=None, batch=False)
    assert flexed.cached_input == Decimal(5)
    # A fraction of a nano-dollar per token rounds up per request, never down.
    half = UnitPrice(Decimal("2.5"), Decimal("2.5"), Decimal("0.5"))
    assert half.cost(Usage(prompt_tokens=3, completion_tokens=1)) == 8
    assert half.output_per_token == 1
