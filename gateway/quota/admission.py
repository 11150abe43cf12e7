"""Waiting for budget that reservations hold: one FIFO queue per team in each replica.

A request that would fit in what settled usage leaves, but not beside the reservations of
requests in flight, is *congested*: it waits here instead of being refused or truncated. One
pump per team retries the head of the queue whenever that team's budget is freed (a
settlement on this replica, or on any replica via the store's pub/sub), and at least every
``poll_seconds`` (pub/sub lost, a reservation that expired instead of settling). The head
blocks those behind it, so requests are admitted in arrival order. A waiter whose deadline
has passed gets its last try (clamped by what the reservations leave); a waiter that went
away is skipped, and a reservation granted to it just as it left is handed back.

Nothing here runs while nobody waits: an uncontended request never sees this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.quota.store.base import ReserveOutcome

#: ``attempt(last_try)``: one reservation attempt in the store.
Attempt = Callable[[bool], Awaitable[ReserveOutcome]]
#: Called with a granted outcome nobody is waiting for any more: release it.
Abandon = Callable[[ReserveOutcome], Awaitable[None]]


@dataclass(slots=True)
class _Waiter:
    attempt: Attempt
    abandon: Abandon
    deadline: float
    future: asyncio.Future[ReserveOutcome]


@dataclass(slots=True)
class _TeamQueue:
    waiters: deque[_Waiter] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None


class QueueFull(Exception):
    """The team already has ``max_queued`` waiters on this replica."""


class LeftQueue(Exception):
    """The waiter's client went away before its turn came."""


class AdmissionQueue:
    def __init__(
        self,
        *,
        timeout_seconds: float,
        max_queued: int,
        poll_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self.max_queued = max_queued
        self.poll_seconds = poll_seconds
        self._clock = clock
        self._teams: dict[str, _TeamQueue] = {}

    def has_waiters(self, team: str) -> bool:
        queue = self._teams.get(team)
        return queue is not None and bool(queue.waiters)

    def queued(self, team: str) -> int:
        queue = self._teams.get(team)
        return 0 if queue is None else len(queue.waiters)

    def notify(self, team: str) -> None:
        """The team's budget was freed somewhere: let its head try again."""
        queue = self._teams.get(team)
        if queue is not None:
            queue.wake.set()

    async def wait(
        self,
        team: str,
        attempt: Attempt,
        abandon: Abandon,
        gone: asyncio.Future[None] | None = None,
    ) -> ReserveOutcome:
        """Queue behind the team's other waiters; returns the outcome of the attempt that
        ended the wait (granted, exhausted, or the last try's). Raises ``QueueFull``, or
        ``LeftQueue`` when ``gone`` (the client's connection lost) resolves first."""
        queue = self._teams.get(team)
        if queue is None:
            queue = self._teams[team] = _TeamQueue()
        if len(queue.waiters) >= self.max_queued:
            raise QueueFull(team)
        waiter = _Waiter(
            attempt,
            abandon,
            self._clock() + self.timeout_seconds,
            asyncio.get_running_loop().create_future(),
        )
        queue.waiters.append(waiter)
        queue.wake.set()
        if queue.pump is None or queue.pump.done():
            queue.pump = asyncio.get_running_loop().create_task(self._pump(team, queue))
        # Cancelled, or the client went away: the pump skips a done future (and hands back a
        # reservation granted to it just then).
        if gone is None:
            return await waiter.future
        watched: set[asyncio.Future[Any]] = {waiter.future, gone}
        try:
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            waiter.future.cancel()
            raise
        if waiter.future.done():
            return waiter.future.result()
        waiter.future.cancel()
        raise LeftQueue(team)

    async def _pump(self, team: str, queue: _TeamQueue) -> None:
        try:
            while queue.waiters:
                queue.wake.clear()
                await self._admit(queue)
                if not queue.waiters:
                    break
                head = queue.waiters[0].deadline - self._clock()
                timeout = max(0.0, min(self.poll_seconds, head))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(queue.wake.wait(), timeout)
        finally:
            if self._teams.get(team) is queue and not queue.waiters:
                del self._teams[team]

    async def _admit(self, queue: _TeamQueue) -> None:
        """Try the waiters in order until one stays congested."""
        while queue.waiters:
            waiter = queue.waiters[0]
            if waiter.future.done():
                queue.waiters.popleft()
                continue
            last_try = self._clock() >= waiter.deadline
            try:
                outcome = await waiter.attempt(last_try)
            except Exception as exc:  # the store failed: that waiter's request fails with it
                queue.waiters.popleft()
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
                continue
            if outcome.state == "congested" and not last_try:
                return
            queue.waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_result(outcome)
            elif outcome.granted:
                await waiter.abandon(outcome)
