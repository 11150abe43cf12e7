"""Every Redis key the gateway writes, built in one place.

A team's keys share the hash tag ``{team}``, so they live in one Redis Cluster slot and one
Lua script may touch all of them. Keys carry no limit value, so changing a limit (and
reloading) never resets what was used.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache


def scope_id(models: list[str] | None) -> str:
    """A short, stable name for a rule's model scope."""
    if not models:
        return "all"
    return _scope_id(tuple(models))


@lru_cache(maxsize=1024)  # asked for every rule of every request; rules change rarely
def _scope_id(models: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(sorted(models)).encode()).hexdigest()[:12]


def window_key(metric: str, window: str, models: list[str] | None, window_label: str) -> str:
    """A window's identity within a team (the store adds prefix and team)."""
    return f"{metric}:{window}:{scope_id(models)}:{window_label}"


#: Longest user id kept readable in a key; longer ones are hashed (a ``sub`` can be any string).
MAX_USER_IN_KEY = 64


def user_window_key(user: str, key: str) -> str:
    """A user's window within the team (under the team's hash tag: one slot with the team's
    windows, so one script checks both)."""
    if len(user) > MAX_USER_IN_KEY:
        user = "h-" + hashlib.sha256(user.encode()).hexdigest()[:32]
    return f"u:{user}:{key}"


def team_prefix(prefix: str, team: str) -> str:
    return f"{prefix}:{{{team}}}"


def quota_counter(prefix: str, team: str, key: str) -> str:
    return f"{team_prefix(prefix, team)}:q:{key}"


def reservation_index(prefix: str, team: str) -> str:
    return f"{team_prefix(prefix, team)}:resv"


def reservation_record_prefix(prefix: str, team: str) -> str:
    return f"{team_prefix(prefix, team)}:resv:"


def reservation_record(prefix: str, team: str, request_id: str) -> str:
    return reservation_record_prefix(prefix, team) + request_id


def open_jobs(prefix: str, team: str) -> str:
    """Hash: job id (a background response or batch) -> its settlement record."""
    return f"{team_prefix(prefix, team)}:jobs"


def job_teams(prefix: str) -> str:
    """Set of teams that may have open jobs: what the reconciler reads when idle (one call)."""
    return f"{prefix}:jobteams"


def waiting_flag(prefix: str, team: str) -> str:
    """Exists while a request of the team waits for budget held by reservations."""
    return f"{team_prefix(prefix, team)}:waiting"


def freed_channel(prefix: str) -> str:
    """Settlements publish a team's name here while it has waiters (one channel for all)."""
    return f"{prefix}:quota-freed"


def restore_marks(prefix: str, team: str, key: str) -> str:
    """Hash: gateway process (request id prefix) -> the highest sequence number whose usage
    ``gateway usage restore`` put back into window ``key``; expires with the window's counter.
    Not under ``:q:``, which holds only counters."""
    return f"{team_prefix(prefix, team)}:restored:{key}"


def state_marker(prefix: str, shard: int | None = None) -> str:
    """The key without TTL whose absence means the quota Redis lost its state.

    One server: ``shard`` is None and there is one marker. A cluster has one marker per primary:
    shard ``n`` carries the hash tag ``{mN}``, and the marker of a primary is the first shard
    whose slot it serves (``gateway.quota.store.guards``).
    """
    base = f"{prefix}:quota-state-marker"
    return base if shard is None else f"{base}:{{m{shard}}}"
