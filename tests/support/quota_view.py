"""What a gateway's quota counters hold, on either store.

Redis is read directly, independently of the gateway's code; the embedded store lives inside
the gateway, so it is read through the gateway's own usage view (what ``/gateway/usage``
reports) and its count of open reservations.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from gateway.quota.store import keys
from gateway.quota.store.memory import MemoryQuotaStore
from gateway.state import STATE
from tests.support.gateway_proc import RunningGateway

#: The two stores every admission behaviour must hold on.
STORES = ("redis", "memory")


async def redis_counter(
    client: aioredis.Redis, prefix: str, team: str, metric: str, window: str = "day"
) -> tuple[int, int]:
    """(used, reserved) summed over the team's counters of ``metric`` per ``window``."""
    found = [k async for k in client.scan_iter(match=f"{prefix}:{{{team}}}:q:{metric}:{window}:*")]
    used = reserved = 0
    for key in found:
        values = await client.hgetall(key)
        used += int(values.get(b"used", 0))
        reserved += int(values.get(b"reserved", 0))
    return used, reserved


def _redis_url(gw: RunningGateway) -> str | None:
    url = gw.config.store.redis_url
    return None if url is None else url.get_secret_value()


async def usage(
    gw: RunningGateway, metric: str, team: str = "ml", window: str = "day"
) -> tuple[int, int]:
    """(used, reserved) of the team's ``metric`` rules per ``window``, on the gateway's store."""
    url = _redis_url(gw)
    if url is not None:
        async with aioredis.Redis.from_url(url) as client:
            return await redis_counter(client, gw.config.store.key_prefix, team, metric, window)
    state = gw.runner.app[STATE]
    rows = await state.quotas.usage(team, state.config.quota_rules(team))
    chosen = [r for r in rows if r.rule.metric == metric and r.rule.window == window]
    assert chosen, f"team {team} has no {metric} rule per {window}"
    return sum(r.used for r in chosen), sum(r.reserved for r in chosen)


async def open_reservations(gw: RunningGateway, team: str = "ml") -> int:
    """Reservations not yet settled (or expired) in the gateway's store."""
    url = _redis_url(gw)
    if url is not None:
        async with aioredis.Redis.from_url(url) as client:
            index = keys.reservation_index(gw.config.store.key_prefix, team)
            return int(await client.zcard(index))
    store = gw.runner.app[STATE].quotas.store
    assert isinstance(store, MemoryQuotaStore)
    return store.open_reservations(team)
