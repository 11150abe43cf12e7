"""The lean pipelined connection for script calls, against real redis-server processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway.storage.batching import ScriptBatcher
from gateway.storage.client import connect
from gateway.storage.errors import StoreConnectionError, StoreReplyError, StoreTimeoutError, guarded
from gateway.storage.pipelined import PipelinedConnection
from tests.support.redis_proc import RedisProcess
from tests.support.redis_proc import own_redis as own_redis_process
from tests.support.redis_topology import ClusterProcess

#: Echoes its key and argument, and counts its calls on the server.
ECHO = "redis.call('INCR', KEYS[1] .. ':calls'); return {KEYS[1], ARGV[1]}"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    with own_redis_process(tmp_path, ["--requirepass", "s3cret-pw"]) as proc:
        yield proc


@pytest.fixture
async def client(own_redis: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    redis = await connect(f"redis://:s3cret-pw@127.0.0.1:{own_redis.port}/3", timeout_seconds=0.5)
    assert isinstance(redis, aioredis.Redis)
    yield redis
    await redis.aclose()


async def test_concurrent_calls_get_their_own_replies_on_the_selected_database(
    client: aioredis.Redis,
) -> None:
    batcher = ScriptBatcher(client)
    assert batcher._direct is not None  # a plain server: the lean path is taken
    script = client.register_script(ECHO)
    try:
        replies = await asyncio.gather(
            *(batcher.call(script, [f"k{i % 7}"], [i]) for i in range(500))
        )
        assert replies == [[f"k{i % 7}".encode(), str(i).encode()] for i in range(500)]
        # The password and the database of the URL were used: the counts are in db 3.
        assert int(await client.get("k0:calls") or 0) == len(range(0, 500, 7))
    finally:
        await batcher.aclose()


async def test_a_flushed_script_is_loaded_again(client: aioredis.Redis) -> None:
    batcher = ScriptBatcher(client)
    script = client.register_script(ECHO)
    try:
        assert await batcher.call(script, ["a"], [1]) == [b"a", b"1"]
        await client.script_flush()
        assert await batcher.call(script, ["a"], [2]) == [b"a", b"2"]
        assert int(await client.get("a:calls") or 0) == 2
    finally:
        await batcher.aclose()


async def test_an_error_reply_is_a_reply_error_and_the_connection_stays_usable(
    client: aioredis.Redis,
) -> None:
    batcher = ScriptBatcher(client)
    failing = client.register_script("return redis.error_reply('OOM no memory here')")
    script = client.register_script(ECHO)
    try:
        with pytest.raises(StoreReplyError, match="no memory here"):
            async with guarded("test"):
                await batcher.call(failing, [], [])
        assert await batcher.call(script, ["b"], [1]) == [b"b", b"1"]
    finally:
        await batcher.aclose()


async def test_a_restarted_server_is_used_again(
    own_redis: RedisProcess, client: aioredis.Redis
) -> None:
    batcher = ScriptBatcher(client)
    script = client.register_script(ECHO)
    try:
        assert await batcher.call(script, ["c"], [1]) == [b"c", b"1"]
        await asyncio.to_thread(own_redis.stop)
        with pytest.raises(StoreConnectionError):
            async with guarded("test"):
                await batcher.call(script, ["c"], [2])
        await asyncio.to_thread(own_redis.start)
        # Restarted without persistence: the script is unknown and loaded on the way.
        assert await batcher.call(script, ["c"], [3]) == [b"c", b"3"]
    finally:
        await batcher.aclose()


async def test_a_frozen_server_fails_waiting_calls_after_the_socket_timeout(
    own_redis: RedisProcess, client: aioredis.Redis
) -> None:
    batcher = ScriptBatcher(client)
    script = client.register_script(ECHO)
    assert own_redis.process is not None
    try:
        assert await batcher.call(script, ["d"], [1]) == [b"d", b"1"]
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        try:
            with pytest.raises(StoreTimeoutError):
                async with guarded("test"):
                    await batcher.call(script, ["d"], [2])
            waited = time.monotonic() - started
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        # One socket timeout (0.5 s), not one per retry.
        assert 0.4 < waited < 1.2, waited
        assert await batcher.call(script, ["d"], [3]) == [b"d", b"3"]
    finally:
        await batcher.aclose()


async def test_a_wrong_password_is_a_reply_error(own_redis: RedisProcess) -> None:
    redis = aioredis.Redis.from_url(f"redis://:wrong@127.0.0.1:{own_redis.port}/0")
    batcher = ScriptBatcher(redis)
    try:
        with pytest.raises(ResponseError, match="AUTH"):
            await batcher.call(redis.register_script(ECHO), ["e"], [1])
    finally:
        await batcher.aclose()
        await redis.aclose()


async def test_cluster_calls_go_to_each_primary_directly(redis_cluster: ClusterProcess) -> None:
    cluster = await connect(redis_cluster.url, timeout_seconds=1.0)
    batcher = ScriptBatcher(cluster)
    script = cluster.register_script(ECHO)
    tags = [f"{{pipelined-{i}}}" for i in range(30)]  # slots spread over the primaries
    try:
        replies = await asyncio.gather(
            *(batcher.call(script, [t], [i]) for i, t in enumerate(tags))
        )
        assert replies == [[t.encode(), str(i).encode()] for i, t in enumerate(tags)]
        assert batcher._cluster is not None
        used = [c for c in batcher._cluster._by_node.values() if c is not None]
        assert len(used) == 3  # one lean connection per primary
        for i, t in enumerate(tags):
            assert int(await cluster.get(f"{t}:calls") or 0) >= 1, i
    finally:
        await batcher.aclose()
        await cluster.aclose()


async def test_sentinel_and_tls_keep_redis_py(redis_cluster: ClusterProcess) -> None:
    cluster = await connect(redis_cluster.url, timeout_seconds=1.0)
    try:
        assert PipelinedConnection.for_client(cluster) is None
    finally:
        await cluster.aclose()
    sentinel = await connect(
        "redis+sentinel://127.0.0.1:1/mymaster", timeout_seconds=0.2
    )  # not contacted until used
    tls = aioredis.Redis.from_url("rediss://127.0.0.1:1/0")
    decoded = aioredis.Redis.from_url("redis://127.0.0.1:1/0", decode_responses=True)
    try:
        for client in (sentinel, tls, decoded):
            assert PipelinedConnection.for_client(client) is None
        plain = aioredis.Redis.from_url("redis://127.0.0.1:1/0")
        assert PipelinedConnection.for_client(plain) is not None
        await plain.aclose()
    finally:
        for client in (sentinel, tls, decoded):
            await client.aclose()
