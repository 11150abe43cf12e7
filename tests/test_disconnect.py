"""``cancel_on_disconnect`` on a real aiohttp server: a client that leaves ends the wait with
``ClientGone``; any other cancellation still propagates; a plain runner just runs the block."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from gateway.pipeline.disconnect import ClientGone, cancel_on_disconnect
from gateway.server import GatewayRunner


@dataclass
class Probe:
    """What the handler saw; the test drives it with events."""

    waiting: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    task: asyncio.Task[object] | None = None


async def _serve(probe: Probe, runner_class: type[web.AppRunner]) -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.Response:
        probe.task = asyncio.current_task()
        try:
            with cancel_on_disconnect(request):
                probe.waiting.set()
                await probe.release.wait()
        except ClientGone:
            probe.outcome.set_result("client_gone")
            raise
        except asyncio.CancelledError:
            probe.outcome.set_result("cancelled")
            raise
        probe.outcome.set_result("done")
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", handler)
    runner = runner_class(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_a_client_that_leaves_ends_the_wait(session: aiohttp.ClientSession) -> None:
    probe = Probe()
    runner, url = await _serve(probe, GatewayRunner)
    try:
        call = asyncio.ensure_future(session.post(url))
        await asyncio.wait_for(probe.waiting.wait(), timeout=5)
        call.cancel()  # the client gives up: its connection closes
        with contextlib.suppress(asyncio.CancelledError):
            await call
        assert await asyncio.wait_for(probe.outcome, timeout=5) == "client_gone"
    finally:
        await runner.cleanup()


async def test_another_cancellation_still_propagates(session: aiohttp.ClientSession) -> None:
    probe = Probe()
    runner, url = await _serve(probe, GatewayRunner)
    try:
        call = asyncio.ensure_future(session.post(url))
        await asyncio.wait_for(probe.waiting.wait(), timeout=5)
        assert probe.task is not None
        probe.task.cancel()  # as at shutdown: not the client's doing (POST: no client retry)
        assert await asyncio.wait_for(probe.outcome, timeout=5) == "cancelled"
        with contextlib.suppress(aiohttp.ClientError):
            await asyncio.wait_for(call, timeout=5)
    finally:
        await runner.cleanup()


async def test_the_block_just_runs_while_the_client_stays(session: aiohttp.ClientSession) -> None:
    for runner_class in (GatewayRunner, web.AppRunner):
        probe = Probe()
        runner, url = await _serve(probe, runner_class)
        try:
            call = asyncio.ensure_future(session.post(url))
            await asyncio.wait_for(probe.waiting.wait(), timeout=5)
            probe.release.set()
            async with await asyncio.wait_for(call, timeout=5) as resp:
                assert await resp.text() == "ok"
            assert probe.outcome.result() == "done"
        finally:
            await runner.cleanup()
