"""The gateway on a real 3-primary Redis Cluster, given the URL of one node."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from gateway.cache.backend import RedisCacheBackend
from gateway.cli import _purge, _usage_rows
from gateway.config_loader import parse_config
from gateway.mock import MockUpstream
from gateway.quota.store import keys
from gateway.state import STATE
from gateway.storage.client import connect, is_cluster
from tests.support.gateway_proc import RunningGateway, base_config, token
from tests.support.jobs import reconcile_until_settled, usage
from tests.support.redis_topology import ClusterProcess
from tests.test_quota_gateway import wait_until

MESSAGES = [{"role": "user", "content": "Colour of the sky?"}]


def spread_teams(cluster: ClusterProcess, per_node: int) -> list[str]:
    """Team names whose hash tags land ``per_node`` on each node of the cluster."""
    ranges = cluster.slot_ranges()
    chosen: dict[int, list[str]] = {port: [] for port in ranges}
    for i in range(10_000):
        team = f"team{i}"
        slot = key_slot(team.encode())
        port = next(p for p, spans in ranges.items() if any(lo <= slot <= hi for lo, hi in spans))
        if len(chosen[port]) < per_node:
            chosen[port].append(team)
        if all(len(names) == per_node for names in chosen.values()):
            return [name for names in chosen.values() for name in names]
    raise AssertionError("could not spread teams over the nodes")


@pytest.fixture
async def cluster_client(redis_cluster: ClusterProcess) -> AsyncIterator[RedisCluster]:
    client = await connect(redis_cluster.url, timeout_seconds=2)
    assert isinstance(client, RedisCluster)
    yield client
    await client.aclose()


async def test_any_node_url_gives_a_cluster_client(redis_cluster: ClusterProcess) -> None:
    for node in redis_cluster.nodes:
        client = await connect(node.url, timeout_seconds=2)
        try:
            assert is_cluster(client)
            assert len(client.get_primaries()) == 3
        finally:
            await client.aclose()


def cluster_gateway_config(
    redis_cluster: ClusterProcess, team_names: list[str], limit: int
) -> dict[str, Any]:
    quota = [{"metric": "completion_tokens", "limit": limit, "window": "day"}]
    return {
        "store": {"redis_url": redis_cluster.url, "key_prefix": "k" + uuid.uuid4().hex[:8]},
        "teams": {name: {"models": ["*"], "quotas": quota} for name in team_names},
    }


async def test_six_teams_on_three_nodes_get_answers_counters_and_cache_hits(
    make_gateway,
    upstream: MockUpstream,
    redis_cluster: ClusterProcess,
    cluster_client: RedisCluster,
) -> None:
    names = spread_teams(redis_cluster, per_node=2)
    gw: RunningGateway = await make_gateway(**cluster_gateway_config(redis_cluster, names, 5000))
    prefix = gw.config.store.key_prefix
    burn = {"x-mock-completion-tokens": "7"}

    async def ask(team: str, i: int) -> openai.types.chat.ChatCompletion:
        client = openai.AsyncOpenAI(base_url=gw.url, api_key=token(team), max_retries=0)
        return await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"question {i}"}],
            max_completion_tokens=50,
            extra_headers=burn,
        )

    answers = await asyncio.gather(*(ask(team, i) for team in names for i in range(5)))
    assert len(answers) == 30
    for team in names:
        used = 0
        async for key in cluster_client.scan_iter(match=f"{prefix}:{{{team}}}:q:*"):
            used += int(await cluster_client.hget(key, "used") or 0)
        assert used == 5 * 7, team
        assert await cluster_client.zcard(keys.reservation_index(prefix, team)) == 0

    # `gateway usage` reads every team, wherever its slot is.
    rows = await _usage_rows(gw.config, names)
    assert rows is not None
    assert {row[0]: row[6] for row in rows} == dict.fromkeys(names, 35)

    # Cache entry and lock share a slot, so the one-round-trip scripts run on every node.
    for team in names:
        client = openai.AsyncOpenAI(base_url=gw.url, api_key=token(team), max_retries=0)
        first = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, temperature=0
        )
        gw.runner.app[STATE].cache.local.purge(None)  # the second answer must come from Redis
        second = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, temperature=0
        )
        assert first.headers["x-gateway-cache"] == "miss", team
        assert second.headers["x-gateway-cache"] == "hit", team


async def test_purge_covers_every_node_and_reaches_every_listener(
    redis_cluster: ClusterProcess, cluster_client: RedisCluster
) -> None:
    prefix = "p" + uuid.uuid4().hex[:8]
    writer = RedisCacheBackend(cluster_client, prefix, timeout_seconds=2)
    digests = [uuid.uuid4().hex * 2 for _ in range(30)]
    for digest in digests:
        await writer.put(f"team:ml:{digest}", b"v", 60)
        await writer.put(f"team:web:{digest}", b"v", 60)
    holders = {
        node.port
        for node in redis_cluster.nodes
        for digest in digests
        if redis_cluster.port_of_slot(key_slot(digest.encode())) == node.port
    }
    assert len(holders) == 3  # the entries really are spread over the cluster

    # A listener through the cluster client, and a plain subscriber on every node: a purge
    # published once reaches all of them (PUBLISH is broadcast over the cluster bus).
    heard: list[str | None] = []
    listener = asyncio.create_task(writer.listen_for_purges(heard.append))
    plain = [aioredis.Redis.from_url(node.url) for node in redis_cluster.nodes]
    subscribers = [client.pubsub() for client in plain]
    try:
        for sub in subscribers:
            await sub.subscribe(writer.purge_channel)
            assert (await sub.get_message(timeout=5))["type"] == "subscribe"

        async def subscribed() -> bool:
            counts = [(await c.pubsub_numsub(writer.purge_channel))[0][1] for c in plain]
            return sum(counts) >= 4

        await wait_until(subscribed)
        assert await writer.purge("team:ml") == 30
        assert await writer.purge(None) == 30

        async def all_heard() -> bool:
            return heard == ["team:ml", None]

        await wait_until(all_heard)
        for sub in subscribers:
            got = [await sub.get_message(timeout=5) for _ in range(2)]
            assert [m["data"] for m in got if m] == [b"team:ml", b"*"]
        remaining = [k async for k in cluster_client.scan_iter(match=f"{prefix}:cache:*")]
        assert remaining == []
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        for sub in subscribers:
            await sub.aclose()
        for client in plain:
            await client.aclose()


async def test_cache_purge_command_runs_against_a_cluster(
    upstream: MockUpstream, redis_cluster: ClusterProcess, cluster_client: RedisCluster
) -> None:
    prefix = "c" + uuid.uuid4().hex[:8]
    backend = RedisCacheBackend(cluster_client, prefix, timeout_seconds=2)
    for _ in range(12):
        await backend.put(f"team:ml:{uuid.uuid4().hex * 2}", b"v", 60)
    config = parse_config(
        base_config(upstream.url, store={"redis_url": redis_cluster.url, "key_prefix": prefix}),
        source="<test>",
        env={},
    )
    assert await _purge(config, "team:ml") == 12


async def test_caps_hold_under_concurrency_across_two_replicas_on_the_cluster(
    make_gateway, redis_cluster: ClusterProcess, cluster_client: RedisCluster
) -> None:
    names = spread_teams(redis_cluster, per_node=1)
    config = cluster_gateway_config(redis_cluster, names, 2000)
    replicas = [await make_gateway(**config) for _ in range(2)]
    prefix = replicas[0].config.store.key_prefix
    burn = {"x-mock-completion-tokens": "1000"}  # the model would use far more than allowed

    async def one(team: str, i: int) -> int:
        gw = replicas[i % 2]
        client = openai.AsyncOpenAI(base_url=gw.url, api_key=token(team), max_retries=0)
        try:
            done = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                max_completion_tokens=300,
                extra_headers=burn,
            )
        except openai.RateLimitError:
            return 0
        assert done.usage is not None
        return done.usage.completion_tokens

    results = await asyncio.gather(*(one(team, i) for team in names for i in range(20)))
    for t, team in enumerate(names):
        received = sum(results[t * 20 : (t + 1) * 20])
        assert 2000 - 16 <= received <= 2000, team
        used = 0
        async for key in cluster_client.scan_iter(match=f"{prefix}:{{{team}}}:q:*"):
            used += int(await cluster_client.hget(key, "used") or 0)
        assert used == received, team


async def test_background_responses_of_teams_on_every_node_settle(
    make_gateway, redis_cluster: ClusterProcess
) -> None:
    names = spread_teams(redis_cluster, per_node=1)
    config = cluster_gateway_config(redis_cluster, names, 5000)
    config["admission"] = {"reconcile_interval_seconds": 3600}
    gw: RunningGateway = await make_gateway(**config)
    for team in names:
        async with openai.AsyncOpenAI(base_url=gw.url, api_key=token(team)) as client:
            await client.responses.create(
                model="gpt-4o-mini",
                input="later",
                background=True,
                max_output_tokens=100,
                extra_headers={"x-mock-background-delay-ms": "50"},
            )
    for team in names:
        await reconcile_until_settled(gw, team=team)
        rule = (await usage(gw, team))["completion_tokens"]
        assert rule["reserved"] == 0 and rule["used"] > 0, team
