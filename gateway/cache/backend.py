"""Where cache entries and single-flight locks live: Redis, or this process's memory.

Both implement ``CacheBackend``. Keys are the strings ``policy.cache_key`` returns,
``"<scope>:<sha256 hex>"``; values are opaque bytes (``entry.encode``).

Redis layout (``RedisCacheBackend``)::

    <prefix>:cache:v1:<scope>:{<sha256>}       the entry, SET with EX = the TTL
    <prefix>:cachelock:v1:<scope>:{<sha256>}   a single-flight lock, SET NX PX, value = owner token

The digest is a Redis Cluster hash tag: an entry and its lock share a slot, so one script may
touch both, while entries of one scope still spread over the whole cluster. The scope is in
the key in clear so that ``purge`` can find one scope's entries with SCAN MATCH (on every
primary of a cluster).

Every Redis failure (connection refused or lost, socket timeout, the per-call bound
``timeout_seconds``, an error reply) surfaces as a ``StoreError`` (``gateway.storage.errors``)
and nothing else, so the caller can count it and carry on as a miss (design.md: Redis trouble
never fails a request).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from importlib import resources
from typing import Protocol

from gateway.storage.batching import ScriptBatcher
from gateway.storage.client import RedisClient, decodes_responses, scan_keys
from gateway.storage.errors import StoreReplyError, guarded
from gateway.storage.pubsub import listen

__all__ = [
    "CacheBackend",
    "MemoryCacheBackend",
    "RedisCacheBackend",
]

_SCAN_COUNT = 500


class CacheBackend(Protocol):
    async def get(self, key: str) -> bytes | None:
        """The stored value, or ``None`` when absent or expired."""
        ...

    async def put(self, key: str, value: bytes, ttl_seconds: int) -> None:
        """Store ``value`` for ``ttl_seconds`` (>= 1), replacing any previous value."""
        ...

    async def acquire_lock(self, key: str, ttl_seconds: float) -> bool:
        """Take the single-flight lock of ``key`` for at most ``ttl_seconds``; False if taken."""
        ...

    async def get_or_lock(self, key: str, ttl_seconds: float) -> tuple[bytes | None, bool]:
        """The entry, or (on a miss) whether the lock was taken: one round trip."""
        ...

    async def put_and_unlock(self, key: str, value: bytes, ttl_seconds: int) -> None:
        """Store the entry and release this backend's lock on it: one round trip."""
        ...

    async def release_lock(self, key: str) -> None:
        """Release the lock if this backend still owns it; someone else's lock stays."""
        ...

    async def purge(self, scope: str | None) -> int:
        """Delete every entry of ``scope`` (e.g. ``"team:ml"``), or all when ``None``.

        Returns how many were deleted. Locks are left alone (they expire on their own).
        """
        ...

    async def close(self) -> None: ...


def _tagged(key: str) -> str:
    """``<scope>:<sha256>`` with the digest as a Redis Cluster hash tag."""
    head, _, digest = key.rpartition(":")
    return f"{head}:{{{digest}}}"


def _lua(name: str) -> str:
    return resources.files(__package__).joinpath("lua", name).read_text(encoding="utf-8")


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisCacheBackend:
    """Entries and locks in Redis, shared by every replica.

    ``redis`` must be created with ``decode_responses=False`` (values are bytes). Give it short
    ``socket_timeout``/``socket_connect_timeout``; ``timeout_seconds`` additionally bounds each
    call, whatever the client's retry policy does. The client belongs to the caller:
    ``close()`` closes it only when ``close_client`` is true.

    Lock ownership is per backend instance (one per replica): each acquisition writes a fresh
    random token, and ``release_lock`` deletes the lock only if it still holds that token, so a
    replica whose lock expired cannot release the lock another replica took after it.
    """

    def __init__(
        self,
        redis: RedisClient,
        key_prefix: str,
        *,
        timeout_seconds: float | None = None,
        close_client: bool = False,
    ) -> None:
        if decodes_responses(redis):
            raise ValueError("RedisCacheBackend needs a client with decode_responses=False")
        self._redis = redis
        self._entry_prefix = f"{key_prefix}:cache:v1:"
        self._lock_prefix = f"{key_prefix}:cachelock:v1:"
        self._timeout = timeout_seconds
        self._close_client = close_client
        self._release_script = redis.register_script(_lua("release_lock.lua"))
        self._get_or_lock_script = redis.register_script(_lua("get_or_lock.lua"))
        self._put_and_unlock_script = redis.register_script(_lua("put_and_unlock.lua"))
        # Lookups and stores of concurrent requests share round trips (see ScriptBatcher).
        self._batcher = ScriptBatcher(redis)
        #: key -> token of the locks this instance holds.
        self._tokens: dict[str, str] = {}

    def entry_key(self, key: str) -> str:
        """The Redis key of an entry (for tests and operators). The digest is a hash tag, so
        an entry and its lock share a Redis Cluster slot and one script may touch both."""
        return self._entry_prefix + _tagged(key)

    def lock_key(self, key: str) -> str:
        return self._lock_prefix + _tagged(key)

    def _guard(self) -> AbstractAsyncContextManager[None]:
        return guarded("redis cache", self._timeout)

    async def get(self, key: str) -> bytes | None:
        async with self._guard():
            value = await self._redis.get(self.entry_key(key))
        if value is None or isinstance(value, bytes):
            return value
        raise StoreReplyError(f"redis cache: unexpected value type {type(value).__name__}")

    async def put(self, key: str, value: bytes, ttl_seconds: int) -> None:
        async with self._guard():
            await self._redis.set(self.entry_key(key), value, ex=ttl_seconds)

    async def acquire_lock(self, key: str, ttl_seconds: float) -> bool:
        token = secrets.token_hex(16)
        px = max(1, int(ttl_seconds * 1000))
        async with self._guard():
            acquired = await self._redis.set(self.lock_key(key), token, nx=True, px=px)
        if acquired:
            self._tokens[key] = token
            return True
        return False

    async def release_lock(self, key: str) -> None:
        token = self._tokens.pop(key, None)
        if token is None:
            return
        async with self._guard():
            await self._release_script(keys=[self.lock_key(key)], args=[token])

    async def get_or_lock(self, key: str, ttl_seconds: float) -> tuple[bytes | None, bool]:
        token = secrets.token_hex(16)
        px = max(1, int(ttl_seconds * 1000))
        async with self._guard():
            entry, locked = await self._batcher.call(
                self._get_or_lock_script, [self.entry_key(key), self.lock_key(key)], [token, px]
            )
        if locked:
            self._tokens[key] = token
        return (bytes(entry) if entry is not None else None), bool(locked)

    async def put_and_unlock(self, key: str, value: bytes, ttl_seconds: int) -> None:
        token = self._tokens.pop(key, "")
        async with self._guard():
            await self._batcher.call(
                self._put_and_unlock_script,
                [self.entry_key(key), self.lock_key(key)],
                [value, ttl_seconds, token],
            )

    async def purge(self, scope: str | None) -> int:
        prefix = _glob_escape(self._entry_prefix)
        pattern = prefix + ("*" if scope is None else _glob_escape(scope) + ":*")
        deleted = 0
        async for keys in scan_keys(
            self._redis, pattern, _SCAN_COUNT, what="redis cache", bound_seconds=self._timeout
        ):
            async with self._guard():
                deleted += int(await self._redis.unlink(*keys))
        # Every gateway keeps recent entries in memory too; tell them (see listen_for_purges).
        async with self._guard():
            await self._redis.publish(self.purge_channel, scope or "*")
        return deleted

    @property
    def purge_channel(self) -> str:
        return self._entry_prefix + "purged"

    async def listen_for_purges(self, on_purge: Callable[[str | None], None]) -> None:
        """Call ``on_purge(scope)`` for every purge any process makes; runs until cancelled."""

        def purged(data: bytes) -> None:
            scope = data.decode()
            on_purge(None if scope == "*" else scope)

        await listen(self._redis, self.purge_channel, purged, what="redis cache purge listener")

    async def close(self) -> None:
        await self._batcher.aclose()
        if self._close_client:
            async with self._guard():
                await self._redis.aclose()


class MemoryCacheBackend:
    """Entries in this process: LRU bounded by total bytes, TTLs read from ``clock``.

    For one replica without Redis, and for tests (``clock`` can be a fake). Locks are plain
    expiring flags: within one process the ``SingleFlight`` in front already picks one leader.
    """

    def __init__(
        self, max_bytes: int = 64 * 1024 * 1024, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        #: key -> (value, expires at); oldest use first.
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._size = 0
        self._locks: dict[str, float] = {}

    @property
    def size_bytes(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _cost(key: str, value: bytes) -> int:
        return len(key) + len(value)

    def _drop(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._size -= self._cost(key, old[0])

    async def get(self, key: str) -> bytes | None:
        item = self._entries.get(key)
        if item is None:
            return None
        if item[1] <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return item[0]

    async def put(self, key: str, value: bytes, ttl_seconds: int) -> None:
        self._drop(key)
        cost = self._cost(key, value)
        if cost > self.max_bytes:
            return
        self._entries[key] = (bytes(value), self._clock() + ttl_seconds)
        self._size += cost
        while self._size > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    async def acquire_lock(self, key: str, ttl_seconds: float) -> bool:
        now = self._clock()
        expires = self._locks.get(key)
        if expires is not None and expires > now:
            return False
        if len(self._locks) >= 1024:  # forget expired locks nobody released
            self._locks = {k: t for k, t in self._locks.items() if t > now}
        self._locks[key] = now + ttl_seconds
        return True

    async def release_lock(self, key: str) -> None:
        self._locks.pop(key, None)

    async def get_or_lock(self, key: str, ttl_seconds: float) -> tuple[bytes | None, bool]:
        entry = await self.get(key)
        if entry is not None:
            return entry, False
        return None, await self.acquire_lock(key, ttl_seconds)

    async def put_and_unlock(self, key: str, value: bytes, ttl_seconds: int) -> None:
        await self.put(key, value, ttl_seconds)
        await self.release_lock(key)

    async def purge(self, scope: str | None) -> int:
        if scope is None:
            count = len(self._entries)
            self._entries.clear()
            self._size = 0
            return count
        prefix = scope + ":"
        doomed = [k for k in self._entries if k.startswith(prefix)]
        for key in doomed:
            self._drop(key)
        return len(doomed)

    async def close(self) -> None:
        self._entries.clear()
        self._size = 0
        self._locks.clear()
