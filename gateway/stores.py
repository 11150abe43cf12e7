"""The quota store and the cache backend, built from the config: Redis or memory.

``store.redis_url`` holds the quota counters; ``cache.redis_url`` (default: the same URL) holds
cache entries, so production can run counters on a ``noeviction`` instance with persistence
and the cache on an evicting one. Each Redis gets its own breaker: a failing cache instance
must not send quotas into their fallback, nor the other way round. Two URLs that are equal
share one client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from gateway.cache.backend import CacheBackend, MemoryCacheBackend, RedisCacheBackend
from gateway.config import GatewayConfig
from gateway.metrics import Metrics
from gateway.quota.store.base import QuotaStore
from gateway.quota.store.guards import StateMarker, check_eviction_policy
from gateway.quota.store.memory import MemoryQuotaStore
from gateway.quota.store.redis import RedisQuotaStore
from gateway.storage.breaker import StoreBreaker
from gateway.storage.client import RedisClient, connect
from gateway.storage.errors import StoreError

log = logging.getLogger("gateway")


@dataclass(slots=True)
class Stores:
    quota: QuotaStore
    cache: CacheBackend
    quota_breaker: StoreBreaker = field(default_factory=StoreBreaker)
    cache_breaker: StoreBreaker = field(default_factory=StoreBreaker)
    quota_client: RedisClient | None = None
    watcher: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watcher
        await self.cache.close()
        await self.quota.close()


def cache_url(config: GatewayConfig) -> str | None:
    url = config.cache.redis_url or config.store.redis_url
    return url.get_secret_value() if url is not None else None


async def build_quota_store(config: GatewayConfig) -> QuotaStore:
    """The quota store alone (for the CLI)."""
    if config.store.redis_url is None:
        return MemoryQuotaStore()
    client = await connect(
        config.store.redis_url.get_secret_value(), timeout_seconds=config.store.timeout_seconds
    )
    return RedisQuotaStore(client, prefix=config.store.key_prefix)


async def build_cache_backend(config: GatewayConfig) -> CacheBackend:
    """The cache backend alone (for the CLI); it owns its client."""
    url = cache_url(config)
    if url is None:
        return MemoryCacheBackend()
    client = await connect(url, timeout_seconds=config.store.timeout_seconds)
    return RedisCacheBackend(
        client,
        config.store.key_prefix,
        timeout_seconds=config.store.timeout_seconds,
        close_client=True,
    )


async def build_stores(config: GatewayConfig, metrics: Metrics | None = None) -> Stores:
    """Both stores, after the start-up checks of the quota Redis (``quota.store.guards``);
    with ``metrics``, the quota Redis is watched for lost state until ``close()``."""
    stores = await _connect_stores(config)
    client = stores.quota_client
    if client is None:
        return stores
    try:
        await check_eviction_policy(
            client,
            allow_evicting=config.store.allow_evicting_policy,
            timeout_seconds=config.store.timeout_seconds,
        )
    except BaseException:
        await stores.close()
        raise
    if metrics is not None:
        marker = StateMarker(
            client,
            config.store.key_prefix,
            metrics.quota_state_lost,
            timeout_seconds=config.store.timeout_seconds,
        )
        try:
            await marker.ensure(at_start=True)
        except StoreError as exc:
            log.warning("quota Redis unreachable at start", extra={"error": str(exc)})
        stores.watcher = asyncio.get_running_loop().create_task(
            marker.watch(config.store.state_check_seconds)
        )
    return stores


async def _connect_stores(config: GatewayConfig) -> Stores:
    timeout = config.store.timeout_seconds
    quota_url = config.store.redis_url.get_secret_value() if config.store.redis_url else None
    entries_url = cache_url(config)
    quota: QuotaStore
    cache: CacheBackend
    quota_client: RedisClient | None = None
    if quota_url is None:
        quota = MemoryQuotaStore()
    else:
        quota_client = await connect(quota_url, timeout_seconds=timeout)
        quota = RedisQuotaStore(quota_client, prefix=config.store.key_prefix)
    if entries_url is None:
        return Stores(quota, MemoryCacheBackend())
    if entries_url == quota_url and quota_client is not None:
        # One Redis for both: one client (the quota store closes it) and one view of its health.
        cache = RedisCacheBackend(quota_client, config.store.key_prefix, timeout_seconds=timeout)
        breaker = StoreBreaker()
        return Stores(quota, cache, breaker, breaker, quota_client)
    cache_client = await connect(entries_url, timeout_seconds=timeout)
    cache = RedisCacheBackend(
        cache_client, config.store.key_prefix, timeout_seconds=timeout, close_client=True
    )
    return Stores(quota, cache, quota_client=quota_client)
