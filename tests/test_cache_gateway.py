"""The response cache through the gateway: official SDK, real mock upstream, real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis

from gateway.mock import MockUpstream
from gateway.state import STATE
from tests.support.gateway_proc import RunningGateway, base_config, token
from tests.support.gateway_subprocess import GatewayProcess
from tests.support.redis_proc import RedisProcess, free_port
from tests.test_quota_gateway import wait_until

MESSAGES = [{"role": "user", "content": "Colour of the sky?"}]


def sdk(gw: RunningGateway | GatewayProcess, team: str = "ml") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url, api_key=token(team), max_retries=0)


def chat_calls(upstream: MockUpstream) -> int:
    return sum(1 for r in upstream.requests if r.path.endswith("/chat/completions"))


@pytest.fixture
async def gw(make_gateway, redis_server: RedisProcess) -> RunningGateway:
    gateway: RunningGateway = await make_gateway(
        store={"redis_url": redis_server.url, "key_prefix": "c" + uuid.uuid4().hex[:8]},
        teams={
            "ml": {"quotas": [{"metric": "completion_tokens", "limit": 100_000, "window": "day"}]},
            "web": {},
            "pool1": {"cache": {"scope": "shared"}},
            "pool2": {"cache": {"scope": "shared"}},
        },
    )
    return gateway


async def test_second_identical_call_is_a_hit(gw: RunningGateway, upstream: MockUpstream) -> None:
    client = sdk(gw)
    first = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, temperature=0
    )
    second = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, temperature=0
    )
    assert chat_calls(upstream) == 1
    assert first.headers["x-gateway-cache"] == "miss" and second.headers["x-gateway-cache"] == "hit"
    assert int(second.headers["age"]) >= 0 and second.headers["x-request-id"].startswith("gw-")
    assert second.parse().model_dump() == first.parse().model_dump()


async def test_streamed_hit_replays_the_same_chunks_with_usage_as_asked(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    client = sdk(gw)

    async def chunks(**kw: Any) -> list[Any]:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, temperature=0, stream=True, **kw
        )
        return [c async for c in stream]

    live = await chunks()
    replayed = await chunks()
    with_usage = await chunks(stream_options={"include_usage": True})
    assert chat_calls(upstream) == 1  # include_usage only changes framing: same entry
    assert [c.model_dump() for c in replayed] == [c.model_dump() for c in live]
    assert all(c.usage is None and c.choices for c in replayed)
    assert with_usage[-1].choices == [] and with_usage[-1].usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in live)
    assert "".join(c.choices[0].delta.content or "" for c in with_usage if c.choices) == text


async def test_streamed_and_plain_are_separate_entries_and_responses_stream_replays(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    client = sdk(gw)
    await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, temperature=0)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, temperature=0, stream=True
    )
    async for _ in stream:
        pass
    assert chat_calls(upstream) == 2
    for _ in range(2):
        async with client.responses.stream(
            model="gpt-4o-mini", input="hi", temperature=0, store=False
        ) as events:
            final = await events.get_final_response()
        assert final.output_text
    assert sum(1 for r in upstream.requests if r.path.endswith("/responses")) == 1


async def test_embeddings_cache_per_encoding(gw: RunningGateway, upstream: MockUpstream) -> None:
    client = sdk(gw)
    for _ in range(2):
        b64 = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        flt = await client.embeddings.create(
            model="text-embedding-3-small", input=["a", "b"], encoding_format="float"
        )
        assert b64.data[0].embedding == pytest.approx(flt.data[0].embedding)
    assert sum(1 for r in upstream.requests if r.path.endswith("/embeddings")) == 2


@pytest.mark.parametrize(
    ("kwargs", "headers"),
    [
        ({"temperature": 1}, {}),
        ({}, {}),  # no temperature: OpenAI's default is 1
        ({"temperature": 0, "n": 2}, {}),
        ({"temperature": 0}, {"Cache-Control": "no-store"}),
        ({"temperature": 0}, {"x-mock-status": "500"}),
    ],
)
async def test_not_cached(
    gw: RunningGateway, upstream: MockUpstream, kwargs: dict[str, Any], headers: dict[str, str]
) -> None:
    client = sdk(gw)
    for _ in range(2):
        with contextlib.suppress(openai.InternalServerError):
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, extra_headers=headers, **kwargs
            )
    assert chat_calls(upstream) == 2


async def test_force_and_no_cache(gw: RunningGateway, upstream: MockUpstream) -> None:
    client = sdk(gw)
    force = {"x-gateway-cache": "force"}
    for _ in range(2):
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, temperature=0.7, extra_headers=force
        )
    assert chat_calls(upstream) == 1
    fresh = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        temperature=0,
        extra_headers={"Cache-Control": "no-cache"},
    )
    assert fresh.headers["x-gateway-cache"] == "bypass" and chat_calls(upstream) == 2
    again = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, temperature=0
    )
    assert (
        again.headers["x-gateway-cache"] == "hit" and chat_calls(upstream) == 2
    )  # no-cache still stored


async def test_cut_stream_is_not_stored(gw: RunningGateway, upstream: MockUpstream) -> None:
    client = sdk(gw)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        temperature=0,
        stream=True,
        extra_headers={"x-mock-drop-after-chunks": "3"},
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, temperature=0, stream=True
    )
    async for _ in stream:
        pass
    assert chat_calls(upstream) == 2


async def test_scope_is_the_team_unless_shared(gw: RunningGateway, upstream: MockUpstream) -> None:
    await sdk(gw, "ml").chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, temperature=0
    )
    await sdk(gw, "web").chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, temperature=0
    )
    assert chat_calls(upstream) == 2  # web never receives ml's entry
    await sdk(gw, "pool1").chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, temperature=0
    )
    await sdk(gw, "pool2").chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, temperature=0
    )
    assert chat_calls(upstream) == 3  # the two teams that agreed to share do


async def test_hits_are_not_charged(gw: RunningGateway, upstream: MockUpstream) -> None:
    client = sdk(gw)
    for _ in range(3):
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, temperature=0, max_completion_tokens=50
        )
    async with (
        aiohttp.ClientSession() as s,
        s.get(gw.url + "/gateway/usage", headers={"Authorization": f"Bearer {token()}"}) as r,
    ):
        rule = (await r.json())["rules"][0]
    assert rule["used"] == 12 and rule["reserved"] == 0  # one upstream call's worth


async def test_fifty_identical_concurrent_requests_make_one_upstream_call(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    client = sdk(gw)
    slow = {"x-mock-first-byte-delay-ms": "300"}
    results = await asyncio.gather(
        *(
            client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, temperature=0, extra_headers=slow
            )
            for _ in range(50)
        )
    )
    assert chat_calls(upstream) == 1
    assert len({r.model_dump_json() for r in results}) == 1


async def test_fifty_identical_requests_across_two_replicas(
    upstream: MockUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    config = base_config(
        upstream.url,
        store={"redis_url": redis_server.url, "key_prefix": "x" + uuid.uuid4().hex[:8]},
    )
    replicas = [GatewayProcess(config, tmp_path, f"r{i}") for i in range(2)]
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        clients = [sdk(r) for r in replicas]
        before = chat_calls(upstream)
        slow = {"x-mock-first-byte-delay-ms": "500"}
        results = await asyncio.gather(
            *(
                clients[i % 2].chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES, temperature=0, extra_headers=slow
                )
                for i in range(50)
            )
        )
        assert chat_calls(upstream) - before == 1
        assert len({r.choices[0].message.content for r in results}) == 1
    finally:
        for r in replicas:
            r.stop()


async def test_redis_outage_degrades_to_misses_and_recovers(
    make_gateway, upstream: MockUpstream, tmp_path: Path
) -> None:
    proc = RedisProcess(port=free_port(), workdir=tmp_path)
    proc.start()
    other = [{"role": "user", "content": "A question first asked while Redis is down"}]
    try:
        gateway = await make_gateway(store={"redis_url": proc.url, "timeout_seconds": 0.3})
        client = sdk(gateway)
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, temperature=0)
        proc.stop()
        # An entry this replica served recently is still answered from its memory ...
        r = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, temperature=0
        )
        assert r.headers["x-gateway-cache"] == "hit" and chat_calls(upstream) == 1
        # ... anything else is served straight from upstream, never failed (and kept in
        # memory meanwhile).
        r = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=other, temperature=0
        )
        assert r.headers["x-gateway-cache"] == "error" and chat_calls(upstream) == 2
        proc.start()  # empty again: new questions are stored there again
        third = [{"role": "user", "content": "A question asked after Redis came back"}]
        r = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=third, temperature=0
        )
        assert r.headers["x-gateway-cache"] == "miss" and chat_calls(upstream) == 3
        check = aioredis.Redis.from_url(proc.url)
        try:
            stored = [
                k async for k in check.scan_iter(match=f"{gateway.config.store.key_prefix}:cache:*")
            ]
            assert len(stored) == 1
        finally:
            await check.aclose()
    finally:
        proc.stop()


async def test_purge_cli_empties_one_team_or_all(
    gw: RunningGateway, upstream: MockUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    import json
    import subprocess
    import sys

    from tests.support.gateway_subprocess import ROOT

    for team in ("ml", "web"):
        await sdk(gw, team).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, temperature=0
        )
    config = tmp_path / "gw.yaml"
    config.write_text(
        json.dumps(
            base_config(
                upstream.url,
                store={"redis_url": redis_server.url, "key_prefix": gw.config.store.key_prefix},
            )
        )
    )

    def purge(*extra: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "cache", "purge", "--config", str(config), *extra],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    local = gw.runner.app[STATE].cache.local
    check = aioredis.Redis.from_url(redis_server.url)
    channel = f"{gw.config.store.key_prefix}:cache:v1:purged"

    async def listening() -> bool:
        return bool((await check.pubsub_numsub(channel))[0][1] >= 1)

    await wait_until(listening)
    await check.aclose()
    assert len(local) == 2
    assert "removed 1 cache entries of team ml" in await asyncio.to_thread(purge, "--team", "ml")

    async def forgotten() -> bool:  # the running gateway drops ml's entry from its memory too
        return len(local) == 1

    await wait_until(forgotten)
    await sdk(gw, "ml").chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, temperature=0
    )
    await sdk(gw, "web").chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, temperature=0
    )
    assert chat_calls(upstream) == 3  # ml's entry was gone, web's was not
    assert "removed 2 cache entries" in await asyncio.to_thread(purge)
