"""A client that leaves early: the upstream request is closed at once, and the request is
charged a bound on what it could have spent (``gateway.quota.early_stop``), not its whole
reservation. Real gateway, real redis-server, the mock upstream, the official openai SDK."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import openai
import pytest
from pydantic import ValidationError

from gateway.apis.chat import CHAT
from gateway.config import GatewayConfig, ModelProfile, QuotaRule, TeamConfig
from gateway.mock import MockUpstream
from gateway.quota.early_stop import (
    TOKENS_PER_EVENT,
    EarlyStop,
    early_stop_amounts,
    early_stop_output,
)
from gateway.quota.policy import QuotaPlan, plan_request, reserved_amounts
from tests.support.quota_view import open_reservations, usage
from tests.support.redis_proc import RedisProcess
from tests.test_faults import access_records
from tests.test_quota_gateway import MESSAGES, sdk, store_section, teams, wait_until

O3_RESERVATION = 25_000  # the reasoning profile's default_output_tokens
MINI_RESERVATION = 4096  # the default profile's
RATE = 200  # the default max_output_tokens_per_second
CAPS = [
    {"metric": metric, "limit": 1_000_000, "window": "day"}
    for metric in ("completion_tokens", "reasoning_tokens", "total_tokens", "requests")
]


async def settled(gw: Any) -> None:
    async def no_reservation_open() -> bool:
        return await open_reservations(gw) == 0

    await wait_until(no_reservation_open)


@pytest.mark.parametrize("store", ["redis", "memory"])
async def test_a_stopped_o3_mini_stream_costs_what_it_could_have_spent(
    make_gateway,
    upstream: MockUpstream,
    redis_server: RedisProcess,
    caplog: pytest.LogCaptureFixture,
    store: str,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    sections = {"store": store_section(redis_server)} if store == "redis" else {}
    gw = await make_gateway(teams=teams(CAPS), **sections)
    loop = asyncio.get_running_loop()
    started = loop.time()
    stream = await sdk(gw).chat.completions.create(
        model="o3-mini",
        messages=MESSAGES,
        stream=True,
        extra_headers={"x-mock-chunk-delay-ms": "100"},  # a model writing ~10 tokens a second
    )
    received = []
    async for chunk in stream:
        received.append(chunk)
        if len(received) == 2:
            break
    assert await usage(gw, "completion_tokens") == (0, O3_RESERVATION)
    await stream.close()  # the stop button

    # The upstream saw the connection close long before its stream would have ended
    # (12 tokens at 100 ms each).
    await asyncio.wait_for(upstream.requests[-1].disconnected.wait(), timeout=5)
    await settled(gw)
    ran = loop.time() - started

    completion, completion_held = await usage(gw, "completion_tokens")
    reasoning, reasoning_held = await usage(gw, "reasoning_tokens")
    total, total_held = await usage(gw, "total_tokens")
    assert completion_held == reasoning_held == total_held == 0  # nothing stays reserved
    (record,) = [r for r in access_records(caplog) if r["model"] == "o3-mini"]
    assert record["outcome"] == "client_gone" and record["status"] == 200
    assert completion == record["early_stop_output"]
    # Never less than what was relayed (the client alone read two events, one token each)...
    assert completion >= len(received) * 1
    # ...and within the bound: every event the stream has (16) plus the rate over the time
    # the upstream ran.
    assert completion <= 16 * TOKENS_PER_EVENT + math.ceil(RATE * ran)
    assert completion < O3_RESERVATION // 50  # "far less" than the reservation
    assert reasoning == completion  # hidden reasoning: bounded by the same rate
    assert completion < total <= completion + 1_000  # plus the prompt estimate
    print(
        f"\nearly-stopped o3-mini stream ({store}): charged {completion} "
        f"of {O3_RESERVATION} reserved"
    )


async def test_an_abandoned_non_stream_request_is_cancelled_upstream(
    make_gateway,
    upstream: MockUpstream,
    redis_server: RedisProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await make_gateway(store=store_section(redis_server), teams=teams(CAPS))
    impatient = openai.AsyncOpenAI(
        base_url=gw.url, api_key=sdk(gw).api_key, max_retries=0, timeout=0.5
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(openai.APITimeoutError):
        await impatient.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_headers={"x-mock-first-byte-delay-ms": "3000"},
        )
    # The upstream call was cancelled, well before the upstream would have answered.
    await asyncio.wait_for(upstream.requests[-1].disconnected.wait(), timeout=2)
    cancelled_after = loop.time() - started
    assert cancelled_after < 3.0

    async def logged() -> bool:
        return any(r["model"] == "gpt-4o-mini" for r in access_records(caplog))

    await wait_until(logged)
    (record,) = [r for r in access_records(caplog) if r["model"] == "gpt-4o-mini"]
    assert record["outcome"] == "client_gone" and record["status"] == 499
    await settled(gw)
    completion, held = await usage(gw, "completion_tokens")
    requests, _ = await usage(gw, "requests")
    assert held == 0 and requests == 1
    # Charged the rate over the ~0.5 s the upstream ran, not the reservation.
    assert completion == record["early_stop_output"]
    assert RATE * 0.4 <= completion <= math.ceil(RATE * cancelled_after)
    assert completion < MINI_RESERVATION
    print(f"\nabandoned gpt-4o-mini request: charged {completion} of {MINI_RESERVATION} reserved")
    await impatient.close()


async def test_a_stream_left_before_its_headers_is_cancelled_upstream(
    make_gateway,
    upstream: MockUpstream,
    redis_server: RedisProcess,
) -> None:
    """The SDK gives up while the upstream has not answered a stream's headers yet."""
    gw = await make_gateway(store=store_section(redis_server), teams=teams(CAPS))
    impatient = openai.AsyncOpenAI(
        base_url=gw.url, api_key=sdk(gw).api_key, max_retries=0, timeout=0.3
    )
    with pytest.raises(openai.APITimeoutError):
        await impatient.chat.completions.create(
            model="o3-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            extra_headers={"x-mock-first-byte-delay-ms": "3000"},
        )
    await asyncio.wait_for(upstream.requests[-1].disconnected.wait(), timeout=2)
    await settled(gw)
    completion, held = await usage(gw, "completion_tokens")
    assert held == 0 and 0 < completion < O3_RESERVATION // 50
    await impatient.close()


def _plan(n: int = 1, max_output: int = 1000) -> tuple[QuotaPlan, list[int]]:
    rules = [QuotaRule(metric=m, limit=10**9, window="day") for m in METRICS]
    info = CHAT.parse(
        {"model": "o3-mini", "messages": MESSAGES, "n": n, "max_completion_tokens": max_output}
    )
    profile = GatewayConfig.model_validate(
        {"upstream": {"api_key": "k"}, "auth": {"hs_secret": "s" * 64}}
    ).model_profile("o3-mini")
    plan = plan_request(
        rules, info, profile, TeamConfig(), body_bytes=300, now=1e9, hold_seconds=60
    )
    return plan, reserved_amounts(plan, max_output)


METRICS = ("completion_tokens", "reasoning_tokens", "total_tokens", "prompt_tokens", "requests")


def test_the_early_stop_charge_is_relayed_plus_rate_times_time_capped_by_the_reservation() -> None:
    plan, reserved = _plan()
    prompt = 300 // 3 + 1
    stop = EarlyStop(upstream_seconds=0.5, relayed_events=10, tokens_per_second=200)
    output = 10 * TOKENS_PER_EVENT + 100
    assert early_stop_amounts(plan, reserved, 1000, stop) == [
        output,  # completion
        output,  # reasoning: hidden, bounded by the same rate
        prompt + output,  # total
        prompt,  # prompt: the estimate, as reserved
        1,  # requests
    ]
    # Two choices are generated side by side: twice the rate bound.
    plan2, _ = _plan(n=2)
    assert early_stop_output(plan2, 1000, stop) == 10 * TOKENS_PER_EVENT + 200
    # A long run is capped by what was reserved, never more.
    long = EarlyStop(upstream_seconds=3600, relayed_events=10, tokens_per_second=200)
    assert early_stop_amounts(plan, reserved, 1000, long) == reserved


def test_max_output_tokens_per_second_is_validated() -> None:
    assert ModelProfile(match=["*"]).max_output_tokens_per_second == 200
    with pytest.raises(ValidationError):
        ModelProfile(match=["*"], max_output_tokens_per_second=0)
