"""Admission as teams see it: exhausted budgets are refused at once, budgets held by requests in
flight are waited for (across replicas), and the whole cap can be spent. Real gateways, a real
redis-server, the mock upstream and the official SDK."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest

from gateway.mock import MockUpstream
from gateway.state import STATE
from tests.support.gateway_proc import RunningGateway, token
from tests.support.quota_view import open_reservations, usage
from tests.support.redis_proc import RedisProcess
from tests.test_metrics import scrape, value
from tests.test_quota_gateway import MESSAGES, sdk, store_section, teams, wait_until

CHAT = "/chat/completions"
#: Tests of one gateway run on both stores; those of replicas need Redis. On the embedded
#: store the same behaviour is asked of one gateway alone.
ON_EACH_STORE = pytest.mark.parametrize("store", ["redis", "memory"])
REPLICAS_OR_ONE = pytest.mark.parametrize(("store", "count"), [("redis", 3), ("memory", 1)])


def cap(metric: str, limit: int) -> list[dict[str, Any]]:
    return [{"metric": metric, "limit": limit, "window": "day"}]


async def shared_gateways(
    make_gateway: Any,
    redis_server: RedisProcess,
    count: int,
    *,
    store: str = "redis",
    **sections: Any,
) -> list[RunningGateway]:
    """``count`` gateways on one Redis and key prefix: replicas of one deployment. With the
    embedded store (no ``store`` section), one gateway: its store is its own."""
    if store == "memory":
        assert count == 1, "an embedded store is one process's own"
        return [await make_gateway(**sections)]
    section = store_section(redis_server)
    return [await make_gateway(store=section, **sections) for _ in range(count)]


async def burst(
    clients: list[openai.AsyncOpenAI],
    n: int,
    *,
    max_tokens: int,
    model: str = "gpt-4o-mini",
    headers: dict[str, str] | None = None,
    on_first_refusal: Callable[[], Awaitable[None]] | None = None,
) -> tuple[list[tuple[int, str]], list[openai.RateLimitError]]:
    """``n`` concurrent requests, every other one streamed; returns (completion tokens,
    finish reason) of each answer and the refusals. ``on_first_refusal`` is awaited as soon
    as the first refusal arrives (the others keep running meanwhile)."""
    refusals = 0

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
            nonlocal refusals
            refusals += 1
            if refusals == 1 and on_first_refusal is not None:
                await on_first_refusal()
            return exc

    results = await asyncio.gather(*(one(i) for i in range(n)))
    answers = [r for r in results if not isinstance(r, openai.RateLimitError)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    return answers, refused


@REPLICAS_OR_ONE
async def test_a_burst_that_fits_in_the_cap_is_answered_in_full_with_no_refusal(
    make_gateway: Any, redis_server: RedisProcess, store: str, count: int
) -> None:
    """200 requests reserving 500 each against 3,000: only 6 reservations fit at once, but
    each uses about 12 tokens, so everybody gets in by waiting for the others to settle."""
    gws = await shared_gateways(
        make_gateway, redis_server, count, store=store, teams=teams(cap("completion_tokens", 3000))
    )
    answers, refused = await burst([sdk(gw) for gw in gws], 200, max_tokens=500)
    assert refused == []
    assert len(answers) == 200 and all(finish == "stop" for _, finish in answers)
    assert await usage(gws[0], "completion_tokens") == (sum(used for used, _ in answers), 0)
    assert await open_reservations(gws[0]) == 0


#: gpt-4o-mini's min_output_tokens: a request is refused as exhausted only once settled usage
#: leaves less than this.
MIN_OUTPUT = 16


@REPLICAS_OR_ONE
async def test_the_whole_cap_is_spent_before_anyone_is_refused(
    make_gateway: Any, redis_server: RedisProcess, store: str, count: int
) -> None:
    """The same burst with 100-token answers: the cap runs out. Nobody is refused while budget
    is left, every refusal says the budget is used up (and not to retry), the cap holds."""
    gws = await shared_gateways(
        make_gateway, redis_server, count, store=store, teams=teams(cap("completion_tokens", 3000))
    )
    at_first_refusal: list[int] = []

    async def read_spend() -> None:
        at_first_refusal.append((await usage(gws[0], "completion_tokens"))[0])

    answers, refused = await burst(
        [sdk(gw) for gw in gws],
        200,
        max_tokens=500,
        headers={"x-mock-completion-tokens": "100"},
        on_first_refusal=read_spend,
    )
    used, reserved = await usage(gws[0], "completion_tokens")
    assert reserved == 0 and used == sum(u for u, _ in answers)
    assert 3000 - (MIN_OUTPUT - 1) <= used <= 3000
    assert refused, "the cap must run out"
    (spent,) = at_first_refusal
    print(f"spent before first refusal: {spent} of 3000 ({store}); {len(refused)} refused")
    # Read just after the refusal, so at most what was spent then: the budget was used up.
    assert spent >= 3000 - (MIN_OUTPUT - 1)
    for error in refused:
        assert error.code == "insufficient_quota"
        assert error.response.headers["x-should-retry"] == "false"
        assert "is used up" in error.message


@REPLICAS_OR_ONE
async def test_reasoning_caps_queue_the_same_way(
    make_gateway: Any, redis_server: RedisProcess, store: str, count: int
) -> None:
    """o3-mini reserves its output budget against the reasoning cap too; 40 requests of 1,000
    against 2,000 all get in (each spends 16 reasoning tokens)."""
    gws = await shared_gateways(
        make_gateway, redis_server, count, store=store, teams=teams(cap("reasoning_tokens", 2000))
    )
    answers, refused = await burst([sdk(gw) for gw in gws], 40, max_tokens=1000, model="o3-mini")
    assert refused == [] and len(answers) == 40
    assert await usage(gws[0], "reasoning_tokens") == (40 * 16, 0)


async def hold_the_cap(gw: RunningGateway, upstream: MockUpstream, gate_name: str) -> Any:
    """A stream that reserves all the budget usage leaves (it asks for more than any cap here)
    and stops after its first event until released."""
    session = aiohttp.ClientSession()
    response = await session.post(
        gw.url + CHAT,
        json={
            "model": "gpt-4o-mini",
            "messages": MESSAGES,
            "stream": True,
            "max_completion_tokens": 100_000,
        },
        headers={"Authorization": f"Bearer {token()}", "x-mock-gate": gate_name},
    )
    assert response.status == 200
    await asyncio.wait_for(upstream.gate(gate_name).first_chunk_sent.wait(), 5)
    return session, response


async def _queued(gw: RunningGateway, team: str = "ml") -> int:
    return gw.runner.app[STATE].quotas.queue.queued(team)


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


@pytest.mark.parametrize(
    ("store", "where"),
    [("redis", "same replica"), ("redis", "other replica"), ("memory", "same replica")],
)
async def test_a_request_waits_for_a_stream_holding_the_cap_and_is_answered(
    make_gateway: Any, upstream: MockUpstream, redis_server: RedisProcess, store: str, where: str
) -> None:
    # A long poll interval: an answer within it proves the settlement woke the waiter.
    gws = await shared_gateways(
        make_gateway,
        redis_server,
        2 if where == "other replica" else 1,
        store=store,
        teams=teams(cap("completion_tokens", 1000)),
        admission={"poll_seconds": 30},
    )
    holder, waiter = gws[0], gws[-1]
    latencies = []
    for i in range(30):
        gate = f"hold-{where}-{i}"
        session, held = await hold_the_cap(holder, upstream, gate)
        pending = asyncio.ensure_future(
            sdk(waiter).chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=20
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
    median, worst = statistics.median(latencies), max(latencies)
    print(
        f"wake-up ({where}, {store}): median {median * 1000:.1f} ms, "
        f"p99 {p99(latencies) * 1000:.1f} ms, max {worst * 1000:.1f} ms"
    )
    assert worst < 5, latencies  # far below the 30 s poll: the settlement woke it


async def _is_queued(gw: RunningGateway) -> bool:
    return await _queued(gw) > 0


QUEUE_TIMEOUT = 2.0


@ON_EACH_STORE
async def test_queue_timeout_and_length_are_bounded(
    make_gateway: Any, upstream: MockUpstream, redis_server: RedisProcess, store: str
) -> None:
    (gw,) = await shared_gateways(
        make_gateway,
        redis_server,
        1,
        store=store,
        teams=teams(cap("completion_tokens", 1000)),
        admission={"queue_timeout_seconds": QUEUE_TIMEOUT, "max_queued_per_team": 2},
    )
    session, held = await hold_the_cap(gw, upstream, "bounds")
    before = await scrape(gw)

    def ask() -> Any:
        return sdk(gw).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=100
        )

    try:
        # Waited the whole timeout: what the reservations leave (nothing), a short retry-after.
        started = time.perf_counter()
        with pytest.raises(openai.RateLimitError) as timed_out:
            await ask()
        assert time.perf_counter() - started >= QUEUE_TIMEOUT
        assert_congested(timed_out.value)

        # Two wait; a third is refused at once, congested too (a retry soon may get in).
        waiting = [asyncio.ensure_future(ask()) for _ in range(2)]
        await wait_until(lambda: _count_is(gw, 2), within_seconds=5)
        assert value(await scrape(gw), "gateway_quota_queued_requests", team="ml") == 2
        started = time.perf_counter()
        with pytest.raises(openai.RateLimitError) as full:
            await ask()
        assert time.perf_counter() - started < QUEUE_TIMEOUT * 0.75  # not after the timeout
        assert_congested(full.value)
        for task in waiting:
            with pytest.raises(openai.RateLimitError) as late:
                await task
            assert_congested(late.value)
    finally:
        upstream.gate("bounds").release()
        held.close()
        await session.close()

    after = await scrape(gw)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    rule = {"team": "ml", "metric": "completion_tokens"}
    assert moved("gateway_quota_rejections_total", **rule, reason="congested") == 4
    assert moved("gateway_quota_rejections_total", **rule, reason="exhausted") == 0
    assert moved("gateway_quota_queue_wait_seconds_count", team="ml") >= 3
    # Three of them waited the whole timeout.
    assert moved("gateway_quota_queue_wait_seconds_sum", team="ml") >= 3 * QUEUE_TIMEOUT
    assert value(after, "gateway_quota_queued_requests", team="ml") == 0


def assert_congested(error: openai.RateLimitError) -> None:
    """Refused because requests in flight hold the budget: worth retrying in a moment."""
    assert error.code == "rate_limit_exceeded" and "in flight" in error.message
    assert error.response.headers["retry-after"] == "2"
    assert "x-should-retry" not in error.response.headers


@ON_EACH_STORE
async def test_a_client_that_gives_up_while_queued_leaves_the_queue(
    make_gateway: Any, upstream: MockUpstream, redis_server: RedisProcess, store: str
) -> None:
    (gw,) = await shared_gateways(
        make_gateway,
        redis_server,
        1,
        store=store,
        teams=teams(cap("completion_tokens", 1000)),
        admission={"queue_timeout_seconds": 60},
    )
    session, held = await hold_the_cap(gw, upstream, "leaver")
    try:
        impatient = openai.AsyncOpenAI(base_url=gw.url, api_key=token(), max_retries=0, timeout=0.3)
        started = time.perf_counter()
        with pytest.raises(openai.APITimeoutError):
            await impatient.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=100
            )
        await wait_until(lambda: _count_is(gw, 0), within_seconds=5)
        assert time.perf_counter() - started < 10  # its disconnect, not the 60 s timeout
        assert await open_reservations(gw) == 1  # only the holder's
    finally:
        upstream.gate("leaver").release()
        held.close()
        await session.close()


async def _count_is(gw: RunningGateway, n: int) -> bool:
    return await _queued(gw) == n
