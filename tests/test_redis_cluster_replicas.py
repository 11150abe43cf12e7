"""Two gateway processes on one real 3-primary Redis Cluster (AOF on, fsync always).

Eight teams whose hash tags land on every primary: answers, exact caps under concurrency
across both processes, cache hits and single-flight across the replicas, and the CLI's
`usage` and `cache purge` reaching every node. Then a node killed and restarted under traffic
(no counter lost; requests meanwhile follow `store.on_error`), and a FLUSHALL of one primary
that is not the first noticed by the per-primary state marker. One cluster for the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio.cluster import RedisCluster

from gateway.cli import _usage_rows
from gateway.config_loader import parse_config
from gateway.mock import MockUpstream
from gateway.quota.store import keys
from gateway.storage.client import connect
from tests.support.gateway_proc import base_config, token
from tests.support.gateway_subprocess import ROOT, GatewayProcess
from tests.support.redis_proc import start_or_skip
from tests.support.redis_topology import ClusterProcess
from tests.test_quota_gateway import wait_until

pytestmark = pytest.mark.slow

MODEL = "gpt-4o-mini"
LIMIT = 3000  # completion tokens per team and day
#: The steady-traffic tests check counters, not refusals: a cap they never reach, however
#: fast one request after another goes (a slow node restart once let a team spend 3,000).
STEADY_LIMIT = 10_000_000
MIN_OUTPUT = 16  # the default model's smallest useful output budget (config defaults)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    # AOF with an fsync per write, so that a node killed with SIGKILL keeps every write it
    # acknowledged: what the restart test relies on.
    topology = ClusterProcess(workdir=tmp_path_factory.mktemp("aof-cluster"), aof=True)
    start_or_skip(topology)
    yield topology
    topology.stop()


@pytest.fixture
async def cluster_client(cluster: ClusterProcess) -> AsyncIterator[RedisCluster]:
    client = await connect(cluster.url, timeout_seconds=5)
    assert isinstance(client, RedisCluster)
    yield client
    await client.aclose()


# --- Topology ---------------------------------------------------------------------------------


def server_slot(cluster: ClusterProcess, key: str) -> int:
    """The slot of ``key`` as the cluster itself computes it (CLUSTER KEYSLOT)."""
    with redis.Redis(port=cluster.nodes[0].port) as node:
        return int(node.execute_command("CLUSTER", "KEYSLOT", key))


def primary_of(cluster: ClusterProcess, key: str) -> int:
    return cluster.port_of_slot(server_slot(cluster, key))


def spread_teams(cluster: ClusterProcess, count: int) -> dict[str, int]:
    """``count`` team names, dealt round robin over the primaries by the slot of their hash tag
    (``{team}``): team name -> port of the primary that holds its counters."""
    ports = sorted(cluster.slot_ranges())
    chosen: dict[str, int] = {}
    candidates = (f"team{n}" for n in range(10_000))
    for i in range(count):
        want = ports[i % len(ports)]
        for name in candidates:
            if primary_of(cluster, keys.quota_counter("x", name, "k")) == want:
                chosen[name] = want
                break
    assert len(chosen) == count
    return chosen


def keys_on_node(port: int, match: str) -> list[str]:
    """Keys matching ``match`` held by one node (SCAN on a cluster node sees only its own)."""
    with redis.Redis(port=port) as node:
        return [k.decode() for k in node.scan_iter(match=match, count=1000)]


# --- Gateways, clients and metrics ------------------------------------------------------------


def pair_config(
    upstream: MockUpstream,
    cluster: ClusterProcess,
    teams: list[str],
    *,
    on_error: str = "closed",
    limit: int = LIMIT,
    **upstream_extra: Any,
) -> dict[str, Any]:
    quota = [{"metric": "completion_tokens", "limit": limit, "window": "day"}]
    return base_config(
        upstream.url,
        upstream=upstream_extra,
        store={
            "redis_url": cluster.url,
            "key_prefix": "cr" + uuid.uuid4().hex[:8],
            # Generous: a loaded machine must not turn a slow call into a refusal.
            "timeout_seconds": 5.0,
            "on_error": on_error,
            "state_check_seconds": 0.2,
        },
        teams={name: {"models": ["*"], "quotas": quota} for name in teams},
        logging={"level": "WARNING", "access_log": False},
    )


@asynccontextmanager
async def two_replicas(
    config: dict[str, Any], workdir: Path
) -> AsyncIterator[list[GatewayProcess]]:
    replicas = [GatewayProcess(config, workdir, f"gw{i}") for i in range(2)]
    try:
        await asyncio.gather(*(r.start(within_seconds=60) for r in replicas))
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()


class Clients:
    """One SDK client per (replica, team), closed at the end."""

    def __init__(self, replicas: list[GatewayProcess]) -> None:
        self._replicas = replicas
        self._made: dict[tuple[int, str], openai.AsyncOpenAI] = {}

    def __call__(self, replica: int, team: str) -> openai.AsyncOpenAI:
        key = (replica % len(self._replicas), team)
        if key not in self._made:
            self._made[key] = openai.AsyncOpenAI(
                base_url=self._replicas[key[0]].url, api_key=token(team), max_retries=0
            )
        return self._made[key]

    async def close(self) -> None:
        for client in self._made.values():
            await client.close()


@asynccontextmanager
async def clients_of(replicas: list[GatewayProcess]) -> AsyncIterator[Clients]:
    clients = Clients(replicas)
    try:
        yield clients
    finally:
        await clients.close()


async def metric(replica: GatewayProcess, name: str, **labels: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{replica.port}/metrics") as resp,
    ):
        text = await resp.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def metric_sum(replicas: list[GatewayProcess], name: str, **labels: str) -> float:
    return sum([await metric(r, name, **labels) for r in replicas])


async def counters(client: RedisCluster, prefix: str, team: str) -> tuple[int, int]:
    """(used, reserved) of the team's completion-token windows, read from the cluster."""
    used = reserved = 0
    match = keys.quota_counter(prefix, team, "completion_tokens:*")
    async for key in client.scan_iter(match=match):
        values = await client.hgetall(key)
        used += int(values.get(b"used", 0))
        reserved += int(values.get(b"reserved", 0))
    return used, reserved


def gateway_cli(config: dict[str, Any], workdir: Path, *args: str) -> str:
    path = workdir / f"cli-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GATEWAY_"))}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def usage_table(out: str) -> dict[str, int]:
    """`gateway usage` output -> team: USED of its completion_tokens rule."""
    lines = out.splitlines()
    header = lines[0].split()
    team_at, metric_at, used_at = header.index("TEAM"), header.index("METRIC"), header.index("USED")
    used = {}
    for line in lines[1:]:
        cells = line.split()
        if cells and cells[metric_at] == "completion_tokens":
            used[cells[team_at]] = int(cells[used_at])
    return used


# --- The eight-team test ----------------------------------------------------------------------


async def test_two_replicas_eight_teams_on_every_primary(
    upstream: MockUpstream,
    cluster: ClusterProcess,
    cluster_client: RedisCluster,
    tmp_path: Path,
) -> None:
    placement = spread_teams(cluster, 8)
    teams = list(placement)
    primaries = set(cluster.slot_ranges())
    assert len(primaries) == 3 and set(placement.values()) == primaries
    for team, port in placement.items():  # the tags really live where the server says
        slot = server_slot(cluster, keys.team_prefix("any", team))
        assert any(lo <= slot <= hi for lo, hi in cluster.slot_ranges()[port]), team

    config = pair_config(upstream, cluster, teams)
    prefix = config["store"]["key_prefix"]
    entries = f"{prefix}:cache:v1:*"
    charged: Counter[str] = Counter()  # tokens of answers that went upstream (hits are free)

    async with two_replicas(config, tmp_path) as replicas, clients_of(replicas) as sdk:
        # 1. Every team is answered, through both processes.
        async def plain(i: int, team: str) -> None:
            done = await sdk(i, team).chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"question {i}"}],
                extra_headers={"x-mock-completion-tokens": "7"},
            )
            assert done.usage is not None and done.usage.completion_tokens == 7
            charged[team] += 7

        await asyncio.gather(*(plain(i, team) for team in teams for i in range(4)))

        # 2. Cache hits for every team: stored through one replica, hit through the other
        # (which never saw it: the entry came from the cluster). Rounds go on until the
        # entries sit on every primary (their hash tag is the request digest).
        rounds = 0
        while rounds < 8:
            for team in teams:
                messages = [{"role": "user", "content": f"cached {team} {rounds}"}]
                seen = []
                for replica in (rounds, rounds + 1):
                    raw = await sdk(replica, team).chat.completions.with_raw_response.create(
                        model=MODEL, messages=messages, temperature=0
                    )
                    seen.append(raw.headers["x-gateway-cache"])
                    done = raw.parse()
                    if seen[-1] != "hit":
                        assert done.usage is not None
                        charged[team] += done.usage.completion_tokens
                assert seen == ["miss", "hit"], (team, rounds)
            rounds += 1
            holders = {port for port in primaries if keys_on_node(port, entries)}
            if holders == primaries:
                break
        assert holders == primaries, "cache entries did not spread over the primaries"

        # 3. Single-flight across the two processes: per team, six identical streams, three
        # to each replica. The first to go upstream is held at the mock's gate until every
        # request is inside a gateway; then it is released, and the mock must have seen
        # one call per team.
        per_replica = 3

        async def streamed(i: int, team: str) -> tuple[str, str, int]:
            raw = await sdk(i, team).chat.completions.with_raw_response.create(
                model=MODEL,
                messages=[{"role": "user", "content": "one flight"}],
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"x-mock-gate": f"flight-{team}"},
            )
            text, used = [], 0
            async for chunk in raw.parse():
                text += [c.delta.content or "" for c in chunk.choices]
                used = chunk.usage.completion_tokens if chunk.usage else used
            return raw.headers["x-gateway-cache"], "".join(text), used

        gates = {team: upstream.gate(f"flight-{team}") for team in teams}
        flights = [
            asyncio.create_task(streamed(i, team)) for team in teams for i in range(2 * per_replica)
        ]
        try:
            for gate in gates.values():
                await asyncio.wait_for(gate.first_chunk_sent.wait(), timeout=30)

            async def all_inside() -> bool:
                inflight = [await metric(r, "gateway_inflight_requests") for r in replicas]
                return inflight == [per_replica * len(teams)] * 2

            await wait_until(all_inside, within_seconds=30)
        finally:
            for gate in gates.values():
                gate.release()
        flown = await asyncio.gather(*flights)
        for t, team in enumerate(teams):
            mine = flown[t * 2 * per_replica : (t + 1) * 2 * per_replica]
            calls = [
                r for r in upstream.requests if r.headers.get("x-mock-gate") == f"flight-{team}"
            ]
            assert len(calls) == 1, team
            assert sorted(h for h, _, _ in mine) == ["hit"] * 5 + ["miss"], team
            assert len({text for _, text, _ in mine}) == 1 and mine[0][1], team
            charged[team] += next(used for h, _, used in mine if h == "miss")

        # 4. Caps under concurrency across both processes: far more asked than is left.
        async def greedy(i: int, team: str) -> int:
            try:
                done = await sdk(i, team).chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"greedy {i}"}],
                    max_completion_tokens=300,
                    extra_headers={"x-mock-completion-tokens": "1000"},
                )
            except openai.RateLimitError:
                return 0
            assert done.usage is not None
            return done.usage.completion_tokens

        burst = 16
        assert all(LIMIT - charged[team] < burst * 300 for team in teams)
        got = await asyncio.gather(*(greedy(i, team) for team in teams for i in range(burst)))
        for t, team in enumerate(teams):
            charged[team] += sum(got[t * burst : (t + 1) * burst])
            assert LIMIT - MIN_OUTPUT <= charged[team] <= LIMIT, team
            assert await counters(cluster_client, prefix, team) == (charged[team], 0), team

        # 5. `gateway usage` reads every team's counters, whichever node holds them.
        table = await asyncio.to_thread(gateway_cli, config, tmp_path, "usage")
        assert {team: usage_table(table)[team] for team in teams} == dict(charged)

        # 6. `gateway cache purge`: one team's entries, then all, on every node.
        stored = {port: keys_on_node(port, entries) for port in primaries}
        first = f":cache:v1:team:{teams[0]}:"
        of_first = sum(1 for found in stored.values() for key in found if first in key)
        assert of_first == rounds + 1
        out = await asyncio.to_thread(
            gateway_cli, config, tmp_path, "cache", "purge", "--team", teams[0]
        )
        assert f"removed {of_first} cache entries of team {teams[0]}" in out
        total = sum(len(found) for found in stored.values())
        out = await asyncio.to_thread(gateway_cli, config, tmp_path, "cache", "purge")
        assert f"removed {total - of_first} cache entries" in out
        assert all(keys_on_node(port, entries) == [] for port in primaries)


# --- Traffic while a node goes away -----------------------------------------------------------


@dataclass
class Traffic:
    """What the clients of a steady stream of metered requests got, per team."""

    served: Counter[str] = field(default_factory=Counter)  # completion tokens received
    answered: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)  # 503 quota store unavailable
    unexpected: list[str] = field(default_factory=list)

    def snapshot(self) -> Counter[str]:
        return Counter(self.answered)


async def steady_traffic(
    sdk: Clients, teams: list[str], traffic: Traffic, stop: asyncio.Event, bound_seconds: float
) -> None:
    """One request at a time per team, alternating replicas, until ``stop`` (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_seconds

    async def worker(team: str) -> None:
        i = 0
        while not stop.is_set() and loop.time() < deadline:
            i += 1
            try:
                done = await sdk(i, team).chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"steady {i}"}],
                    max_completion_tokens=50,
                    extra_headers={"x-mock-completion-tokens": "5"},
                )
            except openai.APIStatusError as exc:
                if exc.status_code == 503 and "Quota store unavailable" in exc.message:
                    traffic.refused[team] += 1
                    # Pacing, not synchronisation: refusals come back at once, and a tight
                    # loop of them would take the CPU the restarting node needs.
                    await asyncio.sleep(0.02)
                else:
                    traffic.unexpected.append(f"{team}: {exc!r}")
                continue
            except openai.APIError as exc:
                traffic.unexpected.append(f"{team}: {exc!r}")
                continue
            assert done.usage is not None
            traffic.served[team] += done.usage.completion_tokens
            traffic.answered[team] += 1

    await asyncio.gather(*(worker(team) for team in teams))


async def until_answered(traffic: Traffic, teams: list[str], more: int, within: float) -> None:
    """Wait until each of ``teams`` got ``more`` answers beyond what it had."""
    start = traffic.snapshot()

    async def enough() -> bool:
        return all(traffic.answered[t] - start[t] >= more for t in teams)

    await wait_until(enough, within_seconds=within)


@pytest.mark.parametrize("on_error", ["closed", "local"])
async def test_a_node_killed_and_restarted_under_traffic_loses_no_counter(
    upstream: MockUpstream,
    cluster: ClusterProcess,
    cluster_client: RedisCluster,
    tmp_path: Path,
    on_error: str,
) -> None:
    placement = spread_teams(cluster, 6)
    teams = list(placement)
    victim_port = sorted(set(placement.values()))[1]
    victim = next(n for n in cluster.nodes if n.port == victim_port)
    on_victim = [t for t, port in placement.items() if port == victim_port]
    # A reserve that ran on the node just before it died never got its reply back: the
    # request was refused (or metered locally), and its reservation is held until its hold
    # (total timeout + grace) ends. Short holds here, so the test sees them end.
    config = pair_config(
        upstream, cluster, teams, on_error=on_error, limit=STEADY_LIMIT, total_timeout_seconds=10
    )
    config["store"]["reservation_grace_seconds"] = 0.5
    prefix = config["store"]["key_prefix"]
    traffic, stop = Traffic(), asyncio.Event()

    async with two_replicas(config, tmp_path) as replicas, clients_of(replicas) as sdk:
        running = asyncio.create_task(steady_traffic(sdk, teams, traffic, stop, 120))
        try:
            await until_answered(traffic, teams, 3, within=30)
            before_kill = Counter(traffic.served)
            victim.kill()  # SIGKILL: nothing flushed on the way out, only what AOF fsynced

            async def outage_seen() -> bool:
                if on_error == "closed":
                    return any(traffic.refused[t] for t in on_victim)
                fallbacks = await metric_sum(
                    replicas, "gateway_store_fallbacks_total", mode="local"
                )
                return fallbacks > 0

            await wait_until(outage_seen, within_seconds=30)
            victim.start()
            await asyncio.to_thread(cluster.wait_until_ok)
            await until_answered(traffic, teams, 3, within=60)
        finally:
            stop.set()
            await running

        assert traffic.unexpected == []
        if on_error == "local":
            assert not traffic.refused  # answered throughout, metered by each replica's memory
        else:  # refused while the node was away, never metered on the side
            assert any(traffic.refused[t] for t in on_victim)
            assert await metric_sum(replicas, "gateway_store_fallbacks_total", mode="local") == 0

        # Settlements that failed during the outage are retried in the background and land
        # once the node is back; then Redis holds what the clients were served.
        async def settled() -> bool:
            used = [(await counters(cluster_client, prefix, t))[0] for t in teams]
            if on_error == "closed":
                return used == [traffic.served[t] for t in teams]
            # Local mode meters the outage in memory and does not merge it back: Redis holds
            # at least everything served before the kill and never more than was served.
            return all(
                before_kill[t] <= u <= traffic.served[t] for t, u in zip(teams, used, strict=True)
            )

        try:
            await wait_until(settled, within_seconds=60)
        except AssertionError:
            found = {t: await counters(cluster_client, prefix, t) for t in teams}
            raise AssertionError(f"redis {found} served {dict(traffic.served)}") from None

        parsed = parse_config(config, source="<test>", env={})

        async def nothing_held() -> bool:  # peeking purges the reservations whose hold ended
            rows = await _usage_rows(parsed, teams)
            reserved = 7  # (team, user, metric, window, models, limit, used, reserved, ...)
            return rows is not None and all(row[reserved] == 0 for row in rows)

        try:
            await wait_until(nothing_held, within_seconds=40)
        except AssertionError:
            raise AssertionError(f"still held: {await _usage_rows(parsed, teams)}") from None
        # The node came back with its data (and its marker): no state loss was reported.
        assert await metric_sum(replicas, "gateway_quota_state_resets_total") == 0


async def test_a_flushed_primary_that_is_not_the_first_is_noticed(
    upstream: MockUpstream, cluster: ClusterProcess, tmp_path: Path
) -> None:
    placement = spread_teams(cluster, 3)
    teams = list(placement)
    config = pair_config(upstream, cluster, teams, limit=STEADY_LIMIT)
    prefix = config["store"]["key_prefix"]
    markers = keys.state_marker(prefix) + "*"
    primaries = sorted(set(cluster.slot_ranges()))
    # Neither the first node nor the one that would hold a single untagged marker: a marker in
    # one slot would not see this node lose its data.
    single = primary_of(cluster, keys.state_marker(prefix))
    flushed = next(p for p in primaries if p not in (cluster.nodes[0].port, single))
    traffic, stop = Traffic(), asyncio.Event()

    async with two_replicas(config, tmp_path) as replicas, clients_of(replicas) as sdk:

        async def one_marker_per_primary() -> bool:
            return all(len(keys_on_node(port, markers)) == 1 for port in primaries)

        await wait_until(one_marker_per_primary, within_seconds=10)
        running = asyncio.create_task(steady_traffic(sdk, teams, traffic, stop, 60))
        try:
            await until_answered(traffic, teams, 3, within=30)
            assert await metric_sum(replicas, "gateway_quota_state_resets_total") == 0
            with redis.Redis(port=flushed) as node:
                node.flushall()

            async def noticed() -> bool:
                return await metric_sum(replicas, "gateway_quota_state_resets_total") == 1

            await wait_until(noticed, within_seconds=30)
            await wait_until(one_marker_per_primary, within_seconds=10)  # written again
            await until_answered(traffic, teams, 3, within=30)
        finally:
            stop.set()
            await running
        assert traffic.unexpected == [] and not traffic.refused
        # One flush is one loss: the other replica found the marker already written again.
        assert await metric_sum(replicas, "gateway_quota_state_resets_total") == 1
