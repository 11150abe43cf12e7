"""Identical concurrent cacheable requests go upstream once (design.md: single-flight).

Two layers:

- ``SingleFlight``, in-process: the first request for a key leads (goes upstream); the others
  wait, at most ``wait_seconds``, for the entry it publishes. A follower that gets nothing (the
  leader's response was not cacheable, or it failed, or the wait ran out) goes upstream itself.
- ``coalesce``, across replicas: the in-process leader also takes the backend's lock for the
  key. If another replica holds it, it polls the backend for the entry with backoff until
  ``wait_seconds``, retrying the lock each time (the other leader may fail), then goes upstream
  anyway. After taking the lock it reads the backend once more, which closes the gap between
  the caller's own cache lookup and the lock (a leader may have stored and released in between).

Usage in a handler (the slot's ``entry`` is encoded ``CachedResponse`` bytes)::

    async with coalesce(flight, backend, key, lock_seconds=..., wait_seconds=...) as slot:
        if slot.entry is not None:
            ...  # replay it: another request produced it
        else:
            ...  # go upstream; if the response is cacheable:
            await backend.put(key, value, ttl)  # before leaving the block (lock still held)
            slot.publish(value)

Leaving the block without ``publish`` (not cacheable, an exception, a cancelled task) wakes the
followers with ``None``. Followers never cancel the shared future, so a follower whose client
disconnects leaves the others waiting undisturbed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

from gateway.cache.backend import CacheBackend
from gateway.storage.errors import StoreError

__all__ = ["Outcome", "SingleFlight", "Slot", "coalesce"]

#: How a slot came to be, for metrics and logs:
#:
#: - ``leader``: go upstream and publish; identical requests wait for you.
#: - ``follower``: ``entry`` is what the in-process leader published.
#: - ``leader_failed``: the leader published nothing; go upstream yourself.
#: - ``timeout``: the leader took longer than ``wait_seconds``; go upstream yourself.
#: - ``remote``: ``entry`` was produced by another replica (or by a request that finished
#:   just before this one took the lock).
#: - ``remote_timeout``: another replica holds the lock and produced nothing within
#:   ``wait_seconds``; go upstream (still leading this process's followers).
#: - ``backend_error``: the backend failed; go upstream (still leading this process).
Outcome = Literal[
    "leader", "follower", "leader_failed", "timeout", "remote", "remote_timeout", "backend_error"
]

_FIRST_POLL_SECONDS = 0.01
_MAX_POLL_SECONDS = 0.2


@dataclass(eq=False)
class Slot:
    #: Not ``None``: a finished entry to replay. ``None``: go upstream, then ``publish``.
    entry: bytes | None
    #: Other requests are waiting for this one's ``publish``.
    leader: bool
    outcome: Outcome
    #: This replica holds the backend lock; ``put_and_unlock`` stores and releases it at once.
    holds_lock: bool = False
    _future: asyncio.Future[bytes | None] | None = field(default=None, repr=False)

    def publish(self, value: bytes | None) -> None:
        """Hand the encoded entry (or ``None``: not cacheable) to the waiting requests.

        Idempotent, and a no-op for a slot that does not lead.
        """
        future = self._future
        if future is not None and not future.done():
            future.set_result(value)


class SingleFlight:
    """In-process single-flight keyed by cache key. One instance per process (or app)."""

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[bytes | None]] = {}

    def __len__(self) -> int:
        """Keys with a leader in flight."""
        return len(self._flights)

    @asynccontextmanager
    async def lead_or_wait(self, key: str, *, wait_seconds: float) -> AsyncIterator[Slot]:
        """Lead (``slot.leader``) or wait for the leader's entry, at most ``wait_seconds``.

        Registration is synchronous: once a task has entered, and until its leader leaves the
        block, every later task entering with the same key follows it.
        """
        future = self._flights.get(key)
        if future is not None:
            yield await _follow(future, wait_seconds)
            return
        future = asyncio.get_running_loop().create_future()
        self._flights[key] = future
        try:
            yield Slot(entry=None, leader=True, outcome="leader", _future=future)
        finally:
            if self._flights.get(key) is future:
                del self._flights[key]
            if not future.done():
                future.set_result(None)


async def _follow(future: asyncio.Future[bytes | None], wait_seconds: float) -> Slot:
    # asyncio.wait, unlike awaiting the future or wait_for, never cancels the future when this
    # follower is cancelled or times out: the other followers keep waiting.
    done, _ = await asyncio.wait((future,), timeout=max(0.0, wait_seconds))
    if not done:
        return Slot(entry=None, leader=False, outcome="timeout")
    entry = future.result()
    return Slot(
        entry=entry, leader=False, outcome="follower" if entry is not None else "leader_failed"
    )


@asynccontextmanager
async def coalesce(
    flight: SingleFlight,
    backend: CacheBackend,
    key: str,
    *,
    lock_seconds: float,
    wait_seconds: float,
    on_error: Callable[[StoreError], None] | None = None,
) -> AsyncIterator[Slot]:
    """``SingleFlight`` plus the backend lock, so identical requests on all replicas coalesce.

    Never raises ``StoreError``: backend failures are passed to ``on_error`` (count
    them) and the request goes upstream uncoordinated. The lock is released on leaving the
    block, so store the entry inside it.
    """

    def report(exc: StoreError) -> None:
        if on_error is not None:
            on_error(exc)

    async with flight.lead_or_wait(key, wait_seconds=wait_seconds) as slot:
        if not slot.leader:
            yield slot
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        delay = _FIRST_POLL_SECONDS
        try:
            entry: bytes | None = None
            outcome: Outcome
            try:
                while True:
                    entry, holds_lock = await backend.get_or_lock(key, lock_seconds)
                    slot.holds_lock = holds_lock
                    if entry is not None:
                        outcome = "remote"
                        break
                    if holds_lock:
                        outcome = "leader"
                        break
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        outcome = "remote_timeout"
                        break
                    await asyncio.sleep(min(delay, remaining))
                    delay = min(delay * 2, _MAX_POLL_SECONDS)
            except StoreError as exc:
                report(exc)
                entry, outcome = None, "backend_error"
            slot.outcome = outcome
            if entry is not None:
                slot.publish(entry)  # in-process followers get it too
                slot.entry, slot.leader = entry, False
            yield slot
        finally:
            if slot.holds_lock:  # still ours: the leader did not store (put_and_unlock)
                slot.holds_lock = False
                try:
                    await backend.release_lock(key)
                except StoreError as exc:
                    report(exc)  # the lock expires by itself after lock_seconds
