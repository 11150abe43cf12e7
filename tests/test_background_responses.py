"""Background responses are reserved at create and settled to their real usage once they
finish, by a client's retrieve or cancel or by the reconciler (real redis-server, mock
upstream, the official SDK)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import openai
import pytest

from gateway.app import RECONCILER
from gateway.mock import MockUpstream
from gateway.state import STATE
from tests.support.gateway_proc import UPSTREAM_KEY, RunningGateway, token
from tests.support.jobs import open_jobs, reconcile_until_settled, usage
from tests.support.redis_proc import RedisProcess

RULES = [
    {"metric": "completion_tokens", "limit": 100_000, "window": "day"},
    {"metric": "total_tokens", "limit": 200_000, "window": "day"},
]
SLOW = {"x-mock-background-delay-ms": "300", "x-mock-completion-tokens": "40"}
NEVER = {"x-mock-background-delay-ms": "600000", "x-mock-completion-tokens": "40"}


def sections(redis_server: RedisProcess, prefix: str | None = None) -> dict[str, Any]:
    return {
        "store": {
            "redis_url": redis_server.url,
            "key_prefix": prefix or "bg" + uuid.uuid4().hex[:10],
        },
        "admission": {"reconcile_interval_seconds": 3600},  # tests drive the reconciler
        "teams": {"ml": {"models": ["*"], "quotas": RULES}},
    }


def sdk(gw: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url, api_key=token("ml"), max_retries=0)


async def real_usage(upstream: MockUpstream, response_id: str) -> openai.types.responses.Response:
    async with openai.AsyncOpenAI(base_url=upstream.url, api_key=UPSTREAM_KEY) as direct:
        return await direct.responses.retrieve(response_id)


async def create(gw: RunningGateway, headers: dict[str, str]) -> str:
    async with sdk(gw) as client:
        created = await client.responses.create(
            model="gpt-4o-mini",
            input="write later",
            background=True,
            max_output_tokens=500,
            extra_headers=headers,
        )
    assert created.status == "queued"
    return created.id


async def test_reserved_at_create_and_settled_by_the_reconciler(
    make_gateway: Any, redis_server: RedisProcess, upstream: MockUpstream
) -> None:
    gw = await make_gateway(**sections(redis_server))
    response_id = await create(gw, SLOW)
    held = await usage(gw)
    assert held["completion_tokens"]["reserved"] == 500  # the output limit written upstream
    assert upstream.requests[-1].json is not None
    assert upstream.requests[-1].json["max_output_tokens"] == 500
    await reconcile_until_settled(gw)  # no client ever retrieves it
    real = await real_usage(upstream, response_id)
    assert real.status == "completed" and real.usage is not None
    after = await usage(gw)
    assert after["completion_tokens"] == after["completion_tokens"] | {
        "used": real.usage.output_tokens,
        "reserved": 0,
    }
    assert after["total_tokens"]["used"] == real.usage.total_tokens
    assert await reconcile_until_settled(gw) == 0  # nothing left to settle
    registry = gw.runner.app[STATE].metrics.registry
    labels = {"team": "ml", "endpoint": "responses_background", "kind": "completion"}
    counted = sum(
        sample.value
        for metric in registry.collect()
        if metric.name == "gateway_tokens"
        for sample in metric.samples
        if sample.name == "gateway_tokens_total" and labels.items() <= sample.labels.items()
    )
    assert counted == real.usage.output_tokens


async def test_a_client_retrieve_settles_it(
    make_gateway: Any, redis_server: RedisProcess, upstream: MockUpstream
) -> None:
    gw = await make_gateway(**sections(redis_server))
    response_id = await create(gw, {**SLOW, "x-mock-background-delay-ms": "50"})
    async with sdk(gw) as client:
        seen = await client.responses.retrieve(response_id)
        while seen.status != "completed":
            seen = await client.responses.retrieve(response_id)
    assert seen.usage is not None
    after = await usage(gw)
    assert after["completion_tokens"]["used"] == seen.usage.output_tokens
    assert after["completion_tokens"]["reserved"] == 0
    assert await gw.runner.app[RECONCILER].poll() == 0


async def test_cancelled_mid_way_settles_to_what_the_upstream_reports(
    make_gateway: Any, redis_server: RedisProcess
) -> None:
    gw = await make_gateway(**sections(redis_server))
    response_id = await create(gw, NEVER)
    async with sdk(gw) as client:
        cancelled = await client.responses.cancel(response_id)
    assert cancelled.status == "cancelled" and cancelled.usage is not None
    after = await usage(gw)
    assert after["completion_tokens"]["used"] == cancelled.usage.output_tokens
    assert after["total_tokens"]["used"] == cancelled.usage.total_tokens
    assert after["completion_tokens"]["reserved"] == 0


async def test_two_replicas_one_restarted_settle_once(
    make_gateway: Any, redis_server: RedisProcess, upstream: MockUpstream
) -> None:
    prefix = "bg" + uuid.uuid4().hex[:10]
    first = await make_gateway(**sections(redis_server, prefix))
    second = await make_gateway(**sections(redis_server, prefix))
    ids = [await create(first, SLOW) for _ in range(3)]
    await first.close()  # the replica that created them is gone
    first = await make_gateway(**sections(redis_server, prefix))
    await reconcile_until_settled(first, second)
    expected = 0
    for response_id in ids:
        real = (await real_usage(upstream, response_id)).usage
        assert real is not None
        expected += real.output_tokens
    after = await usage(second)
    assert after["completion_tokens"]["used"] == expected
    assert after["completion_tokens"]["reserved"] == 0


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_a_team_without_rules_is_not_tracked(
    make_gateway: Any, redis_server: RedisProcess, store: str
) -> None:
    gw = await make_gateway(
        store={"redis_url": redis_server.url} if store == "redis" else {},
        teams={"ml": {"models": ["*"]}},
    )
    await create(gw, SLOW)
    assert await gw.runner.app[RECONCILER].poll() == 0


async def test_background_responses_hold_no_concurrency_slot(
    make_gateway: Any, redis_server: RedisProcess, upstream: MockUpstream
) -> None:
    config = sections(redis_server)
    config["teams"]["ml"]["max_concurrent_requests"] = 1
    gw = await make_gateway(**config)
    ids = [await create(gw, NEVER) for _ in range(3)]  # all admitted although one may fly
    async with sdk(gw) as client:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "and now"}]
        )
        for response_id in ids:
            assert (await client.responses.cancel(response_id)).status == "cancelled"
    assert (await usage(gw))["completion_tokens"]["reserved"] == 0


async def test_a_client_that_leaves_during_create_still_leaves_a_tracked_job(
    make_gateway: Any, redis_server: RedisProcess
) -> None:
    # A background response runs upstream whether or not the create's connection stays: the
    # gateway must wait for its id instead of stopping early.
    gw = await make_gateway(**sections(redis_server))
    body = {"model": "gpt-4o-mini", "input": "x", "background": True, "max_output_tokens": 50}
    headers = {"Authorization": f"Bearer {token('ml')}", "x-mock-first-byte-delay-ms": "300"}
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            await session.post(
                gw.url + "/responses",
                json=body,
                headers={**headers, **NEVER},
                timeout=aiohttp.ClientTimeout(total=0.05),
            )
    deadline = time.monotonic() + 10
    while await open_jobs(gw) == 0:
        assert time.monotonic() < deadline, "the background response was never tracked"
        await asyncio.sleep(0.02)
    assert (await usage(gw))["completion_tokens"]["reserved"] == 50
