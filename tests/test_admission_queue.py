"""The admission queue on its own: waiters of a team are admitted in arrival order."""

from __future__ import annotations

import asyncio

from gateway.quota.admission import AdmissionQueue, Attempt
from gateway.quota.store.base import ReserveOutcome

GRANTED = ReserveOutcome("granted", 10, None, (0,))
CONGESTED = ReserveOutcome("congested", 0, 0, (0,))


class Budget:
    """Units freed by settlements; each attempt of a waiter needing ``n`` takes ``n`` if free."""

    def __init__(self) -> None:
        self.free = 0
        self.granted: list[str] = []
        self.tried = asyncio.Event()

    def attempt_for(self, name: str, needs: int) -> Attempt:
        async def attempt(last_try: bool) -> ReserveOutcome:
            self.tried.set()
            if self.free < needs:
                return CONGESTED
            self.free -= needs
            self.granted.append(name)
            return GRANTED

        return attempt


async def _never_abandoned(outcome: ReserveOutcome) -> None:
    raise AssertionError("no waiter left")


async def test_three_waiters_are_granted_in_arrival_order() -> None:
    queue = AdmissionQueue(timeout_seconds=60, max_queued=10, poll_seconds=60)
    budget = Budget()
    # The first needs more than the others: while it cannot get in, nobody behind it may.
    waiters = [("first", 2), ("second", 1), ("third", 1)]
    tasks = [
        asyncio.ensure_future(queue.wait("ml", budget.attempt_for(name, needs), _never_abandoned))
        for name, needs in waiters
    ]
    await asyncio.wait_for(budget.tried.wait(), 5)
    assert queue.queued("ml") == 3 and budget.granted == []

    async def free(units: int) -> None:
        """A settlement frees ``units``; returns once the queue's pump has tried again."""
        budget.free += units
        budget.tried.clear()
        queue.notify("ml")
        await asyncio.wait_for(budget.tried.wait(), 5)

    await free(1)  # enough for the second, not for the first at the head
    assert budget.granted == [] and queue.queued("ml") == 3
    await free(1)
    await asyncio.wait_for(tasks[0], 5)
    assert budget.granted == ["first"]
    await free(2)
    await asyncio.wait_for(asyncio.gather(*tasks[1:]), 5)
    assert budget.granted == ["first", "second", "third"]
    assert all(task.result() is GRANTED for task in tasks)
    assert queue.queued("ml") == 0
