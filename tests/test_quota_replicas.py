"""Several gateway processes on one Redis: caps hold across replicas, and a killed replica's
reservation stops counting once its hold expires."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from gateway.mock import MockUpstream
from gateway.quota.store import keys
from tests.support.gateway_proc import base_config, token
from tests.support.gateway_subprocess import GatewayProcess
from tests.support.redis_proc import RedisProcess
from tests.test_admission import burst
from tests.test_quota_gateway import MESSAGES, wait_until

pytestmark = pytest.mark.slow


def replica_config(
    upstream: MockUpstream, redis_server: RedisProcess, prefix: str, **upstream_extra: Any
) -> dict[str, Any]:
    return base_config(
        upstream.url,
        upstream={**upstream_extra},
        store={"redis_url": redis_server.url, "key_prefix": prefix},
        teams={
            "ml": {"quotas": [{"metric": "completion_tokens", "limit": 10_000, "window": "day"}]}
        },
        logging={"level": "WARNING", "access_log": False},
    )


async def test_three_replicas_share_one_exact_cap(
    upstream: MockUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    prefix = "r" + uuid.uuid4().hex[:8]
    replicas = [
        GatewayProcess(replica_config(upstream, redis_server, prefix), tmp_path, f"gw{i}")
        for i in range(3)
    ]
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        clients = [
            openai.AsyncOpenAI(base_url=r.url, api_key=token(), max_retries=0) for r in replicas
        ]

        async def one(i: int) -> int:
            client = clients[i % 3]
            try:
                if i % 2:
                    stream = await client.chat.completions.create(
                        model="gpt-4o-mini",
                        messages=MESSAGES,
                        max_completion_tokens=700,
                        stream=True,
                        stream_options={"include_usage": True},
                        extra_headers={"x-mock-completion-tokens": "1000"},
                    )
                    usage = None
                    async for chunk in stream:
                        usage = chunk.usage or usage
                    return usage.completion_tokens if usage else 0
                done = await client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=MESSAGES,
                    max_completion_tokens=700,
                    extra_headers={"x-mock-completion-tokens": "1000"},
                )
                return done.usage.completion_tokens if done.usage else 0
            except openai.RateLimitError:
                return 0

        received = await asyncio.gather(*(one(i) for i in range(200)))
        assert 10_000 - 16 <= sum(received) <= 10_000
        check = aioredis.Redis.from_url(redis_server.url)
        try:
            values = [
                await check.hgetall(k)
                async for k in check.scan_iter(match=f"{prefix}:{{ml}}:q:completion_tokens:*")
            ]
            assert sum(int(v.get(b"used", 0)) for v in values) == sum(received)
            assert sum(int(v.get(b"reserved", 0)) for v in values) == 0
        finally:
            await check.aclose()
    finally:
        for r in replicas:
            r.stop()


async def test_killed_replica_reservation_expires(
    upstream: MockUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    prefix = "k" + uuid.uuid4().hex[:8]
    # Hold = total timeout (1 s) + grace (0.5 s): a crash leaks budget for at most 1.5 s.
    config = replica_config(
        upstream, redis_server, prefix, total_timeout_seconds=1.0, read_timeout_seconds=1.0
    )
    config["store"]["reservation_grace_seconds"] = 0.5
    doomed, survivor = (
        GatewayProcess(config, tmp_path, "doomed"),
        GatewayProcess(config, tmp_path, "survivor"),
    )
    check = aioredis.Redis.from_url(redis_server.url)
    counter_pattern = f"{prefix}:{{ml}}:q:completion_tokens:*"

    async def reserved() -> int:
        return sum(
            [
                int((await check.hgetall(k)).get(b"reserved", 0))
                async for k in check.scan_iter(match=counter_pattern)
            ]
        )

    try:
        await asyncio.gather(doomed.start(), survivor.start())
        gate = upstream.gate("crash")
        async with aiohttp.ClientSession() as s:
            resp = await s.post(
                doomed.url + "/chat/completions",
                json={
                    "model": "gpt-4o-mini",
                    "messages": MESSAGES,
                    "stream": True,
                    "max_completion_tokens": 9995,
                },
                headers={"Authorization": f"Bearer {token()}", "x-mock-gate": "crash"},
            )
            await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=5)
            doomed.kill()  # kill -9 with the request in flight
            resp.close()
        gate.release()
        assert await reserved() == 9995  # 5 left: below the useful minimum
        assert await check.zcard(keys.reservation_index(prefix, "ml")) == 1
        survivor_client = openai.AsyncOpenAI(base_url=survivor.url, api_key=token(), max_retries=0)
        # The dead replica's reservation holds the budget: congested, not exhausted. The
        # request waits (no settlement will ever announce itself; the waiters' poll sees the
        # hold expire) and is answered in full instead of refused.
        done = await survivor_client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_completion_tokens=2000
        )
        assert done.choices and done.choices[0].finish_reason == "stop"
        assert await reserved() == 0
    finally:
        doomed.stop()
        survivor.stop()
        await check.aclose()


async def test_three_replica_processes_queue_instead_of_refusing_and_cap_concurrency(
    upstream: MockUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    """Admission across real processes: a burst whose reservations do not fit at once is
    answered in full by waiting (woken across processes by the settlements), and the team's
    cap on requests in flight holds at the upstream."""
    prefix = "a" + uuid.uuid4().hex[:8]
    config = replica_config(upstream, redis_server, prefix)
    config["store"]["timeout_seconds"] = 5.0  # a loaded machine must not trip the fallback
    config["teams"]["ml"] = {
        "quotas": [{"metric": "completion_tokens", "limit": 3000, "window": "day"}],
        "max_concurrent_requests": 4,
    }
    replicas = [GatewayProcess(config, tmp_path, f"adm{i}") for i in range(3)]
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        clients = [
            openai.AsyncOpenAI(base_url=r.url, api_key=token(), max_retries=0) for r in replicas
        ]
        upstream.in_flight.peak = 0
        answers, refused = await burst(
            clients, 90, max_tokens=500, headers={"x-mock-first-byte-delay-ms": "20"}
        )
        assert refused == [] and len(answers) == 90
        assert all(finish == "stop" for _, finish in answers)
        assert upstream.in_flight.peak <= 4
        check = aioredis.Redis.from_url(redis_server.url)
        try:
            values = [
                await check.hgetall(k)
                async for k in check.scan_iter(match=f"{prefix}:{{ml}}:q:completion_tokens:*")
            ]
            assert sum(int(v.get(b"used", 0)) for v in values) == sum(u for u, _ in answers)
            assert sum(int(v.get(b"reserved", 0)) for v in values) == 0
        finally:
            await check.aclose()
    finally:
        for r in replicas:
            r.stop()


async def _queued_on(session: aiohttp.ClientSession, replica: GatewayProcess) -> float:
    """The replica's own count of requests waiting for the team's budget (its /metrics)."""
    async with session.get(f"http://127.0.0.1:{replica.port}/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_quota_queued_requests" and sample.labels["team"] == "ml":
                return sample.value
    return 0.0


async def test_a_settlement_on_one_process_wakes_a_waiter_on_another(
    upstream: MockUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    """A stream on one process holds the whole cap; a request on another waits for it and is
    answered once it settles. The waiters' poll is 30 s, so only the settlement's pub/sub
    message can wake it in time. Latency: from the end of the holder's stream (the gateway
    writes it before settling) to the waiter's response headers."""
    prefix = "w" + uuid.uuid4().hex[:8]
    config = replica_config(upstream, redis_server, prefix)
    config["store"]["timeout_seconds"] = 5.0  # a loaded machine must not trip the fallback
    config["admission"] = {"poll_seconds": 30}
    holder, waiter = (
        GatewayProcess(config, tmp_path, "holder"),
        GatewayProcess(config, tmp_path, "waiter"),
    )
    auth = {"Authorization": f"Bearer {token()}"}

    def chat(max_tokens: int) -> dict[str, Any]:
        return {
            "model": "gpt-4o-mini",
            "messages": MESSAGES,
            "stream": True,
            "max_completion_tokens": max_tokens,
        }

    async def admitted(session: aiohttp.ClientSession) -> tuple[float, int, bytes]:
        async with session.post(waiter.url + "/chat/completions", json=chat(20), headers=auth) as r:
            at = time.perf_counter()
            return at, r.status, await r.read()

    latencies = []
    try:
        await asyncio.gather(holder.start(), waiter.start())
        async with aiohttp.ClientSession() as session:

            async def waiting() -> bool:
                return await _queued_on(session, waiter) == 1

            for i in range(30):
                gate = f"across-{i}"
                # More than the cap: granted all that usage leaves, so nothing else fits.
                async with session.post(
                    holder.url + "/chat/completions",
                    json=chat(100_000),
                    headers={**auth, "x-mock-gate": gate},
                ) as held:
                    assert held.status == 200
                    await asyncio.wait_for(upstream.gate(gate).first_chunk_sent.wait(), 10)
                    pending = asyncio.ensure_future(admitted(session))
                    await wait_until(waiting, within_seconds=10)
                    upstream.gate(gate).release()
                    await held.read()
                    ended = time.perf_counter()
                at, status, body = await asyncio.wait_for(pending, 10)
                assert status == 200, body  # answered, never 429
                assert b"data: [DONE]" in body
                latencies.append(at - ended)
    finally:
        holder.stop()
        waiter.stop()
    median = statistics.median(latencies)
    p99 = statistics.quantiles(latencies, n=100, method="inclusive")[98]
    print(
        f"\nwake-up across processes: median {median * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms over {len(latencies)}"
    )
    assert p99 < 2.0, latencies  # far below the 30 s poll: the pub/sub message woke it
