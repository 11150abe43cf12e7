"""Operations on a real gateway process: hot reload and graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from pathlib import Path

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis

from gateway.mock import MockUpstream
from tests.support.gateway_proc import base_config, token
from tests.support.gateway_subprocess import GatewayProcess
from tests.support.redis_proc import RedisProcess
from tests.test_quota_gateway import MESSAGES, wait_until

pytestmark = pytest.mark.slow


async def status_of(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        return resp.status


async def test_reload_applies_valid_files_and_keeps_the_old_on_errors(
    upstream: MockUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    prefix = "l" + uuid.uuid4().hex[:8]
    config = base_config(
        upstream.url,
        store={"redis_url": redis_server.url, "key_prefix": prefix},
        server={"config_poll_seconds": 0.1},
        teams={"ml": {"quotas": [{"metric": "requests", "limit": 2, "window": "day"}]}},
    )
    gw = GatewayProcess(config, tmp_path)
    try:
        await gw.start()
        client = openai.AsyncOpenAI(base_url=gw.url, api_key=token(), max_retries=0)
        for _ in range(2):
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

        # A broken file is refused; the old config (and its counters) stay in force.
        gw.config_path.write_text("teams: [this is not valid")
        await wait_until(lambda: _log_has(gw, "config reload rejected"))
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

        # Raising the limit takes effect without a restart and without resetting usage.
        config["teams"]["ml"]["quotas"][0]["limit"] = 3
        gw.config_path.write_text(
            json.dumps({**config, "server": {**config["server"], "port": gw.port}})
        )
        await wait_until(lambda: _log_has(gw, "config reloaded"))
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

        # SIGHUP reloads on demand: a team disabled in the file is locked out at once.
        config["teams"]["ml"]["enabled"] = False
        config["server"]["config_poll_seconds"] = 0
        gw.config_path.write_text(
            json.dumps({**config, "server": {**config["server"], "port": gw.port}})
        )
        assert gw.process is not None
        gw.process.send_signal(signal.SIGHUP)

        async def locked_out() -> bool:
            try:
                await client.models.list()
            except openai.AuthenticationError:
                return True
            return False

        await wait_until(locked_out)
    finally:
        gw.stop()


async def _log_has(gw: GatewayProcess, text: str) -> bool:
    return text in gw.log()


async def test_sigterm_drains_streams_settles_and_exits_zero(
    upstream: MockUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    prefix = "d" + uuid.uuid4().hex[:8]
    config = base_config(
        upstream.url,
        store={"redis_url": redis_server.url, "key_prefix": prefix},
        server={"shutdown_grace_seconds": 10, "shutdown_delay_seconds": 0.3},
        teams={
            "ml": {"quotas": [{"metric": "completion_tokens", "limit": 10_000, "window": "day"}]}
        },
    )
    gw = GatewayProcess(config, tmp_path)
    check = aioredis.Redis.from_url(redis_server.url)
    body = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "stream": True,
        "max_completion_tokens": 100,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {token()}", "x-mock-gate": "drain"}
    try:
        await gw.start()
        gate = upstream.gate("drain")
        async with aiohttp.ClientSession() as s:
            streams = [
                await s.post(gw.url + "/chat/completions", json=body, headers=headers)
                for _ in range(20)
            ]
            for resp in streams:
                first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=5)
                assert first.startswith(b"data: ")
            assert gw.process is not None
            gw.process.send_signal(signal.SIGTERM)

            async def unready() -> bool:
                return await status_of(f"http://127.0.0.1:{gw.port}/readyz") == 503

            await wait_until(unready)  # unready at once, while the streams are still open

            async def refusing() -> bool:
                try:
                    async with aiohttp.ClientSession() as fresh:
                        await status_of_with(fresh, f"http://127.0.0.1:{gw.port}/healthz")
                except aiohttp.ClientConnectionError:
                    return True
                return False

            await wait_until(refusing)  # the listener is closed: new connections are refused
            gate.release()
            bodies = [await asyncio.wait_for(resp.content.read(), timeout=10) for resp in streams]
        for rest in bodies:
            assert rest.endswith(b"data: [DONE]\n\n") and b'"completion_tokens":12' in rest
        assert await asyncio.to_thread(gw.terminate, 20) == 0
        values = [
            await check.hgetall(k) async for k in check.scan_iter(match=f"{prefix}:{{ml}}:q:*")
        ]
        assert sum(int(v.get(b"used", 0)) for v in values) == 20 * 12
        assert sum(int(v.get(b"reserved", 0)) for v in values) == 0
    finally:
        gw.stop()
        await check.aclose()


async def status_of_with(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as resp:
        return resp.status


async def test_reload_under_traffic_fails_no_request(
    upstream: MockUpstream, redis_server: RedisProcess, tmp_path: Path
) -> None:
    prefix = "u" + uuid.uuid4().hex[:8]
    config = base_config(
        upstream.url,
        store={"redis_url": redis_server.url, "key_prefix": prefix},
        server={"config_poll_seconds": 0.05},
        teams={"ml": {"quotas": [{"metric": "requests", "limit": 100_000, "window": "day"}]}},
    )
    gw = GatewayProcess(config, tmp_path)
    try:
        await gw.start()
        client = openai.AsyncOpenAI(base_url=gw.url, api_key=token(), max_retries=0)
        stop = asyncio.Event()
        done: list[int] = []

        async def traffic() -> None:
            while not stop.is_set():
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
                done.append(1)

        workers = [asyncio.create_task(traffic()) for _ in range(4)]
        for limit in (50_000, 70_000, 90_000):
            config["teams"]["ml"]["quotas"][0]["limit"] = limit
            gw.config_path.write_text(
                json.dumps({**config, "server": {**config["server"], "port": gw.port}})
            )

            async def applied(limit: int = limit) -> bool:
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(
                        gw.url + "/gateway/usage", headers={"Authorization": f"Bearer {token()}"}
                    ) as r,
                ):
                    return bool((await r.json())["rules"][0]["limit"] == limit)

            await wait_until(applied)
        stop.set()
        await asyncio.gather(*workers)  # any failed request would raise here
        async with (
            aiohttp.ClientSession() as s,
            s.get(gw.url + "/gateway/usage", headers={"Authorization": f"Bearer {token()}"}) as r,
        ):
            rule = (await r.json())["rules"][0]
        assert rule["limit"] == 90_000 and rule["used"] == len(done) > 0  # counters kept
    finally:
        gw.stop()
