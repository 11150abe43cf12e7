"""A team's cap on requests in flight, as teams see it: held across replicas, waited for like
congested budget, refused (retry soon) after the queue timeout, released on settlement or when
its hold expires. Real gateways, a real redis-server, the mock upstream and the official SDK."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from gateway.mock import MockUpstream
from tests.support.redis_proc import RedisProcess
from tests.test_admission import (
    ON_EACH_STORE,
    REPLICAS_OR_ONE,
    burst,
    hold_the_cap,
    shared_gateways,
)
from tests.test_metrics import scrape, value
from tests.test_quota_gateway import MESSAGES, sdk

CONCURRENCY = {"team": "ml", "metric": "concurrent_requests", "reason": "concurrency"}


@REPLICAS_OR_ONE
async def test_concurrency_cap_holds_across_replicas(
    make_gateway: Any, upstream: MockUpstream, redis_server: RedisProcess, store: str, count: int
) -> None:
    gws = await shared_gateways(
        make_gateway, redis_server, count, store=store, teams={"ml": {"max_concurrent_requests": 4}}
    )
    upstream.in_flight.peak = 0
    answers, refused = await burst(
        [sdk(gw) for gw in gws], 24, max_tokens=50, headers={"x-mock-first-byte-delay-ms": "150"}
    )
    assert refused == [] and len(answers) == 24
    assert upstream.in_flight.peak == 4


@ON_EACH_STORE
async def test_a_request_over_the_cap_is_refused_after_the_queue_timeout_and_counted(
    make_gateway: Any, upstream: MockUpstream, redis_server: RedisProcess, store: str
) -> None:
    """``defaults.max_concurrent_requests: 1``: while one stream runs, another request waits
    the queue timeout, then gets a 429 worth retrying soon; the slot is free again once the
    stream settles."""
    (gw,) = await shared_gateways(
        make_gateway,
        redis_server,
        1,
        store=store,
        defaults={"max_concurrent_requests": 1},
        admission={"queue_timeout_seconds": 1},
    )
    session, held = await hold_the_cap(gw, upstream, "one-slot")
    try:
        started = time.perf_counter()
        with pytest.raises(openai.RateLimitError) as info:
            await sdk(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert time.perf_counter() - started >= 1.0  # it waited for the slot first
        error = info.value
        assert error.code == "rate_limit_exceeded"
        assert "Too many requests in flight for team 'ml': at most 1 at a time" in error.message
        assert error.response.headers["retry-after"] == "2"
        assert "x-should-retry" not in error.response.headers
        assert value(await scrape(gw), "gateway_quota_rejections_total", **CONCURRENCY) == 1
    finally:
        upstream.gate("one-slot").release()
        await held.read()
        held.close()
        await session.close()
    # The stream ended and settled: its slot is released.
    done = await sdk(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert done.choices[0].finish_reason == "stop"


async def test_a_slot_whose_holder_never_settles_is_released_by_its_hold_timeout(
    make_gateway: Any, upstream: MockUpstream
) -> None:
    """Embedded store, injected clock: the slot of a request that never settles (its replica
    stuck) stops counting once its hold (total timeout + grace) has passed."""
    now = [time.time()]
    gw = await make_gateway(
        clock=lambda: now[0],
        defaults={"max_concurrent_requests": 1},
        admission={"queue_timeout_seconds": 0},  # refuse at once: no waiting on a frozen clock
    )
    session, held = await hold_the_cap(gw, upstream, "stuck")
    try:
        with pytest.raises(openai.RateLimitError, match="Too many requests in flight"):
            await sdk(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        store = gw.config.store
        now[0] += gw.config.upstream.total_timeout_seconds + store.reservation_grace_seconds + 1
        done = await sdk(gw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert done.choices[0].finish_reason == "stop"
    finally:
        upstream.gate("stuck").release()
        held.close()
        await session.close()
