"""Dollar budgets and per-user caps, as teams and finance see them: real gateway processes and
redis-server, the mock upstream, the official openai SDK. Expected costs are computed here from
the usage the clients received and the list prices, independently of the gateway's code."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis
from openai.types import CompletionUsage
from prometheus_client.parser import text_string_to_metric_families

from gateway.mock import MockUpstream
from tests.support.gateway_proc import UPSTREAM_KEY, RunningGateway, base_config, token
from tests.support.gateway_subprocess import GatewayProcess
from tests.support.jobs import reconcile_until_settled, usage
from tests.support.redis_proc import RedisProcess
from tests.test_batches_gateway import chat_lines, submit
from tests.test_faults import access_records
from tests.test_quota_gateway import MESSAGES, store_section, wait_until

ROOT = Path(__file__).resolve().parent.parent

# USD per 1M tokens, as a team's operator would write them.
PRICES: dict[str, dict[str, Any]] = {
    "gpt-4o-mini": {"input": 0.15, "cached_input": 0.075, "output": 0.60, "batch": 0.5},
    "o3-mini": {"input": 1.10, "cached_input": 0.55, "output": 4.40},
    "o3": {"input": 2.00, "cached_input": 0.50, "output": 8.00, "service_tiers": {"flex": 0.5}},
}


def expected_nano(model: str, usage: CompletionUsage, factor: Fraction = Fraction(1)) -> int:
    """What the usage costs in nano-dollars, rounded up per request (the documented unit)."""
    price = PRICES[model]
    per_token = {
        k: Fraction(str(price.get(k, price["input"]))) * 1000
        for k in ("input", "cached_input", "output")
    }
    cached = 0
    if usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens:
        cached = usage.prompt_tokens_details.cached_tokens
    exact = (
        per_token["input"] * (usage.prompt_tokens - cached)
        + per_token["cached_input"] * cached
        + per_token["output"] * usage.completion_tokens
    ) * factor
    return math.ceil(exact)


def priced_teams(
    team_rules: list[dict[str, Any]], user_rules: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    ml: dict[str, Any] = {"models": ["*"], "quotas": team_rules}
    if user_rules is not None:
        ml["user_quotas"] = user_rules
    return {"ml": ml, "free": {"models": ["*"]}}


def budget_config(upstream_url: str, redis_server: RedisProcess, **teams: Any) -> dict[str, Any]:
    return base_config(
        upstream_url,
        store=store_section(redis_server),
        pricing={"models": PRICES},
        teams=teams["teams"],
        logging={"level": "WARNING", "access_log": False},
    )


#: $5 a month: room for every request of a test that checks prices, not caps.
MONTHLY = [{"metric": "cost_usd", "limit": 5, "window": "month"}]


async def priced_gateway(
    make_gateway: Any,
    redis_server: RedisProcess,
    team_rules: list[dict[str, Any]] = MONTHLY,
    **sections: Any,
) -> RunningGateway:
    """An in-process gateway on the test's Redis with ``PRICES`` and ``team_rules`` on ml."""
    gw: RunningGateway = await make_gateway(
        store=store_section(redis_server),
        pricing={"models": PRICES},
        teams=priced_teams(team_rules),
        **sections,
    )
    return gw


async def stored(
    client: aioredis.Redis, prefix: str, pattern: str, team: str = "ml"
) -> tuple[int, int]:
    used = reserved = 0
    async for key in client.scan_iter(match=f"{prefix}:{{{team}}}:q:{pattern}"):
        values = await client.hgetall(key)
        used += int(values.get(b"used", 0))
        reserved += int(values.get(b"reserved", 0))
    return used, reserved


async def cost_metric(root: str, team: str = "ml") -> float:
    async with aiohttp.ClientSession() as s, s.get(root + "/metrics") as resp:
        text = await resp.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "gateway_cost_usd":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("team") == team:
                    total += sample.value
    return total


def sdk(url: str, team: str = "ml", user: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key=token(team, user=user), max_retries=0)


# --- 200 concurrent requests against $0.05 a day, three gateway processes ------------------


@pytest.mark.slow
async def test_dollar_budget_holds_to_the_nano_dollar_across_three_replicas(
    upstream: MockUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    config = budget_config(
        upstream.url,
        redis_server,
        teams=priced_teams([{"metric": "cost_usd", "limit": 0.05, "window": "day"}]),
    )
    prefix = config["store"]["key_prefix"]
    replicas = [GatewayProcess(config, tmp_path, f"gw{i}") for i in range(3)]
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        clients = [sdk(r.url) for r in replicas]
        mock = {"x-mock-completion-tokens": "1000"}

        async def one(i: int) -> CompletionUsage | None:
            client = clients[i % 3]
            try:
                if i % 2:
                    stream = await client.chat.completions.create(
                        model="gpt-4o-mini",
                        messages=MESSAGES,
                        stream=True,
                        stream_options={"include_usage": True},
                        extra_headers=mock,
                    )
                    usage = None
                    async for chunk in stream:
                        usage = chunk.usage or usage
                    return usage
                done = await client.chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES, extra_headers=mock
                )
                return done.usage
            except openai.RateLimitError:
                return None

        usages = await asyncio.gather(*(one(i) for i in range(200)))
        spent = sum(expected_nano("gpt-4o-mini", u) for u in usages if u is not None)
        assert spent <= 50_000_000, f"spent ${spent / 1e9:.9f} of $0.05"
        assert spent >= 45_000_000, f"only ${spent / 1e9:.9f} of $0.05 was reachable"
        check = aioredis.Redis.from_url(redis_server.url)
        try:
            assert await stored(check, prefix, "cost_usd:day:*") == (spent, 0)
        finally:
            await check.aclose()
        metric = sum([await cost_metric(r.url.removesuffix("/v1")) for r in replicas])
        assert metric == pytest.approx(spent / 1e9, abs=1e-9)
    finally:
        for r in replicas:
            r.stop()


# --- prices: cached prompt, reasoning, service tier ----------------------------------------


async def test_cached_prompt_tokens_are_priced_at_the_cached_price(
    make_gateway: Any, redis_server: RedisProcess, redis_client: aioredis.Redis
) -> None:
    gw = await priced_gateway(make_gateway, redis_server)
    messages = [{"role": "user", "content": "word " * 400}]
    answer = await sdk(gw.url).chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        max_completion_tokens=50,
        extra_headers={"x-mock-cached-tokens": "256"},
    )
    assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens_details.cached_tokens == 256
    cost = expected_nano("gpt-4o-mini", answer.usage)
    uncached = math.ceil(
        Fraction("0.15") * 1000 * answer.usage.prompt_tokens
        + Fraction("0.60") * 1000 * answer.usage.completion_tokens
    )
    assert cost < uncached  # the discount is real, so the test can tell the prices apart
    prefix = gw.config.store.key_prefix
    assert await stored(redis_client, prefix, "cost_usd:month:*") == (cost, 0)
    assert await cost_metric(gw.root) == pytest.approx(cost / 1e9, abs=1e-12)


async def test_reasoning_tokens_are_priced_as_output(
    make_gateway: Any, redis_server: RedisProcess, redis_client: aioredis.Redis
) -> None:
    gw = await priced_gateway(make_gateway, redis_server)
    answer = await sdk(gw.url).chat.completions.create(
        model="o3-mini",
        messages=MESSAGES,
        max_completion_tokens=2000,
        extra_headers={"x-mock-reasoning-tokens": "700", "x-mock-completion-tokens": "30"},
    )
    usage = answer.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 700
    assert usage.completion_tokens == 730
    cost = expected_nano("o3-mini", usage)
    assert cost >= 730 * 4400  # every reasoning token at the output price
    prefix = gw.config.store.key_prefix
    assert await stored(redis_client, prefix, "cost_usd:month:*") == (cost, 0)


async def test_flex_service_tier_is_priced_with_its_multiplier(
    make_gateway: Any, redis_server: RedisProcess, redis_client: aioredis.Redis
) -> None:
    gw = await priced_gateway(make_gateway, redis_server)
    prefix = gw.config.store.key_prefix
    client = sdk(gw.url)
    costs = []
    for tier in ("flex", None):
        extra = {"service_tier": tier} if tier else {}
        answer = await client.chat.completions.create(
            model="o3", messages=MESSAGES, max_completion_tokens=1000, **extra
        )
        assert answer.usage is not None
        factor = Fraction(1, 2) if tier == "flex" else Fraction(1)
        costs.append(expected_nano("o3", answer.usage, factor))
        assert await stored(redis_client, prefix, "cost_usd:month:*") == (sum(costs), 0)
    assert costs[0] < costs[1]


# --- fail closed on unpriced models ----------------------------------------------------------


async def test_an_unpriced_model_is_refused_before_the_upstream_on_a_team_with_a_cost_rule(
    make_gateway: Any, upstream: MockUpstream, redis_server: RedisProcess
) -> None:
    gw = await priced_gateway(make_gateway, redis_server)
    seen = len(upstream.requests)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        await sdk(gw.url).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert refused.value.status_code == 403
    assert refused.value.code == "model_not_priced"
    assert "gpt-4o" in refused.value.message and "pricing.models" in refused.value.message
    assert len(upstream.requests) == seen  # nothing went upstream
    # The same model on a team without cost rules is served (it just adds no spend).
    answer = await sdk(gw.url, "free").chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert answer.choices[0].message.content
    assert len(upstream.requests) == seen + 1


async def test_a_cost_rule_scoped_to_some_models_leaves_other_unpriced_models_alone(
    make_gateway: Any, redis_server: RedisProcess
) -> None:
    gw = await priced_gateway(make_gateway, redis_server, [{**MONTHLY[0], "models": ["o3*"]}])
    answer = await sdk(gw.url).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert answer.choices[0].message.content


# --- the clamp buys what the dollars left can buy -------------------------------------------


async def test_a_request_near_the_budget_is_clamped_to_what_the_dollars_buy(
    make_gateway: Any, redis_server: RedisProcess, redis_client: aioredis.Redis
) -> None:
    # $0.0006 buys 1,000 output tokens of gpt-4o-mini at most, less the prompt's estimate.
    gw = await priced_gateway(
        make_gateway, redis_server, [{"metric": "cost_usd", "limit": 0.0006, "window": "day"}]
    )
    client = sdk(gw.url)
    answer = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        max_completion_tokens=4000,
        extra_headers={"x-mock-completion-tokens": "5000"},
    )
    limit = int(answer.headers["x-gateway-output-limit"])
    assert 950 <= limit < 1000
    parsed = answer.parse()
    assert parsed.usage is not None and parsed.usage.completion_tokens == limit
    spent = expected_nano("gpt-4o-mini", parsed.usage)
    assert spent <= 600_000
    prefix = gw.config.store.key_prefix
    assert await stored(redis_client, prefix, "cost_usd:day:*") == (spent, 0)
    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert "cost_usd limit $0.0006 per day" in refused.value.message


# --- per-user caps ---------------------------------------------------------------------------


async def test_user_caps_bind_each_user_and_the_team_cap_binds_them_all(
    make_gateway: Any, redis_server: RedisProcess
) -> None:
    gw: RunningGateway = await make_gateway(
        store=store_section(redis_server),
        teams=priced_teams(
            [{"metric": "completion_tokens", "limit": 1200, "window": "day"}],
            [{"metric": "completion_tokens", "limit": 500, "window": "day"}],
        ),
    )
    alice, bob, carol = (
        sdk(gw.url, user="alice"),
        sdk(gw.url, user="bob"),
        sdk(gw.url, user="carol"),
    )

    async def ask(client: openai.AsyncOpenAI, tokens: int) -> int:
        answer = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            max_completion_tokens=tokens,
            extra_headers={"x-mock-completion-tokens": str(tokens)},
        )
        assert answer.usage is not None
        return answer.usage.completion_tokens

    assert await ask(alice, 500) == 500
    with pytest.raises(openai.RateLimitError) as refused:
        await ask(alice, 20)
    assert "user 'alice' of team 'ml'" in refused.value.message
    assert refused.value.code == "insufficient_quota"
    assert await ask(bob, 450) == 450  # bob's own cap is untouched by alice's use
    # The team has 250 left: carol's user cap would allow 500, the team's binds.
    answer = await carol.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        max_completion_tokens=400,
        extra_headers={"x-mock-completion-tokens": "400"},
    )
    assert answer.headers["x-gateway-output-limit"] == "250"
    with pytest.raises(openai.RateLimitError) as refused:
        await ask(bob, 20)
    assert "team 'ml'" in refused.value.message and "user" not in refused.value.message

    async with aiohttp.ClientSession() as s:
        headers = {"Authorization": f"Bearer {token('ml', user='alice')}"}
        async with s.get(gw.url + "/gateway/usage", headers=headers) as resp:
            body = await resp.json()
    assert body["user"] == "alice"
    assert [(r["metric"], r["used"], r["remaining"]) for r in body["user_rules"]] == [
        ("completion_tokens", 500, 0)
    ]
    assert body["rules"][0]["used"] == 1200


async def test_a_team_with_user_caps_refuses_a_token_without_the_user_claim(
    make_gateway: Any,
) -> None:
    gw: RunningGateway = await make_gateway(
        auth={"user_claim": "email"},
        teams=priced_teams([], [{"metric": "requests", "limit": 5, "window": "day"}]),
    )
    with pytest.raises(openai.AuthenticationError) as refused:
        await sdk(gw.url).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert refused.value.status_code == 401
    assert "'email'" in refused.value.message and "per-user quotas" in refused.value.message
    named = openai.AsyncOpenAI(
        base_url=gw.url, api_key=token("ml", user="eve@example.com", user_claim="email")
    )
    answer = await named.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert answer.choices[0].message.content
    # A team without user caps does not need the claim.
    answer = await sdk(gw.url, "free").chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert answer.choices[0].message.content


@pytest.mark.slow
async def test_one_users_concurrent_requests_over_three_replicas_never_pass_the_user_cap(
    upstream: MockUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    config = base_config(
        upstream.url,
        store=store_section(redis_server),
        teams=priced_teams(
            [{"metric": "completion_tokens", "limit": 1_000_000, "window": "day"}],
            [{"metric": "completion_tokens", "limit": 3000, "window": "day"}],
        ),
        logging={"level": "WARNING", "access_log": False},
    )
    prefix = config["store"]["key_prefix"]
    replicas = [GatewayProcess(config, tmp_path, f"gw{i}") for i in range(3)]
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        clients = [sdk(r.url, user="dana") for r in replicas]

        async def one(i: int) -> int:
            try:
                answer = await clients[i % 3].chat.completions.create(
                    model="gpt-4o-mini",
                    messages=MESSAGES,
                    max_completion_tokens=400,
                    extra_headers={"x-mock-completion-tokens": "400"},
                )
            except openai.RateLimitError:
                return 0
            return answer.usage.completion_tokens if answer.usage else 0

        received = await asyncio.gather(*(one(i) for i in range(60)))
        assert 3000 - 16 <= sum(received) <= 3000
        check = aioredis.Redis.from_url(redis_server.url)
        try:
            user_used = await stored(check, prefix, "u:dana:completion_tokens:day:*")
            team_used = await stored(check, prefix, "completion_tokens:day:*")
        finally:
            await check.aclose()
        assert user_used == (sum(received), 0)
        assert team_used == (sum(received), 0)
    finally:
        for r in replicas:
            r.stop()


def test_gateway_usage_cli_shows_a_users_rules(redis_server: RedisProcess, tmp_path: Path) -> None:
    import yaml

    config = base_config(
        "http://127.0.0.1:9/v1",
        store=store_section(redis_server),
        pricing={"models": PRICES},
        teams=priced_teams(
            [{"metric": "cost_usd", "limit": 250, "window": "month"}],
            [{"metric": "cost_usd", "limit": 20, "window": "month"}],
        ),
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "usage",
            "--config",
            str(path),
            "--team",
            "ml",
            "--user",
            "erin",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split()[:3] == ["TEAM", "USER", "METRIC"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1], r[2], r[5]) for r in rows] == [
        ("ml", "-", "cost_usd", "250"),
        ("ml", "erin", "cost_usd", "20"),
    ]


# --- early stops and batches -----------------------------------------------------------------


async def test_a_stopped_stream_costs_its_early_stop_charge_in_dollars_too(
    make_gateway: Any,
    upstream: MockUpstream,
    redis_server: RedisProcess,
    redis_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await priced_gateway(
        make_gateway,
        redis_server,
        [
            {"metric": "cost_usd", "limit": 5, "window": "day"},
            {"metric": "completion_tokens", "limit": 1_000_000, "window": "day"},
        ],
    )
    prefix = gw.config.store.key_prefix
    stream = await sdk(gw.url).chat.completions.create(
        model="o3-mini",
        messages=MESSAGES,
        stream=True,
        extra_headers={"x-mock-chunk-delay-ms": "100"},
    )
    async for _ in stream:
        break
    reserved = (await stored(redis_client, prefix, "cost_usd:day:*"))[1]
    assert reserved >= 25_000 * 4400  # the whole default output budget at the output price
    await stream.close()
    await asyncio.wait_for(upstream.requests[-1].disconnected.wait(), timeout=5)

    async def settled() -> bool:
        return (await stored(redis_client, prefix, "cost_usd:day:*"))[1] == 0

    await wait_until(settled)
    used, held = await stored(redis_client, prefix, "cost_usd:day:*")
    tokens, _ = await stored(redis_client, prefix, "completion_tokens:day:*")
    assert held == 0
    assert 0 < tokens < 500  # charged what it could have produced, not 25,000
    assert used <= reserved // 50
    (record,) = [r for r in access_records(caplog) if r["model"] == "o3-mini"]
    assert record["early_stop_output"] == tokens
    assert record["cost_usd"] == pytest.approx(used / 1e9, abs=1e-9)
    assert used >= tokens * 4400  # the output part at the output price


async def test_a_batch_is_charged_at_the_batch_price(
    make_gateway: Any, upstream: MockUpstream, redis_server: RedisProcess
) -> None:
    gw = await priced_gateway(
        make_gateway,
        redis_server,
        [{"metric": "cost_usd", "limit": 5, "window": "day"}],
        admission={"reconcile_interval_seconds": 3600},
    )
    batch = await submit(gw, chat_lines(10, max_tokens=100))
    held = await usage(gw)
    assert held["cost_usd"]["reserved"] > 0
    await reconcile_until_settled(gw)
    async with openai.AsyncOpenAI(base_url=upstream.url, api_key=UPSTREAM_KEY) as direct:
        done = await direct.batches.retrieve(batch.id)
        assert done.output_file_id is not None
        raw = (await direct.files.content(done.output_file_id)).read()
    lines = [json.loads(line)["response"]["body"]["usage"] for line in raw.splitlines()]
    summed = CompletionUsage(
        prompt_tokens=sum(u["prompt_tokens"] for u in lines),
        completion_tokens=sum(u["completion_tokens"] for u in lines),
        total_tokens=sum(u["total_tokens"] for u in lines),
    )
    after = await usage(gw)
    expected = expected_nano("gpt-4o-mini", summed, Fraction(1, 2))
    assert after["cost_usd"]["used"] == pytest.approx(expected / 1e9, abs=1e-9)
    assert after["cost_usd"]["reserved"] == 0
    assert await cost_metric(gw.root) == pytest.approx(expected / 1e9, abs=1e-9)


async def test_a_batch_mixing_models_is_refused_when_a_cost_rule_prices_it(
    make_gateway: Any, redis_server: RedisProcess
) -> None:
    gw = await priced_gateway(make_gateway, redis_server)
    lines = chat_lines(2) + chat_lines(1, model="o3-mini")
    with pytest.raises(openai.BadRequestError) as refused:
        await submit(gw, lines)
    assert "a batch runs one model" in refused.value.message
