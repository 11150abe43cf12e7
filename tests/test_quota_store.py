"""One behavioural suite, run against the Redis store (a real redis-server) and the memory store."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.quota.store import keys
from gateway.quota.store.base import QuotaStore, ReserveOutcome, WindowCharge
from gateway.quota.store.memory import MemoryQuotaStore
from gateway.quota.store.redis import RedisQuotaStore
from gateway.storage.client import connect
from tests.support.redis_proc import RedisProcess

NOW = 1_800_000_000.0
HOLD = NOW + 100


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[QuotaStore]:
    if request.param == "memory":
        yield MemoryQuotaStore()
        return
    server: RedisProcess = request.getfixturevalue("redis_server")
    client = await connect(server.url, timeout_seconds=2)
    yield RedisQuotaStore(client, prefix="t" + uuid.uuid4().hex[:8])
    await client.aclose()


def charge(
    key: str = "completion_tokens:day:all:1", limit: int = 1000, fixed: int = 0, per: int = 1
) -> WindowCharge:
    return WindowCharge(key=key, limit=limit, fixed=fixed, per_output=per, expires_at=NOW + 86400)


async def reserve(
    store: QuotaStore,
    rid: str,
    charges: list[WindowCharge],
    want: int,
    minimum: int = 1,
    now: float = NOW,
    hold: float = HOLD,
    last_try: bool = False,
) -> ReserveOutcome:
    return await store.reserve(
        "team",
        rid,
        charges,
        requested_output=want,
        min_output=minimum,
        now=now,
        hold_until=hold,
        last_try=last_try,
    )


async def state(
    store: QuotaStore, charges: list[WindowCharge], now: float = NOW
) -> list[tuple[int, int]]:
    return [(u.used, u.reserved) for u in await store.peek("team", charges, now=now)]


async def test_reservations_in_the_way_are_congestion_not_a_clamp(store: QuotaStore) -> None:
    c = [charge(limit=1000)]
    first = await reserve(store, "a", c, 700)
    assert first.granted and first.output == 700 and first.remaining == (300,)
    second = await reserve(store, "b", c, 700)
    assert second.state == "congested" and second.blocked == 0 and second.remaining == (300,)
    assert await state(store, c) == [(0, 700)]  # nothing reserved for the congested one
    # Its last try (after waiting the whole timeout) takes what the reservations leave.
    last = await reserve(store, "b", c, 700, last_try=True)
    assert last.granted and last.output == 300 and last.blocked == 0
    assert last.remaining == (0,)
    assert await state(store, c) == [(0, 1000)]


async def test_spent_budget_is_exhausted_and_clamps_by_usage_only(store: QuotaStore) -> None:
    c = [charge(limit=1000)]
    await reserve(store, "a", c, 900)
    await store.settle("team", "a", c, [900], [900], now=NOW)
    clamped = await reserve(store, "b", c, 700)  # usage leaves 100: clamped, not congested
    assert clamped.granted and clamped.output == 100 and clamped.blocked == 0
    waits = await reserve(store, "c", c, 50, minimum=16)
    assert waits.state == "congested"  # b may leave some of its 100 unused
    await store.settle("team", "b", c, [100], [100], now=NOW)
    exhausted = await reserve(store, "c", c, 50, minimum=16)
    assert exhausted.state == "exhausted" and exhausted.blocked == 0
    assert exhausted.remaining == (0,)
    assert await state(store, c) == [(1000, 0)]


async def test_below_the_useful_minimum_on_the_last_try_is_still_refused(
    store: QuotaStore,
) -> None:
    c = [charge(limit=100)]
    assert (await reserve(store, "a", c, 95)).granted
    refused = await reserve(store, "b", c, 50, minimum=16, last_try=True)
    assert refused.state == "congested" and refused.blocked == 0 and refused.remaining == (5,)
    assert await state(store, c) == [(0, 95)]


async def test_all_or_nothing_across_windows(store: QuotaStore) -> None:
    tokens = charge("completion_tokens:day:all:1", limit=1000)
    requests = charge("requests:minute:all:1", limit=1, fixed=1, per=0)
    assert (await reserve(store, "a", [tokens, requests], 100)).granted
    refused = await reserve(store, "b", [tokens, requests], 100)
    assert refused.state == "congested" and refused.blocked == 1
    assert await state(store, [tokens, requests]) == [(0, 100), (0, 1)]
    await store.settle("team", "a", [tokens, requests], [100, 1], [10, 1], now=NOW)
    used_up = await reserve(store, "c", [tokens, requests], 100)
    assert used_up.state == "exhausted" and used_up.blocked == 1


async def test_choices_multiply_the_output_reservation(store: QuotaStore) -> None:
    c = [charge(limit=1000, per=3)]
    outcome = await reserve(store, "a", c, 500)
    assert outcome.output == 333 and outcome.remaining == (1,)


async def test_settle_replaces_the_reservation_by_real_usage(store: QuotaStore) -> None:
    c = [charge(limit=1000)]
    await reserve(store, "a", c, 600)
    await store.settle("team", "a", c, [600], [123], now=NOW)
    assert await state(store, c) == [(123, 0)]
    # Settling twice (a retry after a lost reply) never releases budget twice.
    await store.settle("team", "a", c, [600], [0], now=NOW)
    assert await state(store, c) == [(123, 0)]


async def test_a_resent_settlement_charges_once(redis_server: RedisProcess) -> None:
    """A settlement that ran but whose reply was lost is sent again (redis-py resends after a
    dropped connection, the quota service retries): the second run charges nothing."""
    from gateway.quota.service import SETTLE_RETRY_DELAYS_SECONDS
    from gateway.quota.store.redis import SETTLED_TOMBSTONE_SECONDS

    prefix = "s" + uuid.uuid4().hex[:8]
    client = await connect(redis_server.url, timeout_seconds=2)
    store = RedisQuotaStore(client, prefix=prefix)
    c = [charge(limit=1000)]
    try:
        await reserve(store, "a", c, 600)
        for _ in range(2):
            await store.settle("team", "a", c, [600], [123], now=NOW)
        assert await state(store, c) == [(123, 0)]
        # The tombstone outlives the whole retry schedule (a generous 5 s timeout per try).
        ttl = await client.pttl(keys.reservation_record(prefix, "team", "a"))
        assert 0 < ttl <= SETTLED_TOMBSTONE_SECONDS * 1000
        assert (
            sum(SETTLE_RETRY_DELAYS_SECONDS) + 5 * len(SETTLE_RETRY_DELAYS_SECONDS)
            < SETTLED_TOMBSTONE_SECONDS
        )
        # A reservation that expired and was purged leaves no tombstone: its late settlement
        # is still charged (never under-count).
        await reserve(store, "late", c, 100, hold=NOW + 10)
        assert await state(store, c, now=NOW + 11) == [(123, 0)]
        await store.settle("team", "late", c, [100], [7], now=NOW + 12)
        assert await state(store, c, now=NOW + 12) == [(130, 0)]
    finally:
        await client.aclose()


async def test_a_resent_reserve_replaces_its_first_run(redis_server: RedisProcess) -> None:
    client = await connect(redis_server.url, timeout_seconds=2)
    store = RedisQuotaStore(client, prefix="d" + uuid.uuid4().hex[:8])
    c = [charge(limit=1000)]
    try:
        for _ in range(2):
            assert (await reserve(store, "a", c, 600)).granted
        assert await state(store, c) == [(0, 600)]  # not 1200: it would never be freed
        await store.settle("team", "a", c, [600], [50], now=NOW)
        assert await state(store, c) == [(50, 0)]
    finally:
        await client.aclose()


async def test_release_frees_everything(store: QuotaStore) -> None:
    c = [charge(limit=1000)]
    await reserve(store, "a", c, 600)
    await store.settle("team", "a", c, [600], [0], now=NOW)
    assert await state(store, c) == [(0, 0)]


async def test_expired_reservation_stops_counting_and_late_settle_still_charges(
    store: QuotaStore,
) -> None:
    c = [charge(limit=1000)]
    await reserve(store, "dead", c, 900, hold=NOW + 10)
    assert await state(store, c, now=NOW + 9) == [(0, 900)]
    assert await state(store, c, now=NOW + 11) == [(0, 0)]
    granted = await reserve(store, "next", c, 900, now=NOW + 11, hold=NOW + 50)
    assert granted.output == 900
    # The "dead" replica settles late: usage is charged; the purged hold is not freed twice.
    await store.settle("team", "dead", c, [900], [50], now=NOW + 12)
    assert await state(store, c, now=NOW + 12) == [(50, 900)]


async def test_limit_change_keeps_usage(store: QuotaStore) -> None:
    await reserve(store, "a", [charge(limit=100)], 60)
    await store.settle("team", "a", [charge(limit=100)], [60], [60], now=NOW)
    raised = await reserve(store, "b", [charge(limit=200)], 1000)
    assert raised.output == 140


async def test_concurrent_reserves_never_exceed_the_limit(store: QuotaStore) -> None:
    c = [charge(limit=10_000)]
    outcomes = await asyncio.gather(
        *(reserve(store, f"r{i}", c, 500, minimum=16) for i in range(200))
    )
    granted = sum(o.output for o in outcomes if o.granted)
    assert granted == 10_000
    assert sum(1 for o in outcomes if o.granted) == 20
    assert all(o.state == "congested" for o in outcomes if not o.granted)


async def test_redis_keys_share_the_team_hash_tag(redis_server: RedisProcess) -> None:
    prefix = "h" + uuid.uuid4().hex[:8]
    client = await connect(redis_server.url, timeout_seconds=2)
    store = RedisQuotaStore(client, prefix=prefix)
    c = [charge("completion_tokens:day:all:1"), charge("requests:minute:all:1", fixed=1, per=0)]
    await store.reserve(
        "ml", "x", c, requested_output=10, min_output=1, now=NOW, hold_until=NOW + 50
    )
    found = sorted([k.decode() async for k in client.scan_iter(match=f"{prefix}:*")])
    assert found and all("{ml}" in k for k in found)
    assert keys.reservation_index(prefix, "ml") in found
    counter = keys.quota_counter(prefix, "ml", "completion_tokens:day:all:1")
    expire_at = int(c[0].expires_at * 1000)
    assert await client.hgetall(counter) == {b"reserved": b"10", b"exp": str(expire_at).encode()}
    assert await client.pexpiretime(counter) == expire_at
    await client.aclose()


def expiring(at: float, key: str = "completion_tokens:day:all:1") -> WindowCharge:
    return WindowCharge(key=key, limit=1000, fixed=0, per_output=1, expires_at=at)


async def test_a_counter_expiry_only_moves_later(store: QuotaStore) -> None:
    early, late = expiring(NOW + 1000), expiring(NOW + 2000)
    await reserve(store, "a", [late], 10, hold=NOW + 1800)
    # A call asking for an earlier expiry (another hold length) does not shorten it...
    await reserve(store, "b", [early], 10)
    await store.settle("team", "b", [early], [10], [10], now=NOW)
    assert await state(store, [early], now=NOW + 1500) == [(10, 10)]
    # ...and one asking for a later one extends it.
    await reserve(store, "c", [expiring(NOW + 3000)], 10, hold=NOW + 2800)
    assert await state(store, [early], now=NOW + 2500) == [(10, 10)]


async def test_redis_counter_expiry_is_set_once_and_moved_only_later(
    redis_server: RedisProcess,
) -> None:
    prefix = "e" + uuid.uuid4().hex[:8]
    client = await connect(redis_server.url, timeout_seconds=2)
    store = RedisQuotaStore(client, prefix=prefix)
    counter = keys.quota_counter(prefix, "team", "completion_tokens:day:all:1")
    early, late = expiring(NOW + 1000), expiring(NOW + 2000)
    await reserve(store, "a", [late], 10)
    await reserve(store, "b", [early], 10)
    await store.settle("team", "b", [early], [10], [10], now=NOW)
    assert await client.pexpiretime(counter) == int(late.expires_at * 1000)
    await reserve(store, "c", [expiring(NOW + 3000)], 10)
    assert await client.pexpiretime(counter) == int((NOW + 3000) * 1000)
    # A counter that expired before its request settled is made again, with its expiry and
    # without a negative reservation.
    await client.delete(counter)
    await store.settle("team", "c", [late], [10], [7], now=NOW)
    assert await client.hgetall(counter) == {
        b"used": b"7",
        b"exp": str(int(late.expires_at * 1000)).encode(),
    }
    assert await client.pexpiretime(counter) == int(late.expires_at * 1000)
    await client.aclose()


async def test_redis_counters_without_a_recorded_expiry_still_count(
    redis_server: RedisProcess,
) -> None:
    # Counters written before the expiry was kept in the hash: used, reserved and a TTL only.
    prefix = "o" + uuid.uuid4().hex[:8]
    client = await connect(redis_server.url, timeout_seconds=2)
    store = RedisQuotaStore(client, prefix=prefix)
    counter = keys.quota_counter(prefix, "team", "completion_tokens:day:all:1")
    c = [charge(limit=1000)]
    await client.hset(counter, mapping={"used": 100, "reserved": 0})
    await client.pexpireat(counter, int(NOW * 1000))
    assert (await reserve(store, "a", c, 600)).remaining == (300,)
    assert await client.pexpiretime(counter) == int(c[0].expires_at * 1000)
    await client.hdel(counter, "exp")
    await store.settle("team", "a", c, [600], [50], now=NOW)
    assert await state(store, c) == [(150, 0)]
    assert await client.hget(counter, "exp") == str(int(c[0].expires_at * 1000)).encode()
    await client.aclose()


async def test_scripts_reload_after_script_flush(redis_server: RedisProcess) -> None:
    client = await connect(redis_server.url, timeout_seconds=2)
    store = RedisQuotaStore(client, prefix="f" + uuid.uuid4().hex[:8])
    c = [charge(limit=100)]
    await reserve(store, "a", c, 10)
    await client.script_flush()
    assert (await reserve(store, "b", c, 10)).granted
    await client.aclose()


async def test_unreachable_redis_raises_store_error(tmp_path) -> None:
    from gateway.storage.errors import StoreError
    from tests.support.redis_proc import free_port

    proc = RedisProcess(port=free_port(), workdir=tmp_path)
    proc.start()
    client = await connect(proc.url, timeout_seconds=0.5)
    store = RedisQuotaStore(client, prefix="down")
    assert (await reserve(store, "a", [charge()], 10)).granted
    proc.stop()
    with pytest.raises(StoreError):
        await reserve(store, "b", [charge()], 10)
    await client.aclose()


async def test_a_job_is_settled_exactly_once(store: QuotaStore) -> None:
    c = [charge(limit=1000)]
    assert (await reserve(store, "req-1", c, want=300)).granted
    await store.open_job("team", "resp_1", b"record-1")
    await store.open_job("team", "batch_1", b"record-2")
    assert await store.job_teams() == ["team"]
    assert await store.open_jobs("team") == {"resp_1": b"record-1", "batch_1": b"record-2"}
    assert await store.job("team", "resp_1") == b"record-1"
    settled = await asyncio.gather(
        *(store.settle_job("team", "resp_1", "req-1", c, [300], [120], now=NOW) for _ in range(20))
    )
    assert settled.count(True) == 1
    assert await state(store, c) == [(120, 0)]
    assert await store.open_jobs("team") == {"batch_1": b"record-2"}
    assert await store.job("team", "resp_1") is None


async def test_a_team_leaves_the_reconciler_set_only_without_jobs(store: QuotaStore) -> None:
    c = [charge()]
    await store.open_job("team", "resp_1", b"r")
    await store.retire_team("team")
    assert await store.job_teams() == ["team"]  # it still has a job
    assert await store.settle_job("team", "resp_1", "none", c, [0], [0], now=NOW)
    await store.retire_team("team")
    assert await store.job_teams() == []
    assert not await store.settle_job("team", "resp_1", "none", c, [0], [0], now=NOW)
