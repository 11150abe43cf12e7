"""The embedded quota store: the Redis store's semantics for one process, in memory.

Used when no Redis is configured, and as the ``local`` fallback while Redis is unreachable.
It mirrors the Lua scripts step for step (purge, exhausted or congested or reserve all;
settle replaces the reservation), and the same behavioural tests run against both. Every method runs
without awaiting, so each call is atomic on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.quota.store.base import ReserveOutcome, WindowCharge, WindowUsage


@dataclass(slots=True)
class _Counter:
    used: int = 0
    reserved: int = 0
    expires_at: float = 0.0


@dataclass(slots=True)
class _Reservation:
    hold_until: float
    amounts: dict[str, int] = field(default_factory=dict)


_SWEEP_INTERVAL_SECONDS = 60.0


class MemoryQuotaStore:
    def __init__(self) -> None:
        self._counters: dict[tuple[str, str], _Counter] = {}
        self._reservations: dict[str, dict[str, _Reservation]] = {}
        self._next_sweep = 0.0
        self._jobs: dict[str, dict[str, bytes]] = {}

    def _counter(self, team: str, key: str, now: float) -> _Counter | None:
        counter = self._counters.get((team, key))
        if counter is not None and counter.expires_at <= now:
            del self._counters[(team, key)]
            return None
        return counter

    def _purge(self, team: str, now: float) -> None:
        if now >= self._next_sweep:
            # Past windows are never looked up again; drop them so memory stays bounded.
            self._next_sweep = now + _SWEEP_INTERVAL_SECONDS
            for key in [k for k, c in self._counters.items() if c.expires_at <= now]:
                del self._counters[key]
        open_ = self._reservations.get(team)
        if not open_:
            return
        for rid in [rid for rid, resv in open_.items() if resv.hold_until <= now]:
            resv = open_.pop(rid)
            for counter_key, amount in resv.amounts.items():
                counter = self._counter(team, counter_key, now)
                if counter is not None:
                    counter.reserved -= amount

    async def reserve(
        self,
        team: str,
        request_id: str,
        charges: Sequence[WindowCharge],
        *,
        requested_output: int,
        min_output: int,
        now: float,
        hold_until: float,
        last_try: bool = False,
        waiting_seconds: float = 60.0,
    ) -> ReserveOutcome:
        self._purge(team, now)
        minimum = min(min_output, requested_output)
        output = requested_output
        binding: int | None = None
        unspent: list[int] = []
        remaining: list[int] = []
        for charge in charges:
            counter = self._counter(team, charge.key, now)
            unspent.append(charge.limit - (counter.used if counter else 0))
            remaining.append(unspent[-1] - (counter.reserved if counter else 0))
        for i, charge in enumerate(charges):
            if unspent[i] < charge.fixed + charge.per_output * minimum:
                return ReserveOutcome("exhausted", 0, i, tuple(remaining))
            if charge.per_output > 0:
                cap = (unspent[i] - charge.fixed) // charge.per_output
                if cap < output:
                    output, binding = cap, i
        for i, charge in enumerate(charges):
            if remaining[i] < charge.fixed + charge.per_output * output:
                if not last_try or remaining[i] < charge.fixed + charge.per_output * minimum:
                    return ReserveOutcome("congested", 0, i, tuple(remaining))
                output, binding = (remaining[i] - charge.fixed) // charge.per_output, i
        reservation = _Reservation(hold_until)
        after: list[int] = []
        for charge, left in zip(charges, remaining, strict=True):
            amount = charge.fixed + charge.per_output * output
            counter = self._counter(team, charge.key, now)
            if counter is None:
                counter = self._counters[(team, charge.key)] = _Counter()
            # An expiry only moves later (as in counters.lua).
            counter.expires_at = max(counter.expires_at, charge.expires_at)
            if amount > 0:
                counter.reserved += amount
                reservation.amounts[charge.key] = amount
            after.append(left - amount)
        if reservation.amounts:
            self._reservations.setdefault(team, {})[request_id] = reservation
        return ReserveOutcome("granted", output, binding, tuple(after))

    async def settle(
        self,
        team: str,
        request_id: str,
        charges: Sequence[WindowCharge],
        reserved: Sequence[int],
        actual: Sequence[int],
        *,
        now: float,
    ) -> None:
        self._settle_now(team, request_id, charges, reserved, actual, now)

    def _settle_now(
        self,
        team: str,
        request_id: str,
        charges: Sequence[WindowCharge],
        reserved: Sequence[int],
        actual: Sequence[int],
        now: float,
    ) -> None:
        is_open = self._reservations.get(team, {}).pop(request_id, None) is not None
        for charge, held, used in zip(charges, reserved, actual, strict=True):
            counter = self._counter(team, charge.key, now)
            if is_open and held > 0 and counter is not None:
                counter.reserved -= held
            if used > 0:
                if counter is None:
                    counter = self._counters[(team, charge.key)] = _Counter()
                counter.used += used
                counter.expires_at = max(counter.expires_at, charge.expires_at)

    async def cancel(self, team: str, request_id: str) -> bool:
        resv = self._reservations.get(team, {}).pop(request_id, None)
        if resv is None:
            return False
        for counter_key, amount in resv.amounts.items():
            counter = self._counters.get((team, counter_key))
            if counter is not None:
                counter.reserved -= amount
        return True

    async def peek(
        self, team: str, charges: Sequence[WindowCharge], *, now: float
    ) -> list[WindowUsage]:
        self._purge(team, now)
        out = []
        for charge in charges:
            counter = self._counter(team, charge.key, now)
            out.append(
                WindowUsage(counter.used, counter.reserved) if counter else WindowUsage(0, 0)
            )
        return out

    async def open_job(self, team: str, job_id: str, record: bytes) -> None:
        self._jobs.setdefault(team, {})[job_id] = record

    async def open_jobs(self, team: str) -> dict[str, bytes]:
        return dict(self._jobs.get(team, {}))

    async def job(self, team: str, job_id: str) -> bytes | None:
        return self._jobs.get(team, {}).get(job_id)

    async def settle_job(
        self,
        team: str,
        job_id: str,
        request_id: str,
        charges: Sequence[WindowCharge],
        reserved: Sequence[int],
        actual: Sequence[int],
        *,
        now: float,
    ) -> bool:
        if self._jobs.get(team, {}).pop(job_id, None) is None:
            return False
        # No await in between: the claim and the charge are one step on the event loop.
        self._settle_now(team, request_id, charges, reserved, actual, now)
        return True

    async def job_teams(self) -> list[str]:
        return list(self._jobs)

    async def retire_team(self, team: str) -> None:
        if not self._jobs.get(team, True):
            del self._jobs[team]

    async def listen_for_frees(self, on_freed: Callable[[str], None]) -> None:
        return None  # one process: the quota service notifies its own waiters on settling

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def open_reservations(self, team: str) -> int:
        return len(self._reservations.get(team, {}))
