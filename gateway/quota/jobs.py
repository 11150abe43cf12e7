"""Jobs whose reservation outlives the request: background responses and batches.

At create, the request reserves as usual (with a long hold), and instead of settling it is
recorded as an open job in the quota store, under the team's hash tag: which replica created
it does not matter, and a restart loses nothing. Whoever sees the job reach a terminal status
first (a client's retrieve or cancel, or any replica's reconciler) settles it with one atomic
store call that closes the job and charges it; every other call changes nothing, so a job is
charged exactly once, and no crash can fall between closing and charging.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gateway import json_codec
from gateway.apis import Usage
from gateway.quota.policy import used_amount
from gateway.quota.pricing import UnitPrice
from gateway.quota.service import QuotaService, Reservation
from gateway.quota.store.base import QuotaStore, WindowCharge
from gateway.storage.errors import StoreError

log = logging.getLogger("gateway.quota")

JobKind = Literal["response", "batch"]


@dataclass(frozen=True, slots=True)
class OpenJob:
    kind: JobKind
    job_id: str
    team: str
    request_id: str
    charges: tuple[WindowCharge, ...]
    reserved: tuple[int, ...]
    metrics: tuple[str, ...]  # per charge: the rule's metric, to turn usage into amounts
    opened_at: float
    hold_until: float
    endpoint: str  # the API the job's requests call (a batch's lines), for usage parsing
    price: UnitPrice | None = None  # what its usage costs (cost rules and spend metrics)

    def encode(self) -> bytes:
        return json_codec.dumps(
            {
                "kind": self.kind,
                "job_id": self.job_id,
                "team": self.team,
                "request_id": self.request_id,
                "charges": [
                    [c.key, c.limit, c.fixed, c.per_output, c.expires_at] for c in self.charges
                ],
                "reserved": list(self.reserved),
                "metrics": list(self.metrics),
                "opened_at": self.opened_at,
                "hold_until": self.hold_until,
                "endpoint": self.endpoint,
                "price": None if self.price is None else self.price.encode(),
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> OpenJob:
        obj = json_codec.loads(raw)
        return cls(
            kind=obj["kind"],
            job_id=obj["job_id"],
            team=obj["team"],
            request_id=obj["request_id"],
            charges=tuple(WindowCharge(k, lim, f, p, e) for k, lim, f, p, e in obj["charges"]),
            reserved=tuple(obj["reserved"]),
            metrics=tuple(obj["metrics"]),
            opened_at=obj["opened_at"],
            hold_until=obj["hold_until"],
            endpoint=obj["endpoint"],
            price=UnitPrice.decode(obj["price"]) if obj.get("price") else None,
        )


def job_amounts(
    metrics: Sequence[str], usage: Usage, requests: int, price: UnitPrice | None
) -> list[int]:
    """What a finished job really used, per charge (``requests``: how many it ran)."""
    return [used_amount(metric, usage, requests, price) for metric in metrics]


class JobLedger:
    """Open, list, claim and settle jobs, over the quota service's store."""

    def __init__(self, quotas: QuotaService) -> None:
        self.quotas = quotas

    @property
    def store(self) -> QuotaStore:
        return self.quotas.store

    async def open(
        self,
        reservation: Reservation,
        kind: JobKind,
        job_id: str,
        endpoint: str,
        *,
        hold_seconds: float,
    ) -> bool:
        """Hand the reservation over to a job; False (the caller settles as usual) when the
        store cannot record it."""
        if reservation.store is not self.store:
            return False  # admitted without the shared store: nobody else could settle it
        now = self.quotas.clock()
        job = OpenJob(
            kind=kind,
            job_id=job_id,
            team=reservation.team,
            request_id=reservation.request_id,
            charges=reservation.plan.charges,
            reserved=tuple(reservation.reserved),
            metrics=tuple(
                reservation.plan.metric_of(i) for i in range(len(reservation.plan.charges))
            ),
            opened_at=now,
            hold_until=now + hold_seconds,
            endpoint=endpoint,
            price=reservation.plan.price,
        )
        try:
            await self.store.open_job(reservation.team, job_id, job.encode())
        except StoreError:
            self.quotas.metrics.store_errors.labels(operation="job_open").inc()
            return False
        reservation.settled = True
        return True

    async def settle(
        self, team: str, job_id: str, usage: Usage | None, requests: int
    ) -> OpenJob | None:
        """Close the job and charge what it used (None: keep the reservation as charged).
        The job if this call settled it; None if it was not open (or another caller did)."""
        raw = await self.store.job(team, job_id)
        if raw is None:
            return None
        job = OpenJob.decode(raw)
        actual = (
            list(job.reserved)
            if usage is None
            else job_amounts(job.metrics, usage, requests, job.price)
        )
        try:
            # Shielded: once sent, the caller's cancellation must not leave the outcome unknown.
            settled = await asyncio.shield(
                self.store.settle_job(
                    team,
                    job_id,
                    job.request_id,
                    job.charges,
                    job.reserved,
                    actual,
                    now=self.quotas.clock(),
                )
            )
        except StoreError:
            # Not settled, or settled without the reply: either way the job is charged at
            # most once, and a later poll settles it if it is still open.
            self.quotas.metrics.store_errors.labels(operation="job_settle").inc()
            raise
        if settled:
            self.quotas.queue.notify(team)  # this replica's waiters (others hear the store)
            log.info(
                "job settled",
                extra={"team": team, "job": job_id, "kind": job.kind, "charged": actual},
            )
        return job if settled else None
