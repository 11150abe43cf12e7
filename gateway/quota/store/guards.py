"""Checks on the Redis that holds quota counters: it must not evict them, and losing them
must not go unnoticed.

- ``check_eviction_policy``: at start, ``CONFIG GET maxmemory-policy`` on every primary. An
  evicting policy (``allkeys-*``, ``volatile-*``: the counters carry TTLs, so ``volatile-*``
  can drop them too) refuses the start unless ``store.allow_evicting_policy``. Managed Redis
  that refuses ``CONFIG`` gets a warning saying what to check.
- ``StateMarker``: a key without TTL, written at first start. Found missing later (FLUSHALL, a
  restart without persistence, a failover to an empty replica): an error is logged,
  ``gateway_quota_state_resets_total`` counts it, and the marker is written again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import Counter

from gateway.config_loader import ConfigError
from gateway.storage.client import RedisClient, config_values, per_primary
from gateway.storage.errors import StoreError, StoreReplyError, guarded

log = logging.getLogger("gateway.quota")

EVICTING_PREFIXES = ("allkeys-", "volatile-")


def marker_key(prefix: str) -> str:
    return f"{prefix}:quota-state-marker"


async def check_eviction_policy(
    client: RedisClient, *, allow_evicting: bool, timeout_seconds: float
) -> None:
    """Raise ``ConfigError`` if the quota Redis may evict counters (see the module docstring)."""
    try:
        async with guarded("redis quota store", timeout_seconds):
            replies = await per_primary(client, "CONFIG", "GET", "maxmemory-policy")
        policies = config_values(replies, "maxmemory-policy")
    except StoreReplyError as exc:
        log.warning(
            "cannot read maxmemory-policy of the quota Redis (CONFIG refused?); make sure it is "
            "noeviction, or counters may be evicted and budgets reset",
            extra={"error": str(exc)},
        )
        return
    except StoreError as exc:
        log.warning("cannot check the quota Redis at start", extra={"error": str(exc)})
        return
    evicting = sorted({p for p in policies if p.startswith(EVICTING_PREFIXES)})
    if not evicting:
        return
    if allow_evicting:
        log.warning(
            "the quota Redis has an evicting maxmemory-policy; allowed by "
            "store.allow_evicting_policy",
            extra={"policy": ",".join(evicting)},
        )
        return
    raise ConfigError(
        f"the quota Redis has maxmemory-policy {','.join(evicting)}: it may evict quota "
        "counters and reset budgets. Set maxmemory-policy noeviction on it (keep the cache "
        "on its own Redis with cache.redis_url), or set store.allow_evicting_policy: true."
    )


class StateMarker:
    def __init__(
        self, client: RedisClient, prefix: str, lost: Counter, *, timeout_seconds: float
    ) -> None:
        self._client = client
        self._key = marker_key(prefix)
        self._lost = lost
        self._timeout = timeout_seconds

    async def ensure(self, *, at_start: bool = False) -> bool:
        """Write the marker if it is missing; True if it was there. Missing at start is the
        first start, or a loss nobody saw: logged, not counted."""
        async with guarded("redis quota store", self._timeout):
            created = await self._client.set(self._key, str(int(time.time())), nx=True)
        if not created:
            return True
        if at_start:
            log.info("quota state marker written (first start, or state lost while no gateway ran)")
        else:
            self._lost.inc()
            log.error(
                "quota state lost: the quota Redis no longer holds its marker key (flushed, or "
                "restarted without persistence); usage counted so far is gone",
                extra={"key": self._key},
            )
        return False

    async def watch(self, interval_seconds: float) -> None:
        """Check the marker every ``interval_seconds`` until cancelled."""
        while True:
            # Redis away: the quota service reports that on its own.
            with contextlib.suppress(StoreError):
                await self.ensure()
            await asyncio.sleep(interval_seconds)
