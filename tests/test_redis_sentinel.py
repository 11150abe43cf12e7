"""The gateway behind Redis Sentinel: a real primary, replica and Sentinel; a real failover."""

from __future__ import annotations

import asyncio
import time
import uuid

import openai
import pytest
import redis.asyncio as aioredis

from gateway.mock import MockUpstream
from gateway.storage.client import SentinelUrl, parse_sentinel_url
from tests.support.gateway_proc import RunningGateway, token
from tests.support.redis_topology import SentinelSetup, redis_cli, wait_for
from tests.test_quota_gateway import counter


def test_sentinel_url_forms() -> None:
    assert parse_sentinel_url("redis+sentinel://a:26379,b:26380/mymaster") == SentinelUrl(
        (("a", 26379), ("b", 26380)), "mymaster"
    )
    assert parse_sentinel_url("redis+sentinel://:s%40cret@a:26379/svc/2") == SentinelUrl(
        (("a", 26379),), "svc", db=2, password="s@cret"
    )
    for bad in ("redis+sentinel://a:26379", "redis+sentinel://a/svc", "redis+sentinel://a:1/s/x"):
        with pytest.raises(ValueError):
            parse_sentinel_url(bad)


async def test_counters_survive_a_failover_to_the_replica(
    make_gateway, upstream: MockUpstream, redis_sentinel: SentinelSetup
) -> None:
    gw: RunningGateway = await make_gateway(
        store={"redis_url": redis_sentinel.url, "key_prefix": "s" + uuid.uuid4().hex[:8]},
        teams={
            "ml": {
                "models": ["*"],
                "quotas": [{"metric": "completion_tokens", "limit": 100_000, "window": "day"}],
            }
        },
    )
    client = openai.AsyncOpenAI(base_url=gw.url, api_key=token("ml"), max_retries=0)
    burn = {"x-mock-completion-tokens": "9"}

    async def ask(n: int) -> None:
        for _ in range(n):
            await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                extra_headers=burn,
            )

    await ask(5)
    assert redis_sentinel.primary is not None and redis_sentinel.replica is not None
    # Replication is asynchronous; make sure the replica has the writes before failing over.
    redis_cli("-p", str(redis_sentinel.primary.port), "WAIT", "1", "5000")
    old_primary = redis_sentinel.primary.port
    redis_sentinel.primary.stop()

    traffic = asyncio.create_task(ask(20))  # answered throughout (store.on_error = local)
    await asyncio.to_thread(
        wait_for,
        "the sentinel to promote the replica",
        lambda: redis_sentinel.failed_over_from(old_primary),
        30.0,
    )
    await traffic

    new_primary = aioredis.Redis(port=redis_sentinel.current_primary_port())
    try:
        await ask(3)  # the gateway follows the promoted replica
        used, reserved = await counter(new_primary, gw, "ml", "completion_tokens")
        # The 5 before the failover replicated; the 3 after it landed on the new primary.
        # (Requests served by the local fallback during the failover are not merged back.)
        assert used >= (5 + 3) * 9 and reserved == 0
    finally:
        await new_primary.aclose()
    # Shutdown with every Redis and Sentinel gone is not held up by redis-py reconnecting.
    redis_sentinel.stop()
    started = time.monotonic()
    await gw.close()
    assert time.monotonic() - started < 10
