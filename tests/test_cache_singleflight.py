"""gateway.cache.singleflight: in-process single-flight and cross-replica coalescing.

Synchronisation is by events only: a follower registers synchronously when it enters
``lead_or_wait``, so once every task has run up to its ``async with`` the followers are in.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.cache.backend import (
    CacheBackend,
    MemoryCacheBackend,
    RedisCacheBackend,
)
from gateway.cache.singleflight import SingleFlight, Slot, coalesce
from gateway.storage.errors import StoreError
from tests.support.redis_proc import RedisProcess, free_port

KEY = "team:a:" + "0" * 64
N = 50


class Barrier:
    """Set once ``count`` tasks have arrived (each calls ``arrive()`` just before entering)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.arrived = 0
        self.event = asyncio.Event()

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived == self.count:
            self.event.set()


class Upstream:
    def __init__(self, gate: Barrier | None = None, fail_first: bool = False) -> None:
        self.calls = 0
        self.gate = gate
        self.fail_first = fail_first

    async def __call__(self) -> bytes:
        self.calls += 1
        call = self.calls
        if self.gate is not None and call == 1:
            await self.gate.event.wait()
        if self.fail_first and call == 1:
            raise RuntimeError("upstream failed")
        return b"entry-%d" % call


async def request(
    flight: SingleFlight, upstream: Upstream, barrier: Barrier, *, publish: bool = True
) -> tuple[bytes, str]:
    barrier.arrive()
    async with flight.lead_or_wait(KEY, wait_seconds=10) as slot:
        if slot.entry is not None:
            return slot.entry, slot.outcome
        value = await upstream()
        if publish:
            slot.publish(value)
        return value, slot.outcome


# ------------------------------------------------------------------------------ in-process


async def test_fifty_identical_calls_go_upstream_once() -> None:
    flight = SingleFlight()
    barrier = Barrier(N)
    upstream = Upstream(gate=barrier)
    results = await asyncio.gather(*(request(flight, upstream, barrier) for _ in range(N)))
    assert upstream.calls == 1
    values = {value for value, _ in results}
    assert values == {b"entry-1"}
    outcomes = [outcome for _, outcome in results]
    assert outcomes.count("leader") == 1 and outcomes.count("follower") == N - 1
    assert len(flight) == 0


async def test_leader_failure_wakes_followers_who_go_themselves() -> None:
    flight = SingleFlight()
    barrier = Barrier(N)
    upstream = Upstream(gate=barrier, fail_first=True)
    results = await asyncio.gather(
        *(request(flight, upstream, barrier) for _ in range(N)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    followers = [r for r in results if not isinstance(r, BaseException)]
    assert {outcome for _, outcome in followers} == {"leader_failed"}
    assert upstream.calls == N  # the failed leader, then each follower on its own
    assert len(flight) == 0


async def test_not_cacheable_wakes_followers_with_none() -> None:
    flight = SingleFlight()
    barrier = Barrier(N)
    upstream = Upstream(gate=barrier)
    results = await asyncio.gather(
        *(request(flight, upstream, barrier, publish=False) for _ in range(N))
    )
    assert upstream.calls == N
    assert sorted(outcome for _, outcome in results) == ["leader"] + ["leader_failed"] * (N - 1)


async def test_cancelled_leader_wakes_followers() -> None:
    flight = SingleFlight()
    barrier = Barrier(N)
    upstream = Upstream(gate=Barrier(1))  # the leader's call blocks until cancelled
    tasks = [asyncio.create_task(request(flight, upstream, barrier)) for _ in range(N)]
    await barrier.event.wait()
    # Tasks run in creation order: the first leads and is parked in its upstream call by now.
    assert upstream.calls == 1
    tasks[0].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert {r[1] for r in results[1:] if isinstance(r, tuple)} == {"leader_failed"}
    assert len(flight) == 0


async def test_cancelled_follower_does_not_disturb_the_others() -> None:
    flight = SingleFlight()
    barrier = Barrier(N)
    victim_box: list[asyncio.Task[Any]] = []

    class CancelThenAnswer(Upstream):
        async def __call__(self) -> bytes:
            self.calls += 1
            await barrier.event.wait()
            victim = victim_box[0]
            victim.cancel()
            await asyncio.wait([victim])  # the victim has really gone
            return b"entry"

    upstream = CancelThenAnswer()
    tasks = [asyncio.create_task(request(flight, upstream, barrier)) for _ in range(N)]
    victim_box.append(tasks[7])
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[7], asyncio.CancelledError)
    others = [r for i, r in enumerate(results) if i != 7]
    assert all(r == (b"entry", "follower") for r in others[1:]), others
    assert others[0] == (b"entry", "leader")
    assert upstream.calls == 1


async def test_follower_wait_is_bounded() -> None:
    flight = SingleFlight()
    leading, release = asyncio.Event(), asyncio.Event()

    async def leader() -> None:
        async with flight.lead_or_wait(KEY, wait_seconds=10) as slot:
            assert slot.leader
            leading.set()
            await release.wait()
            slot.publish(b"late")

    task = asyncio.create_task(leader())
    await leading.wait()
    started = time.monotonic()
    async with flight.lead_or_wait(KEY, wait_seconds=0.05) as slot:
        assert (slot.entry, slot.leader, slot.outcome) == (None, False, "timeout")
        slot.publish(b"ignored")  # a follower's publish is a no-op
    assert time.monotonic() - started >= 0.05
    release.set()
    await task
    # the late leader's publish went to nobody; the next request leads afresh
    async with flight.lead_or_wait(KEY, wait_seconds=1) as slot:
        assert slot.outcome == "leader"


async def test_keys_are_independent_and_publish_is_idempotent() -> None:
    flight = SingleFlight()
    async with (
        flight.lead_or_wait("a", wait_seconds=1) as a,
        flight.lead_or_wait("b", wait_seconds=1) as b,
    ):
        assert a.leader and b.leader and len(flight) == 2
        a.publish(b"1")
        a.publish(b"2")  # first one wins
    assert len(flight) == 0


# ------------------------------------------------------------------------------ across replicas


def redis_client(url: str, timeout: float = 1.0) -> Redis:
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


@pytest.fixture
async def redis_pair(redis_server: RedisProcess) -> AsyncIterator[tuple[Redis, Redis, str]]:
    a, b = redis_client(redis_server.url), redis_client(redis_server.url)
    yield a, b, f"sf{uuid.uuid4().hex[:10]}"
    await a.aclose()
    await b.aclose()


async def replica_request(
    flight: SingleFlight,
    backend: CacheBackend,
    upstream: Callable[[], Awaitable[bytes]],
    barrier: Barrier | None = None,
    *,
    wait_seconds: float = 10,
    errors: list[StoreError] | None = None,
) -> tuple[bytes, str]:
    """What a handler does: coalesce; on no entry go upstream, store, publish."""
    if barrier is not None:
        barrier.arrive()
    async with coalesce(
        flight,
        backend,
        KEY,
        lock_seconds=10,
        wait_seconds=wait_seconds,
        on_error=None if errors is None else errors.append,
    ) as slot:
        if slot.entry is not None:
            return slot.entry, slot.outcome
        value = await upstream()
        with contextlib.suppress(StoreError):
            await backend.put(KEY, value, 60)
        slot.publish(value)
        return value, slot.outcome


@pytest.mark.parametrize("shared_backend", [True, False], ids=["one-backend", "two-backends"])
async def test_two_replicas_go_upstream_once(
    redis_pair: tuple[Redis, Redis, str], shared_backend: bool
) -> None:
    redis_a, redis_b, prefix = redis_pair
    backend_a = RedisCacheBackend(redis_a, prefix)
    backend_b = backend_a if shared_backend else RedisCacheBackend(redis_b, prefix)
    replica_a, replica_b = SingleFlight(), SingleFlight()
    barrier = Barrier(N)
    upstream = Upstream(gate=barrier)
    results = await asyncio.gather(
        *(
            replica_request(replica_a if i % 2 else replica_b, backend_a if i % 2 else backend_b,
                            upstream, barrier)
            for i in range(N)
        )
    )  # fmt: skip
    assert upstream.calls == 1
    assert {value for value, _ in results} == {b"entry-1"}
    outcomes = [outcome for _, outcome in results]
    assert outcomes.count("leader") == 1
    assert set(outcomes) <= {"leader", "follower", "remote"}
    # the lock was released
    assert await redis_a.exists(backend_a.lock_key(KEY)) == 0
    await backend_a.purge(None)


class Observed:
    """A CacheBackend wrapper that signals when the lock is refused (test double)."""

    def __init__(self, inner: CacheBackend) -> None:
        self.inner = inner
        self.refused = asyncio.Event()

    async def get(self, key: str) -> bytes | None:
        return await self.inner.get(key)

    async def put(self, key: str, value: bytes, ttl_seconds: int) -> None:
        await self.inner.put(key, value, ttl_seconds)

    async def acquire_lock(self, key: str, ttl_seconds: float) -> bool:
        acquired = await self.inner.acquire_lock(key, ttl_seconds)
        if not acquired:
            self.refused.set()
        return acquired

    async def release_lock(self, key: str) -> None:
        await self.inner.release_lock(key)

    async def get_or_lock(self, key: str, ttl_seconds: float) -> tuple[bytes | None, bool]:
        entry, locked = await self.inner.get_or_lock(key, ttl_seconds)
        if entry is None and not locked:
            self.refused.set()
        return entry, locked

    async def put_and_unlock(self, key: str, value: bytes, ttl_seconds: int) -> None:
        await self.inner.put_and_unlock(key, value, ttl_seconds)

    async def purge(self, scope: str | None) -> int:
        return await self.inner.purge(scope)

    async def close(self) -> None:
        await self.inner.close()


async def test_replica_polls_for_the_remote_leaders_entry(
    redis_pair: tuple[Redis, Redis, str],
) -> None:
    redis_a, redis_b, prefix = redis_pair
    remote = RedisCacheBackend(redis_a, prefix)  # another replica, already leading
    local = Observed(RedisCacheBackend(redis_b, prefix))
    assert await remote.acquire_lock(KEY, 10)
    upstream = Upstream()
    flight = SingleFlight()
    barrier = Barrier(3)
    tasks = [
        asyncio.create_task(replica_request(flight, local, upstream, barrier)) for _ in range(3)
    ]
    await local.refused.wait()  # the local leader is polling now
    await remote.put(KEY, b"from-remote", 60)
    await remote.release_lock(KEY)
    results = await asyncio.gather(*tasks)
    assert upstream.calls == 0
    assert sorted(results) == [
        (b"from-remote", "follower"),
        (b"from-remote", "follower"),
        (b"from-remote", "remote"),
    ]
    await remote.purge(None)


async def test_remote_leader_that_never_delivers(redis_pair: tuple[Redis, Redis, str]) -> None:
    redis_a, redis_b, prefix = redis_pair
    remote = RedisCacheBackend(redis_a, prefix)
    local = RedisCacheBackend(redis_b, prefix)
    assert await remote.acquire_lock(KEY, 10)
    upstream = Upstream()
    started = time.monotonic()
    value, outcome = await replica_request(SingleFlight(), local, upstream, wait_seconds=0.2)
    assert time.monotonic() - started >= 0.2
    assert (value, outcome, upstream.calls) == (b"entry-1", "remote_timeout", 1)
    await remote.release_lock(KEY)
    await remote.purge(None)


async def test_remote_leader_that_fails_hands_over_the_lock(
    redis_pair: tuple[Redis, Redis, str],
) -> None:
    redis_a, redis_b, prefix = redis_pair
    remote = RedisCacheBackend(redis_a, prefix)
    local = Observed(RedisCacheBackend(redis_b, prefix))
    assert await remote.acquire_lock(KEY, 10)
    upstream = Upstream()
    task = asyncio.create_task(replica_request(SingleFlight(), local, upstream, wait_seconds=10))
    await local.refused.wait()
    await remote.release_lock(KEY)  # failed: released without storing anything
    value, outcome = await task  # takes the lock on its next poll, long before 10 s
    assert (value, outcome, upstream.calls) == (b"entry-1", "leader", 1)
    assert await remote.get(KEY) == b"entry-1"
    await remote.purge(None)


async def test_entry_stored_just_before_the_lock_is_found() -> None:
    """The gap between a handler's own lookup and the lock: the re-check closes it."""
    backend = MemoryCacheBackend()
    await backend.put(KEY, b"just-stored", 60)
    upstream = Upstream()
    value, outcome = await replica_request(SingleFlight(), backend, upstream)
    assert (value, outcome, upstream.calls) == (b"just-stored", "remote", 0)
    assert await backend.acquire_lock(KEY, 1)  # and the lock was released


async def test_lock_released_when_the_block_raises(redis_pair: tuple[Redis, Redis, str]) -> None:
    redis_a, _, prefix = redis_pair
    backend = RedisCacheBackend(redis_a, prefix)
    with pytest.raises(RuntimeError):
        async with coalesce(SingleFlight(), backend, KEY, lock_seconds=10, wait_seconds=1) as s:
            assert isinstance(s, Slot) and s.outcome == "leader"
            assert await redis_a.exists(backend.lock_key(KEY)) == 1
            raise RuntimeError("boom")
    assert await redis_a.exists(backend.lock_key(KEY)) == 0


async def test_backend_down_means_uncoordinated_upstream() -> None:
    redis = redis_client(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    backend = RedisCacheBackend(redis, "down", timeout_seconds=0.5)
    errors: list[StoreError] = []
    upstream = Upstream()
    try:
        value, outcome = await replica_request(SingleFlight(), backend, upstream, errors=errors)
    finally:
        await redis.aclose()
    assert (value, outcome, upstream.calls) == (b"entry-1", "backend_error", 1)
    assert len(errors) == 1 and isinstance(errors[0], StoreError)
