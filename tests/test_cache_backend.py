"""gateway.cache.backend: the same behaviour from RedisCacheBackend (real redis-server) and
MemoryCacheBackend, plus what only Redis has (owners across replicas, outages)."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.cache.backend import (
    CacheBackend,
    MemoryCacheBackend,
    RedisCacheBackend,
)
from gateway.storage.errors import StoreError
from tests.support.redis_proc import RedisProcess, free_port, start_or_skip

KEY_A = "team:a:" + "a" * 64
KEY_B = "team:b:" + "b" * 64


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Store:
    backend: CacheBackend
    clock: FakeClock | None = None  # memory only
    redis: Redis | None = None  # redis only
    prefix: str = ""


def client(url: str, timeout: float = 1.0) -> Redis:
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


@pytest.fixture(params=["redis", "memory"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        clock = FakeClock()
        yield Store(MemoryCacheBackend(clock=clock), clock=clock)
        return
    redis_server = request.getfixturevalue("redis_server")
    redis = client(redis_server.url)
    prefix = f"t{uuid.uuid4().hex[:12]}"
    backend = RedisCacheBackend(redis, prefix, timeout_seconds=2.0)
    try:
        yield Store(backend, redis=redis, prefix=prefix)
    finally:
        await backend.close()
        await redis.aclose()


# ------------------------------------------------------------------------------ both backends


async def test_get_put(store: Store) -> None:
    backend = store.backend
    assert await backend.get(KEY_A) is None
    await backend.put(KEY_A, b"\x00value\xff", 60)
    assert await backend.get(KEY_A) == b"\x00value\xff"
    assert await backend.get(KEY_B) is None
    await backend.put(KEY_A, b"replaced", 60)
    assert await backend.get(KEY_A) == b"replaced"


async def test_ttl(store: Store) -> None:
    backend = store.backend
    await backend.put(KEY_A, b"v", 1)
    await backend.put(KEY_B, b"w", 30)
    if store.clock is not None:
        store.clock.now += 0.999
        assert await backend.get(KEY_A) == b"v"
        store.clock.now += 0.001
        assert await backend.get(KEY_A) is None
        assert await backend.get(KEY_B) == b"w"
        store.clock.now += 30
        assert await backend.get(KEY_B) is None
        return
    assert isinstance(backend, RedisCacheBackend) and store.redis is not None
    assert 0 < await store.redis.pttl(backend.entry_key(KEY_A)) <= 1000
    assert 29_000 < await store.redis.pttl(backend.entry_key(KEY_B)) <= 30_000
    # a put replaces the TTL too
    await backend.put(KEY_A, b"v2", 30)
    assert 29_000 < await store.redis.pttl(backend.entry_key(KEY_A)) <= 30_000
    # once Redis expires the key, get is a miss
    await store.redis.pexpire(backend.entry_key(KEY_A), 1)
    deadline = time.monotonic() + 2
    while await backend.get(KEY_A) is not None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)  # waiting for Redis' own clock, not synchronising tasks


async def test_lock_exclusive_and_reacquirable(store: Store) -> None:
    backend = store.backend
    assert await backend.acquire_lock(KEY_A, 10) is True
    assert await backend.acquire_lock(KEY_A, 10) is False
    assert await backend.acquire_lock(KEY_B, 10) is True  # per key
    await backend.release_lock(KEY_A)
    assert await backend.acquire_lock(KEY_A, 10) is True
    await backend.release_lock(KEY_A)
    await backend.release_lock(KEY_A)  # releasing twice is harmless
    await backend.release_lock(KEY_B)
    # locks are not entries
    assert await backend.get(KEY_A) is None


async def test_lock_expires(store: Store) -> None:
    backend = store.backend
    assert await backend.acquire_lock(KEY_A, 1.5)
    if store.clock is not None:
        store.clock.now += 1.4
        assert not await backend.acquire_lock(KEY_A, 1.5)
        store.clock.now += 0.1
        assert await backend.acquire_lock(KEY_A, 1.5)
        return
    assert isinstance(backend, RedisCacheBackend) and store.redis is not None
    assert 1000 < await store.redis.pttl(backend.lock_key(KEY_A)) <= 1500


async def test_concurrent_acquire_has_one_winner(store: Store) -> None:
    results = await asyncio.gather(*(store.backend.acquire_lock(KEY_A, 10) for _ in range(50)))
    assert results.count(True) == 1


async def test_purge_by_scope(store: Store) -> None:
    backend = store.backend
    keys = {
        "team:a": [f"team:a:{i:064x}" for i in range(1200)],  # several SCAN/UNLINK batches
        "team:ab": [f"team:ab:{i:064x}" for i in range(3)],
        "shared": [f"shared:{i:064x}" for i in range(4)],
    }
    for group in keys.values():
        for i in range(0, len(group), 50):  # within the client's connection pool
            await asyncio.gather(*(backend.put(k, b"x", 60) for k in group[i : i + 50]))
    assert await backend.acquire_lock(keys["team:a"][0], 10)

    assert await backend.purge("team:a") == 1200
    assert await backend.get(keys["team:a"][5]) is None
    assert await backend.get(keys["team:ab"][0]) == b"x"  # a prefix of the name is not a scope
    assert await backend.get(keys["shared"][0]) == b"x"
    assert await backend.purge("team:a") == 0
    assert await backend.purge("team:nobody") == 0
    assert await backend.purge(None) == 7
    assert await backend.get(keys["shared"][0]) is None
    # locks survive a purge
    assert not await backend.acquire_lock(keys["team:a"][0], 10)


# ------------------------------------------------------------------------------ memory only


async def test_memory_lru_is_bounded_by_bytes() -> None:
    key_len = len(KEY_A)
    backend = MemoryCacheBackend(max_bytes=3 * (key_len + 100))
    a, b, c, d = (f"team:x:{i:064x}" for i in range(4))
    for k in (a, b, c):
        await backend.put(k, b"v" * 100, 60)
    assert len(backend) == 3 and backend.size_bytes == 3 * (len(a) + 100)
    assert await backend.get(a) is not None  # a is now the most recent
    await backend.put(d, b"v" * 100, 60)
    assert await backend.get(b) is None  # least recently used went
    assert all([await backend.get(k) is not None for k in (a, c, d)])
    # one value larger than everything is not stored, and evicts nothing
    await backend.put(b, b"v" * 10_000, 60)
    assert await backend.get(b) is None
    assert len(backend) == 3
    # replacing keeps the accounting right
    await backend.put(a, b"", 60)
    assert backend.size_bytes == 2 * (len(a) + 100) + len(a)
    await backend.close()
    assert len(backend) == 0 and backend.size_bytes == 0


# ------------------------------------------------------------------------------ redis only


@pytest.fixture
async def redis_client(redis_server: RedisProcess) -> AsyncIterator[Redis]:
    redis = client(redis_server.url)
    yield redis
    await redis.aclose()


async def test_redis_key_layout(redis_client: Redis) -> None:
    backend = RedisCacheBackend(redis_client, "gwtest")
    scope, _, digest = KEY_A.rpartition(":")
    entry, lock = (
        f"gwtest:cache:v1:{scope}:{{{digest}}}",
        f"gwtest:cachelock:v1:{scope}:{{{digest}}}",
    )
    assert backend.entry_key(KEY_A) == entry and backend.lock_key(KEY_A) == lock
    # Entry and lock share a hash tag: one script may touch both on Redis Cluster.
    await backend.put(KEY_A, b"v", 5)
    assert await redis_client.get(entry) == b"v"
    assert await backend.acquire_lock(KEY_A, 5)
    assert await redis_client.exists(lock) == 1
    await backend.release_lock(KEY_A)
    assert await redis_client.exists(lock) == 0
    await redis_client.delete(entry)


@pytest.mark.parametrize("backend_kind", ["redis", "memory"])
async def test_get_or_lock_and_put_and_unlock(redis_client: Redis, backend_kind: str) -> None:
    if backend_kind == "redis":
        prefix = f"g{uuid.uuid4().hex[:8]}"
        one, two = RedisCacheBackend(redis_client, prefix), RedisCacheBackend(redis_client, prefix)
    else:
        one = two = MemoryCacheBackend()
    assert await one.get_or_lock(KEY_A, 5) == (None, True)  # miss: the lock is ours
    assert await two.get_or_lock(KEY_A, 5) == (None, False)  # miss: someone else leads
    await one.put_and_unlock(KEY_A, b"entry", 60)
    assert await two.get_or_lock(KEY_A, 5) == (b"entry", False)  # hit
    assert await two.acquire_lock(KEY_A, 5)  # the lock was released with the store


async def test_a_resent_get_or_lock_still_holds_the_lock(redis_client: Redis) -> None:
    """The same call run twice (resent after its reply was lost) took the lock the first time:
    the second run must say so, or the leader would wait for itself."""
    from importlib import resources

    source = resources.files("gateway.cache").joinpath("lua", "get_or_lock.lua").read_text()
    script = redis_client.register_script(source)
    backend = RedisCacheBackend(redis_client, f"r{uuid.uuid4().hex[:8]}")
    lock_keys = [backend.entry_key(KEY_A), backend.lock_key(KEY_A)]
    assert await script(keys=lock_keys, args=["mine", 5000]) == [None, 1]
    assert await script(keys=lock_keys, args=["mine", 5000]) == [None, 1]
    assert await script(keys=lock_keys, args=["theirs", 5000]) == [None, 0]
    await redis_client.delete(lock_keys[1])


async def test_redis_purge_leaves_other_prefixes(redis_client: Redis) -> None:
    mine = RedisCacheBackend(redis_client, f"p{uuid.uuid4().hex[:8]}")
    other = RedisCacheBackend(redis_client, f"q{uuid.uuid4().hex[:8]}")
    await mine.put(KEY_A, b"1", 60)
    await other.put(KEY_A, b"2", 60)
    assert await mine.purge(None) == 1
    assert await other.get(KEY_A) == b"2"
    assert await other.purge(None) == 1


async def test_redis_release_only_by_owner(redis_server: RedisProcess) -> None:
    prefix = f"o{uuid.uuid4().hex[:8]}"
    redis_a, redis_b = client(redis_server.url), client(redis_server.url)
    replica_a = RedisCacheBackend(redis_a, prefix)
    replica_b = RedisCacheBackend(redis_b, prefix)
    try:
        assert await replica_a.acquire_lock(KEY_A, 10)
        assert not await replica_b.acquire_lock(KEY_A, 10)
        await replica_b.release_lock(KEY_A)  # not B's: nothing happens
        assert not await replica_b.acquire_lock(KEY_A, 10)

        # A's lock expires (simulated: the key disappears) and B takes over
        await redis_a.delete(replica_a.lock_key(KEY_A))
        assert await replica_b.acquire_lock(KEY_A, 10)
        await replica_a.release_lock(KEY_A)  # A must not free B's lock
        assert await redis_a.exists(replica_b.lock_key(KEY_A)) == 1
        assert not await replica_a.acquire_lock(KEY_A, 10)

        # the script is reloaded after a SCRIPT FLUSH (EVALSHA -> NOSCRIPT -> load)
        await redis_a.script_flush()
        await replica_b.release_lock(KEY_A)
        assert await redis_a.exists(replica_b.lock_key(KEY_A)) == 0
        assert await replica_a.acquire_lock(KEY_A, 10)
        await replica_a.release_lock(KEY_A)
    finally:
        await redis_a.aclose()
        await redis_b.aclose()


async def test_redis_client_must_return_bytes(redis_server: RedisProcess) -> None:
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            RedisCacheBackend(redis, "x")
    finally:
        await redis.aclose()


async def test_redis_outage_raises_cache_backend_error(tmp_path: Path) -> None:
    """A second, dedicated redis-server is stopped under the backend: every call fails fast."""
    proc = RedisProcess(port=free_port(), workdir=tmp_path)
    start_or_skip(proc)
    redis = client(proc.url, timeout=0.2)
    backend = RedisCacheBackend(redis, "down", timeout_seconds=0.5, close_client=True)
    try:
        await backend.put(KEY_A, b"v", 60)
        assert await backend.get(KEY_A) == b"v"
        assert await backend.acquire_lock(KEY_B, 10)  # held across the outage

        # A hung server (SIGSTOP): the per-call bound cuts every operation short.
        assert proc.process is not None
        proc.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            results = await asyncio.gather(
                backend.get(KEY_A),
                backend.put(KEY_A, b"w", 60),
                backend.acquire_lock(KEY_A, 10),
                backend.purge(None),
                return_exceptions=True,
            )
            assert time.monotonic() - started < 1.5
            assert all(isinstance(r, StoreError) for r in results), results
        finally:
            proc.process.send_signal(signal.SIGCONT)
        # ... and once it answers again, so does the backend, with no stale replies mixed in
        assert await backend.get(KEY_A) in (b"v", b"w")
        assert await backend.get(KEY_B) is None

        proc.stop()

        operations: dict[str, Callable[[], Awaitable[object]]] = {
            "get": lambda: backend.get(KEY_A),
            "put": lambda: backend.put(KEY_A, b"v", 60),
            "acquire_lock": lambda: backend.acquire_lock(KEY_A, 10),
            "release_lock": lambda: backend.release_lock(KEY_B),
            "purge": lambda: backend.purge("team:a"),
            "purge_all": lambda: backend.purge(None),
        }
        for name, operation in operations.items():
            started = time.monotonic()
            with pytest.raises(StoreError) as caught:
                await operation()
            elapsed = time.monotonic() - started
            assert elapsed < 1.5, f"{name} took {elapsed:.2f}s"
            assert caught.value.__cause__ is not None, name
    finally:
        proc.stop()
        await backend.close()


async def test_redis_never_reachable(tmp_path: Path) -> None:
    redis = client(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    backend = RedisCacheBackend(redis, "nowhere", timeout_seconds=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(StoreError):
            await backend.get(KEY_A)
        with pytest.raises(StoreError):
            await backend.acquire_lock(KEY_A, 1)
        assert time.monotonic() - started < 2.0
    finally:
        await redis.aclose()
