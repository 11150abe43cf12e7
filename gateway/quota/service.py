"""The quota service: reserve before forwarding, settle after, with one policy for store trouble.

``store.on_error`` is read here and nowhere else:

- ``local``: enforce with this replica's in-memory store until Redis answers again (each
  replica then holds the caps on its own; counts made meanwhile are not merged back);
- ``open``: admit unmetered while Redis is down;
- ``closed``: answer 503.

A settlement that fails is retried in the background for as long as the reservation is held;
if it never lands, the reservation expires and its amounts stop counting (logged as lost).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.apis import Usage
from gateway.config import AdmissionConfig, QuotaRule
from gateway.errors import QuotaExceededError, StoreUnavailableError
from gateway.metrics import Metrics
from gateway.quota.admission import AdmissionQueue, QueueFull
from gateway.quota.early_stop import EarlyStop, early_stop_amounts
from gateway.quota.policy import (
    QuotaPlan,
    actual_amounts,
    quota_exceeded,
    rate_limit_headers,
    reserved_amounts,
)
from gateway.quota.store import keys
from gateway.quota.store.base import QuotaStore, ReserveOutcome, WindowCharge, WindowUsage
from gateway.quota.store.memory import MemoryQuotaStore
from gateway.quota.windows import window_at
from gateway.storage.breaker import StoreBreaker
from gateway.storage.errors import StoreError, StoreSkippedError, StoreTimeoutError

log = logging.getLogger("gateway.quota")

Clock = Callable[[], float]
SETTLE_RETRY_DELAYS_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(slots=True)
class Reservation:
    team: str
    request_id: str
    plan: QuotaPlan
    output: int  # granted per-choice output budget
    store: QuotaStore | None  # None: admitted unmetered (store down, on_error=open)
    reserved: list[int]
    headers: dict[str, str] = field(default_factory=dict)
    clamped_by: str | None = None  # the metric whose window lowered the output budget
    settled: bool = False


@dataclass(frozen=True, slots=True)
class RuleUsage:
    rule: QuotaRule
    used: int
    reserved: int
    window_start: float
    window_end: float

    @property
    def remaining(self) -> int:
        return max(0, self.rule.counter_limit - self.used - self.reserved)


class QuotaService:
    def __init__(
        self,
        store: QuotaStore,
        *,
        on_error: Literal["local", "open", "closed"],
        hold_seconds: float,
        clock: Clock = time.time,
        local: MemoryQuotaStore | None = None,
        metrics: Metrics | None = None,
        breaker: StoreBreaker | None = None,
    ) -> None:
        self.store = store
        self.local = local or (store if isinstance(store, MemoryQuotaStore) else MemoryQuotaStore())
        self.on_error = on_error
        self.hold_seconds = hold_seconds
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics()
        self.breaker = breaker if breaker is not None else StoreBreaker()
        self.queue = AdmissionQueue(timeout_seconds=30.0, max_queued=1000, poll_seconds=1.0)
        self._background: set[asyncio.Task[None]] = set()

    def configure_admission(self, admission: AdmissionConfig) -> None:
        self.queue.timeout_seconds = admission.queue_timeout_seconds
        self.queue.max_queued = admission.max_queued_per_team
        self.queue.poll_seconds = admission.poll_seconds

    async def listen_for_frees(self) -> None:
        """Wake this replica's waiters when another replica frees their team's budget."""
        await self.store.listen_for_frees(self.queue.notify)

    async def reserve(
        self,
        team: str,
        request_id: str,
        plan: QuotaPlan,
        *,
        gone: Callable[[], asyncio.Future[None] | None] | None = None,
        hold_seconds: float | None = None,
    ) -> Reservation:
        """Reserve for every window of the plan, or raise QuotaExceededError (429). A congested
        request waits; the future ``gone()`` gives (its client's connection lost) ends the wait
        (``LeftQueue``); it is asked for only when the request has to wait. ``hold_seconds``
        overrides the usual hold (jobs that settle later: ``quota.jobs``)."""
        now = self.clock()
        hold = self.hold_seconds if hold_seconds is None else hold_seconds
        store: QuotaStore | None = self.store
        try:
            self.breaker.check()
            if self.queue.has_waiters(team):
                # Others of the team wait already: queue behind them (first come, first in).
                outcome = await self._queued(self.store, team, request_id, plan, gone, hold)
            else:
                outcome = await self._reserve_in(self.store, team, request_id, plan, now, hold)
                if outcome.state == "congested":
                    outcome = await self._queued(self.store, team, request_id, plan, gone, hold)
            self.breaker.succeeded()
        except StoreError as exc:
            if not isinstance(exc, StoreSkippedError):
                self.breaker.failed(exc)
                if isinstance(exc, StoreTimeoutError):
                    # No answer is not a refusal: Redis may still run it (on waking up, say),
                    # so undo it in the background once Redis answers again.
                    self._spawn(self._cancel_lost(team, request_id))
            self.metrics.store_errors.labels(operation="quota_reserve").inc()
            log.warning("quota store unavailable", extra={"error": str(exc), "mode": self.on_error})
            if self.on_error == "closed":
                self.metrics.store_fallbacks.labels(mode="closed").inc()
                raise StoreUnavailableError(
                    "Quota store unavailable; requests are refused until it is back."
                ) from None
            self.metrics.store_fallbacks.labels(mode=self.on_error).inc()
            if self.on_error == "open":
                return Reservation(team, request_id, plan, plan.requested_output, None, [])
            store = self.local
            outcome = await self._reserve_in(self.local, team, request_id, plan, now, hold)
            if outcome.state == "congested":
                outcome = await self._queued(self.local, team, request_id, plan, gone, hold)
        if not outcome.granted:
            now = self.clock()
            error = quota_exceeded(team, plan, outcome, now)
            self._count_rejection(team, error)
            raise error
        return Reservation(
            team=team,
            request_id=request_id,
            plan=plan,
            output=outcome.output,
            store=store,
            reserved=reserved_amounts(plan, outcome.output),
            headers=rate_limit_headers(plan, outcome.remaining, now),
            clamped_by=(
                plan.metric_of(outcome.blocked)
                if outcome.blocked is not None and outcome.output < plan.requested_output
                else None
            ),
        )

    async def _queued(
        self,
        store: QuotaStore,
        team: str,
        request_id: str,
        plan: QuotaPlan,
        gone: Callable[[], asyncio.Future[None] | None] | None,
        hold: float,
    ) -> ReserveOutcome:
        """Wait in the team's queue until the reservation fits (or its last try)."""

        async def attempt(last_try: bool) -> ReserveOutcome:
            return await self._reserve_in(
                store, team, request_id, plan, self.clock(), hold, last_try=last_try
            )

        async def abandon(_: ReserveOutcome) -> None:
            await store.cancel(team, request_id)

        if self.queue.timeout_seconds <= 0:
            return await attempt(True)
        started = time.perf_counter()
        gauge = self.metrics.quota_queued.labels(team=team)
        gauge.inc()
        try:
            return await self.queue.wait(
                team, attempt, abandon, gone() if gone is not None else None
            )
        except QueueFull:
            outcome = await attempt(True)  # a full queue: what is left now, or 429
            return outcome
        finally:
            gauge.dec()
            self.metrics.quota_queue_wait.labels(team=team).observe(time.perf_counter() - started)

    def _count_rejection(self, team: str, error: QuotaExceededError) -> None:
        self.metrics.quota_rejections.labels(
            team=team, metric=error.metric or "", reason=error.reason or "exhausted"
        ).inc()

    async def _reserve_in(
        self,
        store: QuotaStore,
        team: str,
        request_id: str,
        plan: QuotaPlan,
        now: float,
        hold_seconds: float,
        *,
        last_try: bool = False,
    ) -> ReserveOutcome:
        return await store.reserve(
            team,
            request_id,
            plan.charges,
            requested_output=plan.requested_output,
            min_output=plan.min_output,
            now=now,
            hold_until=now + hold_seconds,
            last_try=last_try,
            # Outlives the longest wait by a poll or two, so settlements keep announcing.
            waiting_seconds=self.queue.timeout_seconds + 2 * self.queue.poll_seconds,
        )

    async def settle(
        self,
        reservation: Reservation,
        usage: Usage | None,
        *,
        release: bool,
        early_stop: EarlyStop | None = None,
    ) -> None:
        """Charge real usage; with no usage, keep the reservation as charged (never
        under-count), unless ``release`` says the upstream produced nothing or ``early_stop``
        bounds what a request its client left could have produced (``quota.early_stop``)."""
        if reservation.settled:
            return
        reservation.settled = True
        if reservation.store is None:
            return
        if release:
            actual = [0] * len(reservation.reserved)
        elif usage is None and early_stop is not None:
            actual = early_stop_amounts(
                reservation.plan, reservation.reserved, reservation.output, early_stop
            )
        elif usage is None:
            actual = list(reservation.reserved)
        else:
            actual = actual_amounts(reservation.plan, usage)
        try:
            await self._settle(reservation, actual)
            self.queue.notify(reservation.team)
        except StoreError as exc:
            self.metrics.store_errors.labels(operation="quota_settle").inc()
            if reservation.store is self.store:
                self.breaker.failed(exc)
            self._spawn(self._retry(reservation, actual))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _cancel_lost(self, team: str, request_id: str) -> None:
        """Release a reservation Redis may have made although its reply never came back."""
        deadline = self.clock() + self.hold_seconds
        not_found = 0
        for delay in (*SETTLE_RETRY_DELAYS_SECONDS, *[30.0] * 1000):
            await asyncio.sleep(delay)
            try:
                if await self.store.cancel(team, request_id):
                    return
            except StoreError:
                if self.clock() > deadline:
                    return  # it has expired by itself by now
                continue
            # Redis answered and holds no such reservation. Ask once more: a reserve still
            # queued on another connection of a Redis just woken up may run after this cancel.
            not_found += 1
            if not_found >= 2:
                return

    async def _settle(self, reservation: Reservation, actual: list[int]) -> None:
        assert reservation.store is not None
        await reservation.store.settle(
            reservation.team,
            reservation.request_id,
            reservation.plan.charges,
            reservation.reserved,
            actual,
            now=self.clock(),
        )

    async def _retry(self, reservation: Reservation, actual: list[int]) -> None:
        for delay in SETTLE_RETRY_DELAYS_SECONDS:
            await asyncio.sleep(delay)
            try:
                await self._settle(reservation, actual)
                return
            except StoreError:
                continue
        self.metrics.store_errors.labels(operation="quota_settle_lost").inc()
        log.error(
            "quota settlement lost",
            extra={"team": reservation.team, "request_id": reservation.request_id},
        )

    async def usage(
        self, team: str, rules: list[QuotaRule], *, user: str | None = None
    ) -> list[RuleUsage]:
        """What the rules' current windows hold: the team's, or ``user``'s within the team."""
        now = self.clock()
        windows = [window_at(rule.window, now) for rule in rules]

        def key(rule: QuotaRule, label: str) -> str:
            window_key = keys.window_key(rule.metric, rule.window, rule.models, label)
            return window_key if user is None else keys.user_window_key(user, window_key)

        charges = [
            WindowCharge(
                key=key(rule, window.label),
                limit=rule.counter_limit,
                fixed=0,
                per_output=0,
                expires_at=window.end,
            )
            for rule, window in zip(rules, windows, strict=True)
        ]
        try:
            found: list[WindowUsage] = await self.store.peek(team, charges, now=now)
        except StoreError:
            self.metrics.store_errors.labels(operation="quota_peek").inc()
            if self.on_error == "closed":
                raise StoreUnavailableError("Quota store unavailable.") from None
            found = await self.local.peek(team, charges, now=now)
        return [
            RuleUsage(rule, u.used, u.reserved, w.start, w.end)
            for rule, u, w in zip(rules, found, windows, strict=True)
        ]

    async def drain(self, timeout_seconds: float = 5.0) -> None:
        """At shutdown: give background settlements a moment; their holds expire anyway."""
        if not self._background:
            return
        _, pending = await asyncio.wait(set(self._background), timeout=timeout_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
