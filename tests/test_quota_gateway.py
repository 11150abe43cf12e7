"""Quotas as teams and operators see them: real gateway, real redis-server, real mock upstream,
the official openai SDK."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis

from gateway.mock import MockUpstream
from gateway.quota.store import keys
from tests.support.gateway_proc import RunningGateway, token
from tests.support.quota_view import redis_counter
from tests.support.redis_proc import RedisProcess

MESSAGES = [{"role": "user", "content": "Colour of the sky?"}]
DAY = 86400


def store_section(redis_server: RedisProcess, **extra: Any) -> dict[str, Any]:
    # A generous store timeout: these tests are about exact caps, and a Redis call slowed past
    # the 0.5 s default by a loaded machine would switch to the local fallback (test_faults
    # covers that path with its own timeouts).
    return {
        "redis_url": redis_server.url,
        "key_prefix": "q" + uuid.uuid4().hex[:10],
        "timeout_seconds": 5.0,
        **extra,
    }


def teams(quotas: list[dict[str, Any]], **team: Any) -> dict[str, Any]:
    return {"ml": {"models": ["*"], "quotas": quotas, **team}, "other": {"models": ["*"]}}


async def counter(
    client: aioredis.Redis, gw: RunningGateway, team: str, metric: str, window: str = "day"
) -> tuple[int, int]:
    return await redis_counter(client, gw.config.store.key_prefix, team, metric, window)


async def open_reservations(client: aioredis.Redis, gw: RunningGateway, team: str = "ml") -> int:
    return int(await client.zcard(keys.reservation_index(gw.config.store.key_prefix, team)))


def sdk(gw: RunningGateway, team: str = "ml", retries: int = 0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url, api_key=token(team), max_retries=retries)


async def test_concurrent_requests_never_overshoot_the_completion_cap(
    make_gateway, redis_server: RedisProcess, redis_client: aioredis.Redis
) -> None:
    gw = await make_gateway(
        store=store_section(redis_server),
        teams=teams([{"metric": "completion_tokens", "limit": 10_000, "window": "day"}]),
    )
    client = sdk(gw)
    burn = {"x-mock-completion-tokens": "1000"}  # the model would use far more than allowed

    async def one(i: int) -> int:
        try:
            if i % 2:
                stream = await client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=MESSAGES,
                    max_completion_tokens=700,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_headers=burn,
                )
                usage = None
                async for chunk in stream:
                    usage = chunk.usage or usage
                assert usage is not None
                return usage.completion_tokens
            done = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                max_completion_tokens=700,
                extra_headers=burn,
            )
            assert done.usage is not None
            return done.usage.completion_tokens
        except openai.RateLimitError:
            return 0

    received = await asyncio.gather(*(one(i) for i in range(200)))
    assert sum(received) <= 10_000
    assert sum(received) >= 10_000 - 16  # the cap is used up, not left idle
    used, reserved = await counter(redis_client, gw, "ml", "completion_tokens")
    assert used == sum(received) and reserved == 0
    assert await open_reservations(redis_client, gw) == 0


async def test_clamp_writes_the_field_each_endpoint_uses(
    make_gateway, upstream: MockUpstream, redis_server: RedisProcess
) -> None:
    gw = await make_gateway(
        store=store_section(redis_server),
        teams=teams([{"metric": "completion_tokens", "limit": 1000, "window": "day"}]),
    )
    client = sdk(gw)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=5000
    )
    assert upstream.requests[-1].json["max_tokens"] == 1000  # type: ignore[index]
    assert raw.headers["x-gateway-output-limit"] == "1000"
    await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    sent = upstream.requests[-1].json
    assert sent is not None and 0 < sent["max_completion_tokens"] <= 1000 - 12
    await client.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=4000)
    assert upstream.requests[-1].json["max_output_tokens"] <= 1000  # type: ignore[index]
    await client.completions.create(model="gpt-4o-mini", prompt="hi", max_tokens=30)
    assert upstream.requests[-1].json["max_tokens"] == 30  # type: ignore[index]  # fits: untouched


async def test_reasoning_cap_holds_on_its_own(
    make_gateway, upstream: MockUpstream, redis_server: RedisProcess, redis_client: aioredis.Redis
) -> None:
    gw = await make_gateway(
        store=store_section(redis_server),
        teams=teams(
            [
                {"metric": "reasoning_tokens", "limit": 40, "window": "day"},
                {"metric": "completion_tokens", "limit": 100_000, "window": "day"},
            ]
        ),
        models=[
            {
                "match": ["o[0-9]*"],
                "reasoning": True,
                "default_output_tokens": 1000,
                "min_output_tokens": 4,
            }
        ],
    )
    client = sdk(gw)
    spent = []
    for _ in range(3):
        done = await client.chat.completions.create(
            model="o3-mini", messages=MESSAGES, max_completion_tokens=1000
        )
        assert done.usage is not None and done.usage.completion_tokens_details is not None
        spent.append(done.usage.completion_tokens_details.reasoning_tokens)
    assert spent == [16, 16, 8]  # the third was clamped to the 8 reasoning tokens left
    assert upstream.requests[-1].json["max_completion_tokens"] == 8  # type: ignore[index]
    with pytest.raises(openai.RateLimitError, match="reasoning_tokens limit 40 per day") as info:
        await client.chat.completions.create(model="o3-mini", messages=MESSAGES)
    # Used up until the day ends: OpenAI's semantics for a spent budget, which no SDK retries.
    assert info.value.code == "insufficient_quota" and info.value.type == "insufficient_quota"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert "is used up" in info.value.message
    # A non-reasoning model is not held back by the reasoning cap.
    assert (await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)).choices
    used, _ = await counter(redis_client, gw, "ml", "reasoning_tokens")
    assert used == 40


async def test_429_is_openai_shaped_and_the_sdk_does_not_spin(
    make_gateway,
    upstream: MockUpstream,
    redis_server: RedisProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await make_gateway(
        store=store_section(redis_server),
        teams=teams([{"metric": "completion_tokens", "limit": 20, "window": "day"}]),
    )
    client = sdk(gw, retries=2)
    await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=12
    )
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=100
        )
    error = info.value
    # Used up for hours: OpenAI's insufficient_quota, which no SDK retries.
    assert error.status_code == 429 and error.code == "insufficient_quota"
    assert error.type == "insufficient_quota"
    assert "team 'ml'" in error.message and "completion_tokens limit 20 per day" in error.message
    headers = error.response.headers
    assert headers["x-should-retry"] == "false"
    assert int(headers["retry-after"]) > 60
    assert (
        headers["x-ratelimit-limit-tokens"] == "20"
        and headers["x-ratelimit-remaining-tokens"] == "8"
    )
    rejected = [r for r in caplog.records if getattr(r, "fields", {}).get("status") == 429]
    assert len(rejected) == 1  # x-should-retry: false kept the SDK from retrying
    assert len(upstream.requests) == 1


async def test_every_response_carries_rate_limit_headers_streams_too(
    make_gateway, redis_server: RedisProcess
) -> None:
    gw = await make_gateway(
        store=store_section(redis_server),
        teams=teams(
            [
                {"metric": "completion_tokens", "limit": 5000, "window": "hour"},
                {"metric": "total_tokens", "limit": 100_000, "window": "day"},
                {"metric": "requests", "limit": 100, "window": "minute"},
            ]
        ),
    )
    async with aiohttp.ClientSession() as s:
        for stream in (False, True):
            async with s.post(
                gw.url + "/chat/completions",
                json={
                    "model": "gpt-4o-mini",
                    "messages": MESSAGES,
                    "stream": stream,
                    "max_completion_tokens": 100,
                },
                headers={"Authorization": f"Bearer {token()}"},
            ) as resp:
                assert resp.status == 200
                await resp.read()
                assert resp.headers["x-ratelimit-limit-tokens"] == "5000"
                assert int(resp.headers["x-ratelimit-remaining-tokens"]) <= 4900
                assert resp.headers["x-ratelimit-reset-tokens"].endswith("s")
                assert resp.headers["x-ratelimit-limit-requests"] == "100"
                assert resp.headers["x-ratelimit-remaining-requests"] == (
                    "99" if not stream else "98"
                )


async def test_effort_ceiling_downgrades_or_rejects(make_gateway, upstream: MockUpstream) -> None:
    gw = await make_gateway(
        teams={
            "ml": {"max_reasoning_effort": "low"},
            "strict": {"max_reasoning_effort": "low", "on_effort_exceeded": "reject"},
        }
    )
    await sdk(gw).chat.completions.create(
        model="o3-mini", messages=MESSAGES, reasoning_effort="high"
    )
    assert upstream.requests[-1].json["reasoning_effort"] == "low"  # type: ignore[index]
    await sdk(gw).responses.create(model="gpt-5-mini", input="hi")  # default effort is medium
    assert upstream.requests[-1].json["reasoning"] == {"effort": "low"}  # type: ignore[index]
    await sdk(gw).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES
    )  # not a reasoning model
    assert "reasoning_effort" not in upstream.requests[-1].json  # type: ignore[operator]
    with pytest.raises(openai.BadRequestError, match="above this team's maximum"):
        await sdk(gw, "strict").chat.completions.create(
            model="o3-mini", messages=MESSAGES, reasoning_effort="medium"
        )


async def test_output_ceiling_applies_without_quotas(make_gateway, upstream: MockUpstream) -> None:
    gw = await make_gateway(teams={"ml": {"max_output_tokens": 50}})
    await sdk(gw).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=500
    )
    assert upstream.requests[-1].json["max_completion_tokens"] == 50  # type: ignore[index]
    await sdk(gw).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=10
    )
    assert upstream.requests[-1].json["max_completion_tokens"] == 10  # type: ignore[index]


async def test_upstream_error_releases_and_client_gone_is_charged_a_bound(
    make_gateway, upstream: MockUpstream, redis_server: RedisProcess, redis_client: aioredis.Redis
) -> None:
    gw = await make_gateway(
        store=store_section(redis_server),
        teams=teams([{"metric": "completion_tokens", "limit": 10_000, "window": "day"}]),
    )
    with pytest.raises(openai.InternalServerError):
        await sdk(gw).chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            max_completion_tokens=300,
            extra_headers={"x-mock-status": "500"},
        )
    assert await counter(redis_client, gw, "ml", "completion_tokens") == (0, 0)

    gate = upstream.gate("disconnect")
    async with aiohttp.ClientSession() as s:
        resp = await s.post(
            gw.url + "/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "messages": MESSAGES,
                "stream": True,
                "max_completion_tokens": 300,
            },
            headers={"Authorization": f"Bearer {token()}", "x-mock-gate": "disconnect"},
        )
        await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=5)
        assert await counter(redis_client, gw, "ml", "completion_tokens") == (0, 300)
        resp.close()  # the client goes away mid-stream, the upstream held at its gate
    # The gateway closed the upstream connection without waiting for another event.
    await asyncio.wait_for(upstream.requests[-1].disconnected.wait(), timeout=5)
    gate.release()

    async def settled() -> bool:
        return await open_reservations(redis_client, gw) == 0

    await wait_until(settled)
    # Usage never arrived: charged a bound on what was relayed and generated (quota.early_stop),
    # at least the one event the client read, not the whole reservation; nothing stays reserved.
    used, reserved = await counter(redis_client, gw, "ml", "completion_tokens")
    assert 1 <= used < 300 and reserved == 0


async def wait_until(condition: Any, within_seconds: float = 5.0) -> None:
    """A bounded wait on a condition the test cannot get an event for (another process)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_seconds
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_windows_roll_over_on_the_injected_clock(make_gateway) -> None:
    now = [1_800_000_000.0 - 1_800_000_000.0 % 60 + 30]  # mid-minute
    gw = await make_gateway(
        clock=lambda: now[0],
        teams=teams([{"metric": "requests", "limit": 2, "window": "minute"}]),
    )
    client = sdk(gw)
    for _ in range(2):
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    # A minute window resets within what an SDK waits: a rate limit, not a spent budget.
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.response.headers["retry-after"] == "30"
    assert "x-should-retry" not in info.value.response.headers  # 30 s: a retry will succeed
    now[0] += 30  # exactly the boundary
    await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


async def test_usage_endpoint_reports_each_rule(make_gateway, redis_server: RedisProcess) -> None:
    gw = await make_gateway(
        store=store_section(redis_server),
        teams=teams(
            [
                {"metric": "completion_tokens", "limit": 1000, "window": "day"},
                {"metric": "requests", "limit": 10, "window": "hour", "models": ["gpt-4o*"]},
            ]
        ),
    )
    await sdk(gw).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=100
    )
    async with (
        aiohttp.ClientSession() as s,
        s.get(gw.url + "/gateway/usage", headers={"Authorization": f"Bearer {token()}"}) as resp,
    ):
        assert resp.status == 200
        body = await resp.json()
    assert body["team"] == "ml"
    completion, requests = body["rules"]
    assert (
        completion["used"] == 12 and completion["reserved"] == 0 and completion["remaining"] == 988
    )
    assert requests["used"] == 1 and requests["models"] == ["gpt-4o*"]
    assert completion["resets_at"].endswith("T00:00:00Z")


async def test_defaults_apply_to_teams_without_rules(make_gateway) -> None:
    gw = await make_gateway(
        defaults={"quotas": [{"metric": "requests", "limit": 1, "window": "day"}]},
        teams={"ml": {}, "vip": {"quotas": []}},
    )
    await sdk(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError):
        await sdk(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    for _ in range(3):
        await sdk(gw, "vip").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


@pytest.mark.parametrize("mode", ["local", "open", "closed"])
async def test_redis_outage_follows_on_error_and_recovers(
    make_gateway, tmp_path, mode: str
) -> None:
    from tests.support.redis_proc import free_port

    proc = RedisProcess(port=free_port(), workdir=tmp_path)
    proc.start()
    try:
        gw = await make_gateway(
            store={"redis_url": proc.url, "on_error": mode, "timeout_seconds": 0.5},
            teams=teams([{"metric": "requests", "limit": 3, "window": "day"}]),
        )
        client = sdk(gw)
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        proc.stop()
        if mode == "closed":
            with pytest.raises(openai.InternalServerError) as info:
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            assert info.value.status_code == 503
        elif mode == "open":
            for _ in range(5):  # unmetered while Redis is away
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        else:
            for _ in range(3):  # this replica's own memory enforces the cap meanwhile
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        proc.start()  # same port: the gateway reconnects on its own
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        check = aioredis.Redis.from_url(proc.url)
        try:
            # Redis restarted empty (no persistence): the request after it was counted there.
            assert await counter(check, gw, "ml", "requests") == (1, 0)
        finally:
            await check.aclose()
    finally:
        proc.stop()


async def test_usage_cli_prints_the_same_numbers(
    make_gateway, redis_server: RedisProcess, tmp_path
) -> None:
    import json
    import subprocess
    import sys

    from tests.support.gateway_subprocess import ROOT

    rules = [{"metric": "completion_tokens", "limit": 1000, "window": "day"}]
    gw = await make_gateway(store=store_section(redis_server), teams=teams(rules))
    await sdk(gw).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=100
    )
    config = tmp_path / "gw.yaml"
    config.write_text(
        json.dumps(
            {
                "upstream": {"api_key": "sk-x"},
                "auth": {"hs_secret": "s" * 40},
                "store": {"redis_url": redis_server.url, "key_prefix": gw.config.store.key_prefix},
                "teams": teams(rules),
            }
        )
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "usage", "--config", str(config), "--team", "ml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.strip().splitlines()
    assert header.split()[:8] == [
        "TEAM",
        "METRIC",
        "WINDOW",
        "MODELS",
        "LIMIT",
        "USED",
        "RESERVED",
        "REMAINING",
    ]
    assert row.split()[:8] == ["ml", "completion_tokens", "day", "*", "1000", "12", "0", "988"]
