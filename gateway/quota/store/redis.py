"""The Redis quota store: one Lua script per decision, called by SHA.

redis-py's ``Script`` objects call EVALSHA and reload the script on NOSCRIPT (a restarted or
failed-over Redis), so each decision is one round trip. Every Redis failure or timeout is
raised as a ``StoreError`` (``gateway.storage.errors``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from gateway.quota.store import keys
from gateway.quota.store.base import ReserveOutcome, ReserveState, WindowCharge, WindowUsage
from gateway.storage.batching import ScriptBatcher
from gateway.storage.client import RedisClient
from gateway.storage.errors import guarded
from gateway.storage.pubsub import listen

_STATES: dict[int, ReserveState] = {1: "granted", 0: "exhausted", 2: "congested"}


#: How long a settled reservation's record stays as a tombstone, so that a settlement retried
#: after a lost reply is not charged twice (settle_tokens.lua). Longer than the quota service's
#: whole retry schedule (``SETTLE_RETRY_DELAYS_SECONDS`` plus a store timeout per try).
SETTLED_TOMBSTONE_SECONDS = 180.0

_PURGE = "purge_expired.lua"
_COUNTERS = "counters.lua"
_REPLACE = "replace_reservation.lua"


def _script_source(name: str, *preludes: str) -> str:
    """A script with the shared Lua functions it calls prepended (Lua files cannot import)."""
    lua = resources.files(__package__) / "lua"
    return "\n".join((lua / part).read_text(encoding="utf-8") for part in (*preludes, name))


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class RedisQuotaStore:
    def __init__(self, client: RedisClient, *, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix
        script = client.register_script
        self._reserve = script(_script_source("reserve_tokens.lua", _PURGE, _COUNTERS))
        self._settle = script(_script_source("settle_tokens.lua", _COUNTERS, _REPLACE))
        self._peek = script(_script_source("peek_usage.lua", _PURGE))
        self._cancel = script(_script_source("cancel_reservation.lua"))
        self._settle_job = script(_script_source("settle_job.lua", _COUNTERS, _REPLACE))
        self._batcher = ScriptBatcher(client)

    def _counters(self, team: str, charges: Sequence[WindowCharge]) -> list[str]:
        return [keys.quota_counter(self._prefix, team, c.key) for c in charges]

    async def _call(self, script: Any, keys_: list[str], args: list[Any]) -> Any:
        async with guarded("redis quota store"):
            return await self._batcher.call(script, keys_, args)

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
        args: list[Any] = [
            _ms(now),
            _ms(hold_until),
            requested_output,
            min_output,
            keys.reservation_record_prefix(self._prefix, team),
            request_id,
            1 if last_try else 0,
            max(1, _ms(waiting_seconds)),
        ]
        for charge in charges:
            args += [charge.limit, charge.fixed, charge.per_output, _ms(charge.expires_at)]
        reply = await self._call(
            self._reserve,
            [
                keys.reservation_index(self._prefix, team),
                keys.reservation_record(self._prefix, team, request_id),
                keys.waiting_flag(self._prefix, team),
                *self._counters(team, charges),
            ],
            args,
        )
        state, output, blocked, *remaining = (int(v) for v in reply)
        return ReserveOutcome(
            state=_STATES[state],
            output=output,
            blocked=blocked - 1 if blocked else None,
            remaining=tuple(remaining),
        )

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
        args: list[Any] = [
            request_id,
            keys.freed_channel(self._prefix),
            team,
            _ms(SETTLED_TOMBSTONE_SECONDS),
        ]
        for charge, held, used in zip(charges, reserved, actual, strict=True):
            args += [held, used, _ms(charge.expires_at)]
        await self._call(
            self._settle,
            [
                keys.reservation_index(self._prefix, team),
                keys.reservation_record(self._prefix, team, request_id),
                keys.waiting_flag(self._prefix, team),
                *self._counters(team, charges),
            ],
            args,
        )

    async def cancel(self, team: str, request_id: str) -> bool:
        """Release a reservation whose reserve reply was lost; True if there was one."""
        reply = await self._call(
            self._cancel,
            [
                keys.reservation_index(self._prefix, team),
                keys.reservation_record(self._prefix, team, request_id),
            ],
            [request_id],
        )
        return bool(int(reply))

    async def peek(
        self, team: str, charges: Sequence[WindowCharge], *, now: float
    ) -> list[WindowUsage]:
        reply = await self._call(
            self._peek,
            [keys.reservation_index(self._prefix, team), *self._counters(team, charges)],
            [_ms(now), keys.reservation_record_prefix(self._prefix, team)],
        )
        values = [int(v) for v in reply]
        return [WindowUsage(values[i], values[i + 1]) for i in range(0, len(values), 2)]

    async def open_job(self, team: str, job_id: str, record: bytes) -> None:
        async with guarded("redis quota store"):
            await self._redis.hset(keys.open_jobs(self._prefix, team), job_id, record)
            await self._redis.sadd(keys.job_teams(self._prefix), team)

    async def open_jobs(self, team: str) -> dict[str, bytes]:
        async with guarded("redis quota store"):
            found = await self._redis.hgetall(keys.open_jobs(self._prefix, team))
        return {_text(k): _bytes(v) for k, v in found.items()}

    async def job(self, team: str, job_id: str) -> bytes | None:
        async with guarded("redis quota store"):
            found = await self._redis.hget(keys.open_jobs(self._prefix, team), job_id)
        return None if found is None else _bytes(found)

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
        args: list[Any] = [job_id, request_id, keys.freed_channel(self._prefix), team]
        for charge, held, used in zip(charges, reserved, actual, strict=True):
            args += [held, used, _ms(charge.expires_at)]
        reply = await self._call(
            self._settle_job,
            [
                keys.open_jobs(self._prefix, team),
                keys.reservation_index(self._prefix, team),
                keys.reservation_record(self._prefix, team, request_id),
                keys.waiting_flag(self._prefix, team),
                *self._counters(team, charges),
            ],
            args,
        )
        return bool(int(reply))

    async def job_teams(self) -> list[str]:
        async with guarded("redis quota store"):
            found = await self._redis.smembers(keys.job_teams(self._prefix))
        return sorted(_text(t) for t in found)

    async def retire_team(self, team: str) -> None:
        # Remove, then look again: a job opened meanwhile (HSET before its SADD) puts the team
        # back, so no interleaving with open_job loses a team that has a job.
        jobs, teams = keys.open_jobs(self._prefix, team), keys.job_teams(self._prefix)
        async with guarded("redis quota store"):
            if await self._redis.hlen(jobs):
                return
            await self._redis.srem(teams, team)
            if await self._redis.hlen(jobs):
                await self._redis.sadd(teams, team)

    async def listen_for_frees(self, on_freed: Callable[[str], None]) -> None:
        await listen(
            self._redis,
            keys.freed_channel(self._prefix),
            lambda data: on_freed(data.decode()),
            what="redis quota wake-ups",
        )

    async def ping(self) -> None:
        async with guarded("redis quota store"):
            await self._redis.ping()

    async def close(self) -> None:
        await self._batcher.aclose()
        await self._redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value
