"""Checks on the Redis that holds quota counters: it must not evict them, and losing them
must not go unnoticed.

- ``check_eviction_policy``: at start, ``CONFIG GET maxmemory-policy`` on every primary. An
  evicting policy (``allkeys-*``, ``volatile-*``: the counters carry TTLs, so ``volatile-*``
  can drop them too) refuses the start unless ``store.allow_evicting_policy``. Managed Redis
  that refuses ``CONFIG`` gets a warning saying what to check.
- ``StateMarker``: a key without TTL (one per primary on a cluster), written at first start.
  Found missing later (FLUSHALL, a restart without persistence, a failover to an empty
  replica): an error is logged, ``gateway_quota_state_resets_total`` counts it, and the marker
  is written again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import Counter
from redis.asyncio.cluster import RedisCluster

from gateway.config_loader import ConfigError
from gateway.quota.store import keys
from gateway.storage.client import RedisClient, config_values, one_key_per_primary, per_primary
from gateway.storage.errors import StoreError, StoreReplyError, guarded

log = logging.getLogger("gateway.quota")

EVICTING_PREFIXES = ("allkeys-", "volatile-")


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


async def marker_keys(client: RedisClient, prefix: str) -> list[str]:
    """The state marker keys: one on one server, one per primary on a cluster."""
    if isinstance(client, RedisCluster):
        return await one_key_per_primary(client, lambda n: keys.state_marker(prefix, n))
    return [keys.state_marker(prefix)]


class StateMarker:
    """The marker of lost state: one key on one server; on a cluster one key per primary, so a
    FLUSHALL or an empty restart of any node is noticed, not only of the one holding a key.

    A marker found missing after the start counts as lost, unless this process never had that
    key among its markers before: a resharding or a new primary changes which key lands on
    which node (the old key moved with its slot), and the new one is written silently. A
    failover to an empty replica keeps the slots, so the key is the same and its absence counts.
    """

    def __init__(
        self, client: RedisClient, prefix: str, lost: Counter, *, timeout_seconds: float
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._lost = lost
        self._timeout = timeout_seconds
        #: Every marker key this process has checked (empty: never worked out which, e.g. the
        #: cluster was down at start; then any missing marker counts, as on one server).
        self._seen: set[str] = set()

    async def _keys(self) -> list[str]:
        return await marker_keys(self._client, self._prefix)

    async def ensure(self, *, at_start: bool = False) -> bool:
        """Write every missing marker; True if all were there. Missing at start is the first
        start, or a loss nobody saw: logged, not counted. A node that fails is skipped (the
        others are still checked) and its error raised at the end."""
        async with guarded("redis quota store", self._timeout):
            markers = await self._keys()
        written: list[str] = []
        failure: StoreError | None = None
        for key in markers:
            try:
                async with guarded("redis quota store", self._timeout):
                    if await self._client.set(key, str(int(time.time())), nx=True):
                        written.append(key)
            except StoreError as exc:
                failure = failure or exc
        lost = [key for key in written if not self._seen or key in self._seen]
        self._seen.update(markers)
        if lost and not at_start:
            self._lost.inc()
            log.error(
                "quota state lost: the quota Redis no longer holds its marker key (flushed, or "
                "restarted without persistence); usage counted so far is gone",
                extra={"key": ",".join(lost)},
            )
        elif written:
            log.info(
                "quota state marker written (first start, state lost while no gateway ran, "
                "or a new cluster layout)",
                extra={"key": ",".join(written)},
            )
        if failure is not None:
            raise failure
        return not written

    async def watch(self, interval_seconds: float) -> None:
        """Check the markers every ``interval_seconds`` until cancelled."""
        while True:
            # Redis away: the quota service reports that on its own.
            with contextlib.suppress(StoreError):
                await self.ensure()
            await asyncio.sleep(interval_seconds)
