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
import redis.asyncio as aioredis

from gateway.app import RECONCILER
from gateway.config_admission import AdmissionConfig
from gateway.mock import MockUpstream
from gateway.quota.store.keys import freed_channel
from gateway.state import STATE
from tests.support.gateway_proc import UPSTREAM_KEY, RunningGateway, token
from tests.support.jobs import (
    eventually,
    nothing_reserved,
    open_jobs,
    reconcile_until_settled,
    sample,
    usage,
)
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
    make_gateway: Any, redis_server: RedisProcess, upstream: MockUpstream
) -> None:
    gw = await make_gateway(**sections(redis_server))
    # 400 tokens over 2 s (queued for the first tenth): a cancel while it runs stops it short.
    full = 400
    headers = {"x-mock-background-delay-ms": "2000", "x-mock-completion-tokens": str(full)}
    response_id = await create(gw, headers)
    async with sdk(gw) as client:
        seen = await client.responses.retrieve(response_id)
        deadline = time.monotonic() + 10
        while seen.status == "queued":
            assert time.monotonic() < deadline, "the mock never started the response"
            seen = await client.responses.retrieve(response_id)
        assert seen.status == "in_progress"
        cancelled = await client.responses.cancel(response_id)
    assert cancelled.status == "cancelled" and cancelled.usage is not None
    assert 0 < cancelled.usage.output_tokens < full  # partial output, as the upstream reports
    real = await real_usage(upstream, response_id)
    assert real.usage is not None and real.usage.output_tokens == cancelled.usage.output_tokens
    after = await usage(gw)
    assert after["completion_tokens"]["used"] == cancelled.usage.output_tokens
    assert after["total_tokens"]["used"] == cancelled.usage.total_tokens
    assert after["completion_tokens"]["reserved"] == 0
    assert await gw.runner.app[RECONCILER].poll() == 0


async def test_cancelled_while_queued_settles_to_no_output(
    make_gateway: Any, redis_server: RedisProcess
) -> None:
    gw = await make_gateway(**sections(redis_server))
    response_id = await create(gw, NEVER)
    async with sdk(gw) as client:
        cancelled = await client.responses.cancel(response_id)
    assert cancelled.status == "cancelled" and cancelled.usage is not None
    assert cancelled.usage.output_tokens == 0
    after = await usage(gw)
    assert after["completion_tokens"] == after["completion_tokens"] | {"used": 0, "reserved": 0}
    assert after["total_tokens"]["used"] == cancelled.usage.total_tokens


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


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_client_that_leaves_during_create_still_leaves_a_tracked_job(
    make_gateway: Any, redis_server: RedisProcess, stream: bool
) -> None:
    # A background response runs upstream whether or not the create's connection stays: the
    # gateway must wait for its id instead of stopping early.
    gw = await make_gateway(**sections(redis_server))
    body = {"model": "gpt-4o-mini", "input": "x", "background": True, "max_output_tokens": 50}
    body["stream"] = stream
    headers = {"Authorization": f"Bearer {token('ml')}", "x-mock-first-byte-delay-ms": "300"}
    # The mock starts a background stream once the run is done: SLOW, so that it ever starts.
    headers |= SLOW if stream else NEVER
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            await session.post(
                gw.url + "/responses",
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=0.05),
            )
    deadline = time.monotonic() + 10
    while await open_jobs(gw) == 0:
        assert time.monotonic() < deadline, "the background response was never tracked"
        await asyncio.sleep(0.02)
    assert (await usage(gw))["completion_tokens"]["reserved"] == 50


def background_stream(**extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "input": "stream it, in the background",
        "background": True,
        "stream": True,
        "max_output_tokens": 500,
        **extra,
    }


def tokens_counted(gw: RunningGateway, endpoint: str) -> float:
    labels = {"team": "ml", "model": "gpt-4o-mini", "endpoint": endpoint, "kind": "completion"}
    return sample(gw, "gateway_tokens_total", labels)


async def test_a_streamed_create_the_client_leaves_settles_to_the_real_usage(
    make_gateway: Any, redis_server: RedisProcess, upstream: MockUpstream
) -> None:
    # The mock holds the stream after its first event (response.created) until released: the
    # client leaves there, long before the response is finished upstream.
    gw = await make_gateway(**sections(redis_server))
    gate = "left-" + uuid.uuid4().hex[:8]
    async with sdk(gw) as client:
        stream = await client.responses.create(
            **background_stream(), extra_headers={**SLOW, "x-mock-gate": gate}
        )
        first = await stream.__anext__()
        await stream.close()
    assert first.type == "response.created"
    response_id = first.response.id

    async def job_opened() -> bool:
        return await open_jobs(gw) == 1

    await eventually(job_opened, "the streamed create's job")
    assert (await usage(gw))["completion_tokens"]["reserved"] == 500  # no early-stop estimate
    upstream.gate(gate).release()
    await reconcile_until_settled(gw)
    real = await real_usage(upstream, response_id)
    assert real.status == "completed" and real.usage is not None  # it ran on upstream
    after = await usage(gw)
    assert after["completion_tokens"] == after["completion_tokens"] | {
        "used": real.usage.output_tokens,
        "reserved": 0,
    }
    assert after["total_tokens"]["used"] == real.usage.total_tokens
    assert await nothing_reserved(gw)
    assert tokens_counted(gw, "responses_background") == real.usage.output_tokens
    assert tokens_counted(gw, "responses") == 0


async def test_a_streamed_create_read_to_the_end_settles_once_from_its_last_event(
    make_gateway: Any, redis_server: RedisProcess, upstream: MockUpstream
) -> None:
    gw = await make_gateway(**sections(redis_server))
    async with sdk(gw) as client:
        stream = await client.responses.create(
            **background_stream(), extra_headers={**SLOW, "x-mock-background-delay-ms": "50"}
        )
        events = [event async for event in stream]
    final = events[-1]
    assert final.type == "response.completed" and final.response.usage is not None
    real = final.response.usage
    await eventually(lambda: nothing_reserved(gw), "the stream's settlement")
    assert await open_jobs(gw) == 0  # settled from the stream, no reconciler involved
    after = await usage(gw)
    assert after["completion_tokens"]["used"] == real.output_tokens
    assert after["total_tokens"]["used"] == real.total_tokens
    assert await gw.runner.app[RECONCILER].poll() == 0
    async with sdk(gw) as client:  # a later retrieve of the finished response adds nothing
        assert (await client.responses.retrieve(final.response.id)).status == "completed"
    assert (await usage(gw))["completion_tokens"]["used"] == real.output_tokens
    assert tokens_counted(gw, "responses_background") == real.output_tokens
    assert tokens_counted(gw, "responses") == 0  # counted once, as background work


async def test_a_streamed_retrieve_settles_from_its_terminal_event(
    make_gateway: Any, redis_server: RedisProcess
) -> None:
    gw = await make_gateway(**sections(redis_server))
    response_id = await create(gw, {**SLOW, "x-mock-background-delay-ms": "100"})
    assert await open_jobs(gw) == 1
    async with sdk(gw) as client:
        stream = await client.responses.retrieve(response_id, stream=True)
        events = [event async for event in stream]
    final = events[-1]
    assert final.type == "response.completed" and final.response.usage is not None
    await eventually(lambda: nothing_reserved(gw), "the streamed retrieve's settlement")
    assert await open_jobs(gw) == 0  # no reconciler pass ran
    after = await usage(gw)
    assert after["completion_tokens"]["used"] == final.response.usage.output_tokens
    assert after["total_tokens"]["used"] == final.response.usage.total_tokens
    assert await gw.runner.app[RECONCILER].poll() == 0
    async with sdk(gw) as client:  # streaming it again settles nothing more
        again = [event async for event in await client.responses.retrieve(response_id, stream=True)]
    assert again[-1].type == "response.completed"
    assert (await usage(gw))["completion_tokens"]["used"] == final.response.usage.output_tokens


async def test_a_job_whose_hold_ends_is_settled_as_charged(
    make_gateway: Any, redis_server: RedisProcess, upstream: MockUpstream
) -> None:
    config = sections(redis_server)
    config["admission"]["background_hold_seconds"] = 0.5
    gw = await make_gateway(**config)
    response_id = await create(gw, NEVER)
    held = await usage(gw)
    assert held["completion_tokens"]["reserved"] == 500
    await reconcile_until_settled(gw)  # polls it (still queued) until its hold is over
    assert (await real_usage(upstream, response_id)).status == "queued"  # never finished
    after = await usage(gw)
    for metric in ("completion_tokens", "total_tokens"):
        assert after[metric]["used"] == held[metric]["reserved"]  # what it held, no less
        assert after[metric]["reserved"] == 0


async def test_the_reconciler_costs_one_redis_command_per_idle_poll(
    make_gateway: Any, redis_server: RedisProcess, redis_client: aioredis.Redis
) -> None:
    gw = await make_gateway(**sections(redis_server))
    reconciler = gw.runner.app[RECONCILER]
    # Only the steady state counts: the start-up's SUBSCRIBE (quota wake-ups) and the
    # reconciler loop's first poll (at once, then every hour here) both done.
    channel = freed_channel(gw.config.store.key_prefix)

    async def started() -> bool:
        subscribed = dict(await redis_client.pubsub_numsub(channel)).get(channel.encode(), 0)
        last = [client.get("cmd") for client in await redis_client.client_list()]
        return subscribed > 0 and "smembers" in last

    await eventually(started, "the gateway's start-up")
    polls = 20
    before = await commands(redis_client)
    for _ in range(polls):
        assert await reconciler.poll() == 0
    after = await commands(redis_client)
    spent = {name: after[name] - before.get(name, 0) for name in after}
    spent = {name: n for name, n in spent.items() if n and name != "cmdstat_info"}
    assert spent == {"cmdstat_smembers": polls}, spent
    per_poll = spent["cmdstat_smembers"] / polls
    interval = AdmissionConfig().reconcile_interval_seconds
    print(
        f"reconciler idle: {per_poll:g} Redis commands per poll, poll every {interval:g} s = "
        f"{per_poll * 60 / interval:g} per minute"
    )


async def commands(redis: aioredis.Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name: int(entry["calls"]) for name, entry in stats.items()}
