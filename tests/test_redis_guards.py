"""The quota Redis's guard rails (evicting policy, lost state) and a cache on its own Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from gateway.config_loader import ConfigError
from gateway.mock import MockUpstream
from gateway.quota.store import keys
from gateway.state import STATE
from tests.support.gateway_proc import RunningGateway, base_config, start_gateway, token
from tests.support.redis_proc import RedisProcess, free_port
from tests.test_quota_gateway import wait_until

QUOTA = [{"metric": "completion_tokens", "limit": 100_000, "window": "day"}]


def private_redis(workdir: Path, *args: str) -> Iterator[RedisProcess]:
    workdir.mkdir(parents=True, exist_ok=True)
    proc = RedisProcess(port=free_port(), workdir=workdir, extra_args=list(args))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def lru_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    yield from private_redis(tmp_path, "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")


@pytest.fixture
def cache_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    yield from private_redis(tmp_path / "cache", "--maxmemory-policy", "allkeys-lru")


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
async def test_an_evicting_quota_redis_refuses_the_start(
    upstream: MockUpstream, tmp_path: Path, policy: str
) -> None:
    for proc in private_redis(tmp_path, "--maxmemory-policy", policy):
        with pytest.raises(ConfigError, match=f"maxmemory-policy {policy}"):
            await start_gateway(base_config(upstream.url, store={"redis_url": proc.url}))


async def test_the_override_lets_it_start(upstream: MockUpstream, lru_redis: RedisProcess) -> None:
    gw = await start_gateway(
        base_config(upstream.url, store={"redis_url": lru_redis.url, "allow_evicting_policy": True})
    )
    await gw.close()


async def test_an_evicting_cache_redis_is_fine(
    upstream: MockUpstream, redis_server: RedisProcess, lru_redis: RedisProcess
) -> None:
    gw = await start_gateway(
        base_config(
            upstream.url,
            store={"redis_url": redis_server.url},
            cache={"redis_url": lru_redis.url},
        )
    )
    await gw.close()


async def test_flushed_quota_state_is_noticed_counted_and_marked_again(
    make_gateway, tmp_path: Path
) -> None:
    for proc in private_redis(tmp_path):
        gw: RunningGateway = await make_gateway(
            store={"redis_url": proc.url, "state_check_seconds": 0.05},
            teams={"ml": {"models": ["*"], "quotas": QUOTA}},
        )
        registry = gw.runner.app[STATE].metrics.registry
        check = aioredis.Redis.from_url(proc.url)
        try:
            key = keys.state_marker(gw.config.store.key_prefix)
            assert await check.exists(key) and await check.ttl(key) == -1  # no TTL
            assert registry.get_sample_value("gateway_quota_state_resets_total") == 0
            await check.flushall()

            async def noticed(registry: CollectorRegistry = registry) -> bool:
                return registry.get_sample_value("gateway_quota_state_resets_total") == 1

            await wait_until(noticed)
            assert await check.exists(key)
        finally:
            await check.aclose()
            await gw.close()


async def test_cache_on_its_own_redis(
    make_gateway, upstream: MockUpstream, redis_server: RedisProcess, cache_redis: RedisProcess
) -> None:
    prefix = "sep" + uuid.uuid4().hex[:8]
    gw: RunningGateway = await make_gateway(
        store={"redis_url": redis_server.url, "key_prefix": prefix},
        cache={"redis_url": cache_redis.url},
        teams={"ml": {"models": ["*"], "quotas": QUOTA}},
    )
    client = openai.AsyncOpenAI(base_url=gw.url, api_key=token("ml"), max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    for _ in range(2):
        await client.chat.completions.create(model="gpt-4o-mini", messages=messages, temperature=0)
    await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    quota_side = aioredis.Redis.from_url(redis_server.url)
    cache_side = aioredis.Redis.from_url(cache_redis.url)
    try:
        quota_keys = [k.decode() async for k in quota_side.scan_iter(match=f"{prefix}:*")]
        cache_keys = [k.decode() async for k in cache_side.scan_iter(match=f"{prefix}:*")]
        assert quota_keys and all(":cache" not in k for k in quota_keys)
        assert any(":q:" in k for k in quota_keys)
        assert cache_keys and all(k.startswith(f"{prefix}:cache:") for k in cache_keys)
    finally:
        await quota_side.aclose()
        await cache_side.aclose()

    # The cache instance gone: quotas carry on against their own Redis, lookups are misses.
    cache_redis.stop()
    gw.runner.app[STATE].cache.local.purge(None)
    before = gw.runner.app[STATE].metrics.registry.get_sample_value(
        "gateway_store_fallbacks_total", {"mode": "local"}
    )
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, temperature=0
    )
    assert raw.headers["x-gateway-cache"] in ("error", "miss")
    after = gw.runner.app[STATE].metrics.registry.get_sample_value(
        "gateway_store_fallbacks_total", {"mode": "local"}
    )
    assert before == after  # quotas never fell back
