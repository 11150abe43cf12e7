"""The reconciler: every replica polls the upstream for the open jobs (background responses,
batches) of every team, with the real key, and settles those that finished.

Idle, one poll is one store call (the set of teams with open jobs is empty). Replicas poll
the same jobs; the claim in ``quota.jobs`` makes exactly one of them settle each.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.errors import GatewayError
from gateway.pipeline.jobs import JobPollError, poll_job
from gateway.quota.jobs import OpenJob
from gateway.state import GatewayState
from gateway.storage.errors import StoreError

log = logging.getLogger("gateway.quota")

_POLL_ERRORS = (GatewayError, StoreError, JobPollError, KeyError, ValueError, TypeError)


class Reconciler:
    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self._gauged: set[str] = set()

    async def run(self) -> None:
        while True:
            try:
                await self.poll()
            except StoreError as exc:
                self.state.metrics.reconciler_errors.inc()
                log.warning("reconciler poll failed", extra={"error": str(exc)})
            await asyncio.sleep(self.state.config.admission.reconcile_interval_seconds)

    async def poll(self) -> int:
        """One pass over every open job; returns how many this replica settled."""
        state = self.state
        store = state.quotas.store
        settled = 0
        seen: set[str] = set()
        for team in await store.job_teams():
            jobs = await store.open_jobs(team)
            if not jobs:
                await store.retire_team(team)
                continue
            seen.add(team)
            counts = {"response": 0, "batch": 0}
            for job_id, raw in jobs.items():
                try:
                    job = OpenJob.decode(raw)
                    counts[job.kind] += 1
                    if state.quotas.clock() > job.hold_until:
                        # Its hold is over: what it reserved stops counting; charge it as used.
                        settled += await state.jobs.settle(team, job_id, None, 0) is not None
                    else:
                        settled += await poll_job(state, team, job.kind, job_id)
                except _POLL_ERRORS as exc:
                    state.metrics.reconciler_errors.inc()
                    log.warning(
                        "reconciler could not poll a job",
                        extra={"team": team, "job": job_id, "error": str(exc)},
                    )
            state.metrics.open_background.labels(team=team).set(counts["response"])
            state.metrics.open_batches.labels(team=team).set(counts["batch"])
        for team in self._gauged - seen:
            state.metrics.open_background.labels(team=team).set(0)
            state.metrics.open_batches.labels(team=team).set(0)
        self._gauged = seen
        return settled
