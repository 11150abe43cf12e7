"""The quota store interface and the values that cross it.

A window counter holds two numbers: ``used`` (settled usage) and ``reserved`` (the sum of open
reservations). Each reservation is also recorded on its own, with a hold-until time, so that a
reservation whose replica died stops counting once that time has passed: every store call
first purges the team's expired reservations.

Reservations are charged to the window they were admitted in, even if they settle after it
ended: the request was admitted against that window's budget.

A store that cannot answer raises ``gateway.storage.errors.StoreError`` (the memory store
never does); callers decide what that means.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

#: granted; exhausted: settled usage alone leaves too little (waiting cannot help); congested:
#: it would fit, but open reservations hold the budget (they settle soon: worth waiting for).
ReserveState = Literal["granted", "exhausted", "congested"]


@dataclass(frozen=True, slots=True)
class WindowCharge:
    """What a request asks of one window of one rule.

    The amount reserved is ``fixed + per_output * output``, where ``output`` is the per-choice
    output budget granted to the request (the same for every window of the request).
    """

    key: str  # the window's identity within the team (built by gateway.quota.store.keys)
    limit: int
    fixed: int
    per_output: int
    expires_at: float  # when the window's counter may be dropped


@dataclass(frozen=True, slots=True)
class ReserveOutcome:
    state: ReserveState
    output: int  # per-choice output budget granted (<= requested)
    blocked: int | None  # index of the charge that refused or bound the request
    #: Per charge: what is left after this reservation (before it, if refused), reservations
    #: of other requests included.
    remaining: tuple[int, ...]

    @property
    def granted(self) -> bool:
        return self.state == "granted"


@dataclass(frozen=True, slots=True)
class WindowUsage:
    used: int
    reserved: int


class QuotaStore(Protocol):
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
        """Check every charge and reserve in all of them, or in none.

        The output is clamped only by what settled usage leaves; when open reservations stand
        in the way the answer is ``congested`` (and the team is marked as having waiters for
        ``waiting_seconds``, so settlements announce themselves), except on the ``last_try``,
        which clamps by what the reservations leave instead.
        """
        ...

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
        """Replace the request's reservation by what it really used, in one step."""
        ...

    async def cancel(self, team: str, request_id: str) -> bool:
        """Release a reservation whose reserve reply was lost (it may or may not exist)."""
        ...

    async def peek(
        self, team: str, charges: Sequence[WindowCharge], *, now: float
    ) -> list[WindowUsage]: ...

    # Open jobs: background responses and batches whose reservation settles later, on any
    # replica (``gateway.quota.jobs``).

    async def open_job(self, team: str, job_id: str, record: bytes) -> None:
        """Remember a job until it is claimed; the team joins the set the reconciler reads."""
        ...

    async def open_jobs(self, team: str) -> dict[str, bytes]: ...

    async def job(self, team: str, job_id: str) -> bytes | None:
        """An open job's record (None: not open)."""
        ...

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
        """In one step: close the job and replace its reservation by ``actual`` (as
        ``settle``). True for exactly one caller; False, changing nothing, for every other."""
        ...

    async def job_teams(self) -> list[str]: ...

    async def retire_team(self, team: str) -> None:
        """Drop a team from the reconciler's set once it has no open job."""
        ...

    async def listen_for_frees(self, on_freed: Callable[[str], None]) -> None:
        """Call ``on_freed(team)`` whenever any process settles a team that has waiters; runs
        until cancelled. (The embedded store returns at once: its process notifies itself.)"""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
