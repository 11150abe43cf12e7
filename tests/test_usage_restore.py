"""`gateway usage restore`: the access log's settled usage back into the current windows, after
the quota Redis lost its data. Real redis-server processes (standalone and Cluster), a real
`gateway serve` process writing the log, the official openai SDK."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis

from gateway.config import GatewayConfig, QuotaRule
from gateway.config_loader import parse_config
from gateway.mock import MockUpstream
from gateway.pipeline.exchange import new_request_id
from gateway.quota.service import QuotaService
from gateway.quota.store import keys
from gateway.quota.store.keys import state_marker
from gateway.quota.windows import window_at
from gateway.storage.client import connect
from gateway.stores import build_quota_store
from gateway.usage_restore.replay import (
    LoggedRequest,
    UsageRestorer,
    charged_amount,
    parse_line,
    restore,
    split_request_id,
)
from tests.support.gateway_proc import base_config, token
from tests.support.gateway_subprocess import ROOT, GatewayProcess
from tests.support.redis_proc import RedisProcess, free_port, start_or_skip
from tests.support.redis_topology import ClusterProcess
from tests.test_quota_gateway import wait_until
from tests.test_redis_cluster import spread_teams

# A fixed "now" (mid-day, mid-hour) for the tests that choose their lines' times.
NOW = dt.datetime(2031, 3, 15, 12, 30, tzinfo=dt.UTC).timestamp()
PROCESS = "gw-0123456789ab"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of this test alone: the tests FLUSHALL it."""
    proc = RedisProcess(port=free_port(), workdir=tmp_path)
    start_or_skip(proc)
    yield proc
    proc.stop()


@pytest.fixture
async def redis_client(own_redis: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(own_redis.url)
    yield client
    await client.aclose()


def iso(ts: float) -> str:
    moment = dt.datetime.fromtimestamp(ts, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def access_line(
    sequence: int,
    team: str,
    ended: float,
    *,
    model: str = "gpt-4o-mini",
    prompt: int | None = 10,
    completion: int | None = 20,
    reasoning: int = 0,
    duration_ms: float = 100.0,
    process: str = PROCESS,
    **extra: Any,
) -> str:
    """An access line as `gateway serve` writes it (see gateway/pipeline/exchange.py)."""
    fields: dict[str, Any] = {
        "ts": iso(ended),
        "level": "info",
        "logger": "gateway.access",
        "msg": "request",
        "request_id": f"{process}{sequence:012x}",
        "upstream_request_id": "req_1",
        "team": team,
        "method": "POST",
        "path": "/v1/chat/completions",
        "endpoint": "chat_completions",
        "model": model,
        "stream": False,
        "status": 200,
        "outcome": "ok",
        "cache": "miss",
        "prompt_tokens": prompt,
        "cached_prompt_tokens": None if prompt is None else 0,
        "completion_tokens": completion,
        "reasoning_tokens": None if completion is None else reasoning,
        "upstream_ms": 50.0,
        "duration_ms": duration_ms,
        "reserved_output": 256,
    }
    fields.update(extra)
    return json.dumps({k: v for k, v in fields.items() if v is not ...})


# USD per 1M tokens; the cost rule counts the chat models (embeddings stay unpriced).
PRICES = {
    "gpt-4o-mini": {"input": 0.15, "cached_input": 0.075, "output": 0.60},
    "o3-mini": {"input": 1.10, "cached_input": 0.55, "output": 4.40},
}
COST_RULE = {"metric": "cost_usd", "limit": 50, "window": "month", "models": ["gpt-4o-mini", "o3*"]}
USER_RULES = [
    {"metric": "requests", "limit": 500, "window": "day"},
    {"metric": "completion_tokens", "limit": 90_000, "window": "month"},
]

RULES = [
    {"metric": "completion_tokens", "limit": 100_000, "window": "hour"},
    {"metric": "completion_tokens", "limit": 500_000, "window": "day"},
    {"metric": "total_tokens", "limit": 900_000, "window": "day"},
    {"metric": "requests", "limit": 1000, "window": "day"},
    {"metric": "reasoning_tokens", "limit": 100_000, "window": "day", "models": ["o3*"]},
]


def restore_config(url: str, teams: list[str]) -> GatewayConfig:
    data = base_config(
        "http://127.0.0.1:9",
        store={"redis_url": url, "key_prefix": "r" + uuid.uuid4().hex[:8]},
        teams={team: {"models": ["*"], "quotas": RULES} for team in teams},
        models=[{"match": ["o3*"], "reasoning": True}],
    )
    return parse_config(data, source="<test>", env={})


async def used(config: GatewayConfig, team: str, now: float = NOW) -> dict[str, int]:
    """`{metric:window[:models]: used}` as `gateway usage` reads it, at ``now``."""
    store = await build_quota_store(config)
    service = QuotaService(store, on_error="closed", hold_seconds=0, clock=lambda: now)
    try:
        rows = await service.usage(team, config.quota_rules(team))
    finally:
        await store.close()
    return {_name(row.rule): row.used for row in rows}


def _name(rule: QuotaRule) -> str:
    return ":".join([rule.metric, rule.window, *(rule.models or [])])


# --- reading the log ------------------------------------------------------------------------------


def test_request_ids_of_one_process_share_a_prefix_and_count_up() -> None:
    first, second = split_request_id(new_request_id()), split_request_id(new_request_id())
    assert first[0] == second[0] and first[0].startswith("gw-")
    assert second[1] == first[1] + 1
    assert split_request_id("not-a-gateway-id") == ("not-a-gateway-id", 0)


def test_lines_that_charged_nothing_or_say_nothing_are_told_apart() -> None:
    assert parse_line("not json") == "other"
    assert parse_line(json.dumps({"logger": "gateway", "msg": "listening"})) == "other"
    assert parse_line(access_line(1, "ml", NOW, reserved_output=...)) == "uncharged"
    upstream_error = access_line(2, "ml", NOW, prompt=None, completion=None, status=502)
    assert parse_line(upstream_error) == "no_usage"
    request = parse_line(access_line(3, "ml", NOW, duration_ms=2500.0))
    assert isinstance(request, LoggedRequest)
    assert request.ended == pytest.approx(NOW)
    assert request.started == pytest.approx(NOW - 2.5)  # admitted when it started


def test_charged_amounts_follow_the_settlement() -> None:
    config = restore_config("redis://127.0.0.1:9/0", ["ml"])
    plain, reasoning = config.model_profile("gpt-4o-mini"), config.model_profile("o3-mini")
    settled = parse_line(access_line(1, "ml", NOW, prompt=30, completion=50, reasoning=20))
    assert isinstance(settled, LoggedRequest)
    expected = {
        "prompt_tokens": 30,
        "completion_tokens": 50,
        "reasoning_tokens": 20,
        "total_tokens": 80,
        "requests": 1,
    }
    for metric, amount in expected.items():
        assert charged_amount(metric, settled, plain) == amount, metric
    # A client that left early: the bound the gateway charged, less the unlogged prompt estimate.
    stopped = parse_line(
        access_line(2, "ml", NOW, prompt=None, completion=None, early_stop_output=44)
    )
    assert isinstance(stopped, LoggedRequest)
    assert charged_amount("completion_tokens", stopped, plain) == 44
    assert charged_amount("total_tokens", stopped, plain) == 44
    assert charged_amount("requests", stopped, plain) == 1
    assert charged_amount("prompt_tokens", stopped, plain) == 0
    assert charged_amount("reasoning_tokens", stopped, plain) == 0
    assert charged_amount("reasoning_tokens", stopped, reasoning) == 44
    # Cost rules get the cost the gateway logged (nano-dollars), usage or early stop alike.
    priced = parse_line(access_line(3, "ml", NOW, cost_usd=0.000123456, user="alice"))
    assert isinstance(priced, LoggedRequest) and priced.user == "alice"
    assert charged_amount("cost_usd", priced, plain) == 123_456
    assert charged_amount("cost_usd", settled, plain) == 0  # an unpriced model cost nothing


# --- windows, cutoff, dry run and idempotency on a real Redis ----------------------------------


async def test_only_current_windows_before_the_cutoff_get_usage_and_only_once(
    own_redis: RedisProcess, redis_client: aioredis.Redis
) -> None:
    config = restore_config(own_redis.url, ["ml", "web"])
    hour = window_at("hour", NOW)
    lines = [
        access_line(1, "ml", hour.start + 60, completion=20),  # this hour
        access_line(2, "ml", hour.start - 3600, completion=300),  # an earlier hour, same day
        access_line(3, "ml", NOW - 86_400, completion=4000),  # yesterday: nothing current
        access_line(4, "ml", NOW - 60, completion=50_000),  # after the cutoff
        access_line(1, "ml", hour.start + 60, completion=20),  # the same line again
        access_line(5, "ml", hour.start + 90, cache="hit", reserved_output=...),  # not charged
        access_line(6, "ml", hour.start + 95, prompt=None, completion=None, status=502),
        access_line(7, "ml", hour.start + 120, model="o3-mini", completion=40, reasoning=30),
        access_line(8, "ml", hour.start + 130, prompt=None, completion=None, early_stop_output=9),
        access_line(9, "web", hour.start + 200, completion=5),
        access_line(10, "gone", hour.start + 210, completion=5),  # a team no longer configured
        "not an access line",
    ]
    until = NOW - 120

    dry = await restore(config, lines, now=NOW, until=until, dry_run=True)
    assert await redis_client.dbsize() == 0  # a dry run writes nothing
    assert dry.requests == 5
    assert dict(dry.skipped) == {
        "past_window": 1,
        "after_cutoff": 1,
        "duplicate": 1,
        "uncharged": 1,
        "no_usage": 1,
        "unknown_team": 1,
        "other": 1,
    }

    report = await restore(config, lines, now=NOW, until=until)
    assert {name: t.amount for name, t in _by_rule(report).items()} == {
        name: t.amount for name, t in _by_rule(dry).items()
    }
    ml = await used(config, "ml")
    assert ml == {
        "completion_tokens:hour": 20 + 40 + 9,
        "completion_tokens:day": 20 + 300 + 40 + 9,
        "total_tokens:day": (10 + 20) + (10 + 300) + (10 + 40) + 9,
        "requests:day": 4,
        "reasoning_tokens:day:o3*": 30,
    }
    assert (await used(config, "web"))["completion_tokens:day"] == 5

    # Running it again adds nothing; a line newer than the restored ones is added once.
    again = await restore(config, lines, now=NOW, until=until)
    assert sum(t.amount for t in again.windows.values()) == 0
    assert sum(t.already for t in again.windows.values()) > 0
    assert await used(config, "ml") == ml
    newer = [*lines, access_line(11, "ml", hour.start + 300, completion=7)]
    await restore(config, newer, now=NOW, until=until)
    await restore(config, newer, now=NOW, until=until)
    assert (await used(config, "ml"))["completion_tokens:hour"] == ml["completion_tokens:hour"] + 7

    # Restore keys share the team's hash tag and expire with the counters.
    prefix = config.store.key_prefix
    restored = [k async for k in redis_client.scan_iter(match=f"{prefix}:*:restored:*")]
    assert restored and all(k.decode().startswith(f"{prefix}:{{") for k in restored)
    for key in restored:
        counter = key.replace(b":restored:", b":q:")
        assert abs(await redis_client.ttl(key) - await redis_client.ttl(counter)) <= 1
        assert await redis_client.ttl(key) > 0


def _by_rule(report: Any) -> dict[str, Any]:
    return {f"{t.owner.name}:{_name(t.rule)}": t for t in report.windows.values()}


async def test_cost_rules_and_each_users_rules_get_their_share(own_redis: RedisProcess) -> None:
    data = base_config(
        "http://127.0.0.1:9",
        store={"redis_url": own_redis.url, "key_prefix": "r" + uuid.uuid4().hex[:8]},
        teams={
            "ml": {
                "models": ["*"],
                "quotas": [{"metric": "cost_usd", "limit": 5, "window": "day"}],
                "user_quotas": [
                    {"metric": "requests", "limit": 100, "window": "day"},
                    {"metric": "completion_tokens", "limit": 9000, "window": "hour"},
                ],
            }
        },
    )
    config = parse_config(data, source="<test>", env={})
    hour = window_at("hour", NOW)
    lines = [
        access_line(1, "ml", hour.start + 10, completion=20, cost_usd=0.25, user="alice"),
        access_line(2, "ml", hour.start + 20, completion=30, cost_usd=0.5, user="alice"),
        access_line(3, "ml", hour.start + 30, completion=40, cost_usd=1.0, user="bob"),
        access_line(4, "ml", hour.start - 60, completion=50, cost_usd=2.0, user="bob"),
    ]
    await restore(config, lines, now=NOW, until=NOW)
    await restore(config, lines, now=NOW, until=NOW)
    store = await build_quota_store(config)
    service = QuotaService(store, on_error="closed", hold_seconds=0, clock=lambda: NOW)
    try:
        (team,) = await service.usage("ml", config.quota_rules("ml"))
        per_user = {
            user: [
                u.used for u in await service.usage("ml", config.user_quota_rules("ml"), user=user)
            ]
            for user in ("alice", "bob")
        }
    finally:
        await store.close()
    assert team.used == 3_750_000_000  # $3.75 in nano-dollars
    assert per_user == {"alice": [2, 50], "bob": [2, 40]}


async def test_the_default_cutoff_is_the_quota_state_marker(
    own_redis: RedisProcess, redis_client: aioredis.Redis
) -> None:
    config = restore_config(own_redis.url, ["ml"])
    hour = window_at("hour", NOW)
    # The gateway found the Redis empty 10 minutes into the hour and wrote its marker then.
    await redis_client.set(state_marker(config.store.key_prefix), str(int(hour.start + 600)))
    lines = [
        access_line(1, "ml", hour.start + 300, completion=11),  # lost with the old state
        access_line(2, "ml", hour.start + 900, completion=500),  # settled into the new state
    ]
    report = await restore(config, lines, now=NOW, until=None)
    assert report.until == hour.start + 601
    assert report.skipped["after_cutoff"] == 1
    assert (await used(config, "ml"))["completion_tokens:hour"] == 11


async def test_two_restores_at_once_do_not_count_twice(own_redis: RedisProcess) -> None:
    config = restore_config(own_redis.url, ["ml"])
    lines = [access_line(1, "ml", window_at("hour", NOW).start + 5, completion=21)]
    client = await connect(own_redis.url, timeout_seconds=2)
    try:
        first, second = (UsageRestorer(client, config, now=NOW) for _ in range(2))
        planned = [await r.plan(lines, until=NOW) for r in (first, second)]
        await first.apply(planned[0])
        await second.apply(planned[1])  # planned before the first wrote: refused by the script
    finally:
        await client.connection_pool.disconnect()
    assert (planned[0].conflicts, planned[1].conflicts) == (0, 4)  # its 4 windows
    assert (await used(config, "ml"))["completion_tokens:hour"] == 21


async def test_restore_on_a_redis_cluster_reaches_every_node(
    redis_cluster: ClusterProcess,
) -> None:
    teams = spread_teams(redis_cluster, per_node=2)
    config = restore_config(redis_cluster.url, teams)
    hour = window_at("hour", NOW)
    lines = [
        access_line(i + 1, team, hour.start + 10 + i, completion=10 + i)
        for i, team in enumerate(teams)
    ]
    await restore(config, lines, now=NOW, until=NOW)
    await restore(config, lines, now=NOW, until=NOW)  # idempotent there too
    for i, team in enumerate(teams):
        assert (await used(config, team))["completion_tokens:hour"] == 10 + i, team
    assert keys.restore_marks("p", "t", "k").startswith(keys.team_prefix("p", "t"))


# --- end to end: a real gateway's log, FLUSHALL, the CLI ------------------------------------------


async def cli(*args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GATEWAY_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def access_lines(path: Path) -> list[dict[str, Any]]:
    found = []
    for text in path.read_text().splitlines():
        if text.startswith("{"):
            entry = json.loads(text)
            if entry.get("logger") == "gateway.access":
                found.append(entry)
    return found


async def test_flushall_then_restore_from_the_gateways_own_log_brings_usage_back(
    upstream: MockUpstream,
    own_redis: RedisProcess,
    redis_client: aioredis.Redis,
    tmp_path: Path,
) -> None:
    windows = [window_at(spec, dt.datetime.now(dt.UTC).timestamp()) for spec in ("day", "month")]
    month_rules = [
        {"metric": "total_tokens", "limit": 10_000_000, "window": "month"},
        {"metric": "requests", "limit": 10_000, "window": "day"},
    ]
    config = base_config(
        upstream.url,
        store={"redis_url": own_redis.url, "state_check_seconds": 0.2},
        teams={
            "ml": {
                "models": ["*"],
                "quotas": [*RULES[1:], *month_rules, COST_RULE],
                "user_quotas": USER_RULES,
            },
            "web": {"models": ["gpt-4o-mini"], "quotas": month_rules},
            "free": {"models": ["*"]},  # no rules: nothing reserved, nothing to restore
        },
        models=[{"match": ["o3*"], "reasoning": True}],
        pricing={"models": PRICES},
    )
    gw = GatewayProcess(config, tmp_path)
    await gw.start()
    try:
        sent = await _mixed_traffic(gw)

        async def all_logged() -> bool:
            return len(access_lines(gw.log_path)) == sent

        await wait_until(all_logged, within_seconds=20)
        views = [
            ["usage", "--config", str(gw.config_path)],
            *(
                ["usage", "--config", str(gw.config_path), "--team", "ml", "--user", user]
                for user in ("alice", "bob")
            ),
        ]

        async def usage_tables() -> list[str]:
            tables = []
            for view in views:
                code, table = await cli(*view)
                assert code == 0, table
                tables.append(table)
            return tables

        before = await usage_tables()
        assert "ml" in before[0] and "web" in before[0] and "cost_usd" in before[0]
        assert "alice" in before[1] and "bob" in before[2]
        (cost_row,) = [line.split() for line in before[0].splitlines() if "cost_usd" in line]
        assert float(cost_row[5]) > 0  # USED: the chats had a price

        await redis_client.flushall()

        async def loss_noticed() -> bool:
            # The gateway writes the marker again, then logs the loss.
            logged = "quota state lost" in gw.log_path.read_text()
            return logged and bool(await redis_client.exists(state_marker("gw")))

        await wait_until(loss_noticed, within_seconds=20)
        emptied = await usage_tables()
        assert all(e != b for e, b in zip(emptied, before, strict=True))

        restore_args = ["usage", "restore", "--config", str(gw.config_path)]
        code, dry = await cli(*restore_args, "--from", str(gw.log_path), "--dry-run")
        assert code == 0, dry
        assert "WOULD ADD" in dry and "dry run: nothing written" in dry
        assert await redis_client.dbsize() == 1  # the marker, nothing else
        assert await usage_tables() == emptied

        code, report = await cli(*restore_args, "--from", str(gw.log_path))
        assert code == 0, report
        # The cache hit and the uncapped team's request.
        assert "skipped 2: requests that reserved nothing" in report
        assert "ml user alice" in report and "ml user bob" in report
        assert await usage_tables() == before

        code, again = await cli(*restore_args, "--from", str(gw.log_path))
        assert code == 0, again
        assert await usage_tables() == before
    finally:
        gw.stop()
    now = dt.datetime.now(dt.UTC).timestamp()
    if [window_at(spec, now) for spec in ("day", "month")] != windows:
        pytest.skip("the test ran across a UTC day boundary; its windows changed under it")


async def _mixed_traffic(gw: GatewayProcess) -> int:
    """Chat (JSON and streamed), a reasoning model, embeddings, a cache hit, two more teams;
    returns how many requests were sent."""
    ml, bob, web, free = (
        openai.AsyncOpenAI(base_url=gw.url, api_key=token(team, user=user), max_retries=0)
        for team, user in (("ml", "alice"), ("ml", "bob"), ("web", None), ("free", None))
    )
    try:
        return await _send(ml, bob, web, free)
    finally:
        for client in (ml, bob, web, free):
            await client.close()


async def _send(
    ml: openai.AsyncOpenAI,
    bob: openai.AsyncOpenAI,
    web: openai.AsyncOpenAI,
    free: openai.AsyncOpenAI,
) -> int:
    messages = [{"role": "user", "content": "Colour of the sky?"}]
    burn = {"x-mock-completion-tokens": "7"}
    chats = [
        client.chat.completions.create(model="gpt-4o-mini", messages=messages, extra_headers=burn)
        for client in (ml, bob, bob)
    ]
    chats += [web.chat.completions.create(model="gpt-4o-mini", messages=messages) for _ in range(2)]
    chats.append(free.chat.completions.create(model="gpt-4o-mini", messages=messages))
    chats.append(
        ml.chat.completions.create(
            model="o3-mini",
            messages=messages,
            extra_headers={"x-mock-reasoning-tokens": "13", **burn},
        )
    )
    await asyncio.gather(*chats)
    stream = await ml.chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for _ in stream:
        pass
    for text in ("a", "b"):
        await ml.embeddings.create(model="text-embedding-3-small", input=[text, "c"])
    for _ in range(2):  # the second is a cache hit: not charged, not restored
        await ml.chat.completions.create(model="gpt-4o-mini", messages=messages, temperature=0)
    return 3 + 2 + 1 + 1 + 1 + 2 + 2
