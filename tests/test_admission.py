"""Admission as teams see it: exhausted budgets are refused at once, budgets held by requests in
flight are waited for (across replicas), and the whole cap can be spent. Real gateways, a real
redis-server, the mock upstream and the official SDK."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis

from gateway.mock import MockUpstream
from gateway.state import STATE
from tests.support.gateway_proc import RunningGateway, token
from tests.support.redis_proc import RedisProcess
from tests.test_quota_gateway import (
    MESSAGES,
    counter,
    open_reservations,
    sdk,
    store_section,
    teams,
    wait_until,
)

CHAT = "/chat/completions"


def cap(metric: str, limit: int) -> list[dict[str, Any]]:
    return [{"metric": metric, "limit": limit, "window": "day"}]


async def shared_gateways(
    make_gateway: Any, redis_server: RedisProcess, count: int, **sections: Any
) -> list[RunningGateway]:
    """``count`` gateways on one Redis and key prefix: replicas of one deployment."""
    store = store_section(redis_server)
    return [await make_gateway(store=store, **sections) for _ in range(count)]


async def burst(
    clients: list[openai.AsyncOpenAI],
    n: int,
    *,
    max_tokens: int,
    model: str = "gpt-4o-mini",
    headers: dict[str, str] | None = None,
) -> tuple[list[tuple[int, str]], list[openai.RateLimitError]]:
    """``n`` concurrent requests, every other one streamed; returns (completion tokens,
    finish reason) of each answer and the refusals."""

    async def one(i: int) -> tuple[int, str] | openai.RateLimitError:
        client = clients[i % len(clients)]
        try:
            if i % 2:
                stream = await client.chat.completions.create(
                    model=model,
                    messages=MESSAGES,
                    max_completion_tokens=max_tokens,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_headers=headers,
                )
                used, finish = 0, ""
                async for chunk in stream:
                    if chunk.usage is not None:
                        used = chunk.usage.completion_tokens
                    for choice in chunk.choices:
                        finish = choice.finish_reason or finish
                return used, finish
            answer = await client.chat.completions.create(
                model=model,
                messages=MESSAGES,
                max_completion_tokens=max_tokens,
                extra_headers=headers,
            )
            assert answer.usage is not None
            return answer.usage.completion_tokens, answer.choices[0].finish_reason
        except openai.RateLimitError as exc:
            return exc

    results = await asyncio.gather(*(one(i) for i in range(n)))
    answers = [r for r in results if not isinstance(r, openai.RateLimitError)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    return answers, refused


async def test_a_burst_that_fits_in_the_cap_is_answered_in_full_with_no_refusal(
    make_gateway: Any, redis_server: RedisProcess, redis_client: aioredis.Redis
) -> None:
    """200 requests reserving 500 each against 3,000: only 6 reservations fit at once, but
    each uses about 12 tokens, so everybody gets in by waiting for the others to settle."""
    gws = await shared_gateways(
        make_gateway, redis_server, 3, teams=teams(cap("completion_tokens", 3000))
    )
    answers, refused = await burst([sdk(gw) for gw in gws], 200, max_tokens=500)
    assert refused == []
    assert len(answers) == 200 and all(finish == "stop" for _, finish in answers)
    assert await counter(redis_client, gws[0], "ml", "completion_tokens") == (
        sum(used for used, _ in answers),
        0,
    )
    assert await open_reservations(redis_client, gws[0]) == 0


async def test_the_whole_cap_is_spent_before_anyone_is_refused(
    make_gateway: Any, redis_server: RedisProcess, redis_client: aioredis.Redis
) -> None:
    """The same burst with 100-token answers: the cap runs out. Nobody is refused while budget
    is left, every refusal says the budget is used up (and not to retry), the cap holds."""
    gws = await shared_gateways(
        make_gateway, redis_server, 3, teams=teams(cap("completion_tokens", 3000))
    )
    answers, refused = await burst(
        [sdk(gw) for gw in gws], 200, max_tokens=500, headers={"x-mock-completion-tokens": "100"}
    )
    used, reserved = await counter(redis_client, gws[0], "ml", "completion_tokens")
    assert reserved == 0 and used == sum(u for u, _ in answers)
    assert 2700 <= used <= 3000
    print(f"cap spent: {used} of 3000 ({used / 3000:.1%}), {len(refused)} refused after it")
    assert refused, "the cap must run out"
    for error in refused:
        assert error.code == "insufficient_quota"
        assert error.response.headers["x-should-retry"] == "false"
        assert "is used up" in error.message


async def test_reasoning_caps_queue_the_same_way(
    make_gateway: Any, redis_server: RedisProcess, redis_client: aioredis.Redis
) -> None:
    """o3-mini reserves its output budget against the reasoning cap too; 40 requests of 1,000
    against 2,000 all get in (each spends 16 reasoning tokens)."""
    gws = await shared_gateways(
        make_gateway, redis_server, 2, teams=teams(cap("reasoning_tokens", 2000))
    )
    answers, refused = await burst([sdk(gw) for gw in gws], 40, max_tokens=1000, model="o3-mini")
    assert refused == [] and len(answers) == 40
    used, reserved = await counter(redis_client, gws[0], "ml", "reasoning_tokens")
    assert reserved == 0 and used == 40 * 16


async def _hold_the_cap(gw: RunningGateway, upstream: MockUpstream, gate_name: str) -> Any:
    """A stream that reserves the whole cap and stops after its first event until released."""
    session = aiohttp.ClientSession()
    response = await session.post(
        gw.url + CHAT,
        json={
            "model": "gpt-4o-mini",
            "messages": MESSAGES,
            "stream": True,
            "max_completion_tokens": 1000,
        },
        headers={"Authorization": f"Bearer {token()}", "x-mock-gate": gate_name},
    )
    assert response.status == 200
    await asyncio.wait_for(upstream.gate(gate_name).first_chunk_sent.wait(), 5)
    return session, response


async def _queued(gw: RunningGateway, team: str = "ml") -> int:
    return gw.runner.app[STATE].quotas.queue.queued(team)


@pytest.mark.parametrize("where", ["same replica", "other replica"])
async def test_a_request_waits_for_a_stream_holding_the_cap_and_is_answered(
    make_gateway: Any, upstream: MockUpstream, redis_server: RedisProcess, where: str
) -> None:
    # A long poll interval: an answer within it proves the settlement woke the waiter.
    gws = await shared_gateways(
        make_gateway,
        redis_server,
        2,
        teams=teams(cap("completion_tokens", 1000)),
        admission={"poll_seconds": 30},
    )
    holder, waiter = gws[0], gws[0] if where == "same replica" else gws[1]
    latencies = []
    for i in range(8):
        gate = f"hold-{where}-{i}"
        session, held = await _hold_the_cap(holder, upstream, gate)
        pending = asyncio.ensure_future(
            sdk(waiter).chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=100
            )
        )
        await wait_until(lambda w=waiter: _is_queued(w), within_seconds=5)
        upstream.gate(gate).release()
        await held.read()  # the stream ends; its settlement follows at once
        ended = time.perf_counter()
        answer = await asyncio.wait_for(pending, 10)
        latencies.append(time.perf_counter() - ended)
        assert answer.choices[0].finish_reason == "stop"
        held.close()
        await session.close()
    latencies.sort()
    median, worst = statistics.median(latencies), latencies[-1]
    print(f"wake-up ({where}): median {median * 1000:.1f} ms, max {worst * 1000:.1f} ms")
    assert worst < 5, latencies  # far below the 30 s poll: the settlement woke it


async def _is_queued(gw: RunningGateway) -> bool:
    return await _queued(gw) > 0


async def test_queue_timeout_and_length_are_bounded_and_a_leaver_frees_its_place(
    make_gateway: Any, upstream: MockUpstream, redis_server: RedisProcess
) -> None:
    (gw,) = await shared_gateways(
        make_gateway,
        redis_server,
        1,
        teams=teams(cap("completion_tokens", 1000)),
        admission={"queue_timeout_seconds": 3.0, "max_queued_per_team": 2},
    )
    session, held = await _hold_the_cap(gw, upstream, "bounds")
    try:
        # Waited the whole timeout: what the reservations leave (nothing), a short retry-after.
        started = time.perf_counter()
        with pytest.raises(openai.RateLimitError) as timed_out:
            await sdk(gw).chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=100
            )
        assert time.perf_counter() - started >= 3.0
        error = timed_out.value
        assert error.code == "rate_limit_exceeded" and "in flight" in error.message
        assert error.response.headers["retry-after"] == "2"
        assert "x-should-retry" not in error.response.headers

        # Two wait; a third is refused at once.
        waiting = [
            asyncio.ensure_future(
                sdk(gw).chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=100
                )
            )
            for _ in range(2)
        ]
        await wait_until(lambda: _count_is(gw, 2), within_seconds=5)
        started = time.perf_counter()
        with pytest.raises(openai.RateLimitError):
            await sdk(gw).chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=100
            )
        assert time.perf_counter() - started < 2.0  # at once, not after the 3 s timeout
        for task in waiting:
            with pytest.raises(openai.RateLimitError):
                await task

    finally:
        upstream.gate("bounds").release()
        held.close()
        await session.close()


async def test_a_client_that_gives_up_while_queued_leaves_the_queue(
    make_gateway: Any, upstream: MockUpstream, redis_server: RedisProcess, redis_client: Any
) -> None:
    (gw,) = await shared_gateways(
        make_gateway,
        redis_server,
        1,
        teams=teams(cap("completion_tokens", 1000)),
        admission={"queue_timeout_seconds": 60},
    )
    session, held = await _hold_the_cap(gw, upstream, "leaver")
    try:
        impatient = openai.AsyncOpenAI(base_url=gw.url, api_key=token(), max_retries=0, timeout=0.3)
        started = time.perf_counter()
        with pytest.raises(openai.APITimeoutError):
            await impatient.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=100
            )
        await wait_until(lambda: _count_is(gw, 0), within_seconds=5)
        assert time.perf_counter() - started < 10  # its disconnect, not the 60 s timeout
        assert await open_reservations(redis_client, gw) == 1  # only the holder's
    finally:
        upstream.gate("leaver").release()
        held.close()
        await session.close()


async def _count_is(gw: RunningGateway, n: int) -> bool:
    return await _queued(gw) == n


async def test_concurrency_cap_holds_across_three_replicas(
    make_gateway: Any, upstream: MockUpstream, redis_server: RedisProcess
) -> None:
    gws = await shared_gateways(
        make_gateway,
        redis_server,
        3,
        teams={"ml": {"max_concurrent_requests": 4}},
    )
    upstream.in_flight.peak = 0
    answers, refused = await burst(
        [sdk(gw) for gw in gws], 24, max_tokens=50, headers={"x-mock-first-byte-delay-ms": "150"}
    )
    assert refused == [] and len(answers) == 24
    assert upstream.in_flight.peak == 4
