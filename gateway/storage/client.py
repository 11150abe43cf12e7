"""Building the Redis client from a URL, and the few calls that differ by topology.

Three topologies, told apart by the URL and by the server itself:

- ``redis://``, ``rediss://``, ``unix://``: one server. If that server says
  ``cluster_enabled:1`` (``INFO cluster``), the client is redis-py's ``RedisCluster``, seeded
  from that node: the URL of any node of a cluster is enough.
- ``redis+sentinel://[:password@]host:26379,host2:26379/service[/db]``: the primary that the
  Sentinels name for ``service``; after a failover the client follows the promoted replica.

Every key a script touches shares one hash tag, so scripts and pipelines work unchanged on a
cluster. What does not route by key (SCAN, CONFIG GET) is sent to every primary
(``per_primary``, ``scan_keys``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from gateway.storage.errors import guarded

log = logging.getLogger("gateway.storage")

RedisClient = aioredis.Redis | RedisCluster

SENTINEL_SCHEME = "redis+sentinel://"


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelUrl:
    """``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``."""
    if not url.startswith(SENTINEL_SCHEME):
        raise ValueError(f"not a {SENTINEL_SCHEME} URL")
    rest = url[len(SENTINEL_SCHEME) :]
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        user, sep, secret = auth.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if sep else None
    sentinels = []
    for item in netloc.split(","):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"sentinel address {item!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise ValueError("a redis+sentinel:// URL names the service: .../mymaster")
    if db and not db.isdigit():
        raise ValueError(f"database {db!r} is not a number")
    return SentinelUrl(tuple(sentinels), service, int(db or 0), username, password)


def is_cluster(client: RedisClient) -> bool:
    return isinstance(client, RedisCluster)


async def connect(url: str, *, timeout_seconds: float, max_connections: int = 64) -> RedisClient:
    """A client for ``url``, of the right kind for its topology (see the module docstring).

    If the server cannot be asked whether it is a cluster (Redis down at start), the client
    is a standalone one: the gateway still starts, in its ``store.on_error`` mode.
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout_seconds,
        "socket_connect_timeout": timeout_seconds,
        "health_check_interval": 30,
    }
    if url.startswith(SENTINEL_SCHEME):
        return _sentinel_client(parse_sentinel_url(url), options, max_connections)
    # The pool makes callers wait (bounded) for a free connection under bursts, instead of
    # failing them or opening unbounded connections.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout_seconds, **options
    )
    client = aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes its connections
    try:
        async with guarded("redis", timeout_seconds):
            info = await client.info("cluster")
    except Exception as exc:  # any failure here only means "assume standalone"
        log.warning(
            "could not ask Redis whether it is a cluster; assuming a single server",
            extra={"error": str(exc)},
        )
        return client
    if not info.get("cluster_enabled"):
        return client
    await client.aclose()
    cluster = RedisCluster.from_url(url, max_connections=max_connections, **options)
    try:
        async with guarded("redis cluster", timeout_seconds):
            await cluster.initialize()
    except Exception as exc:  # commands map the cluster again on first use
        log.warning("could not map the Redis Cluster yet", extra={"error": str(exc)})
    return cluster


async def _primaries(client: RedisCluster) -> list[Any]:
    await client.initialize()  # a no-op once the cluster is mapped
    return list(client.get_primaries())


def _sentinel_client(
    parsed: SentinelUrl, options: dict[str, Any], max_connections: int
) -> aioredis.Redis:
    sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2
        list(parsed.sentinels),
        sentinel_kwargs={
            "socket_timeout": options["socket_timeout"],
            "socket_connect_timeout": options["socket_connect_timeout"],
            "password": parsed.password,
        },
        **options,
    )
    client: aioredis.Redis = sentinel.master_for(
        parsed.service,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        max_connections=max_connections,
    )
    return client


async def per_primary(client: RedisClient, *command: Any) -> list[Any]:
    """``command``'s reply from every primary (one server: a list of one)."""
    if isinstance(client, RedisCluster):
        return [
            await client.execute_command(*command, target_nodes=node)
            for node in await _primaries(client)
        ]
    return [await client.execute_command(*command)]  # type: ignore[no-untyped-call]


async def one_key_per_primary(
    client: RedisCluster, key_for: Callable[[int], str], *, bound: int = 1 << 18
) -> list[str]:
    """For each primary that serves slots, the first of ``key_for(0)``, ``key_for(1)``, ...
    whose slot it serves: every replica of the gateway picks the same keys for the same slot
    layout. A primary that ``bound`` tries do not reach (it serves a handful of slots) gets
    none; a uniform layout needs a few tries per primary."""
    await client.initialize()  # a no-op once the cluster is mapped
    owners = {nodes[0].name for nodes in client.nodes_manager.slots_cache.values() if nodes}
    found: dict[str, str] = {}
    for n in range(bound):
        if len(found) == len(owners):
            break
        key = key_for(n)
        nodes = client.nodes_manager.slots_cache.get(client.keyslot(key))
        if nodes and nodes[0].name not in found:
            found[nodes[0].name] = key
    return [found[name] for name in sorted(found)]


async def scan_keys(
    client: RedisClient, match: str, count: int, *, what: str, bound_seconds: float | None
) -> AsyncIterator[list[Any]]:
    """Batches of the keys matching ``match``; on a cluster, a SCAN per primary. Each SCAN
    step is bounded by ``bound_seconds`` and raises ``StoreError`` (a long scan is fine)."""
    targets: list[Any] = [None]
    if isinstance(client, RedisCluster):
        async with guarded(what, bound_seconds):
            targets = await _primaries(client)
    for node in targets:
        cursor: Any = 0
        while True:
            async with guarded(what, bound_seconds):
                if node is None:
                    cursor, keys = await client.scan(cursor, match=match, count=count)
                else:
                    # One node asked: redis-py still answers with {node name: cursor}.
                    cursors: Any
                    cursors, keys = await client.scan(
                        cursor, match=match, count=count, target_nodes=node
                    )
                    cursor = cursors[node.name]
            if keys:
                yield list(keys)
            if int(cursor) == 0:
                break


def decodes_responses(client: RedisClient) -> bool:
    if isinstance(client, RedisCluster):
        return bool(client.get_encoder().decode_responses)
    return bool(client.connection_pool.connection_kwargs.get("decode_responses"))


def config_values(replies: Sequence[Any], name: str) -> list[str]:
    """The values of ``name`` in ``CONFIG GET`` replies (RESP2 lists or RESP3 maps)."""
    values = []
    for reply in replies:
        if isinstance(reply, dict):
            items = dict(reply)
        else:
            items = dict(zip(reply[::2], reply[1::2], strict=True))
        for key, value in items.items():
            key = key.decode() if isinstance(key, bytes) else str(key)
            if key == name:
                values.append(value.decode() if isinstance(value, bytes) else str(value))
    return values
