"""Helpers for tests of background responses and batches through the gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from gateway.app import RECONCILER
from gateway.state import STATE
from tests.support.gateway_proc import RunningGateway, token


async def usage(gw: RunningGateway, team: str = "ml") -> dict[str, dict[str, Any]]:
    """The team's rules by metric, as ``GET /v1/gateway/usage`` reports them."""
    async with (
        aiohttp.ClientSession() as s,
        s.get(gw.url + "/gateway/usage", headers={"Authorization": f"Bearer {token(team)}"}) as r,
    ):
        body = await r.json()
    return {rule["metric"]: rule for rule in body["rules"]}


async def open_jobs(gw: RunningGateway, team: str = "ml") -> int:
    return len(await gw.runner.app[STATE].quotas.store.open_jobs(team))


async def reconcile_until_settled(*gateways: RunningGateway, team: str = "ml") -> int:
    """Run the gateways' reconcilers (one pass each, in turn) until the team has no open job;
    returns how many these passes settled (a replica's own loop may settle some too).

    The mock finishes jobs by its clock, so this polls with a deadline, like a client would.
    """
    settled = 0
    deadline = time.monotonic() + 30
    while True:
        for gw in gateways:
            settled += await gw.runner.app[RECONCILER].poll()
        left = await open_jobs(gateways[0], team)
        if not left:
            return settled
        assert time.monotonic() < deadline, f"{left} jobs still open"
        await asyncio.sleep(0.02)


async def eventually(probe: Callable[[], Awaitable[bool]], what: str, within: float = 30) -> None:
    """Wait, bounded, for something the gateway does after the client has its answer (a
    settlement that follows the end of a stream, a job opened once the client left)."""
    deadline = time.monotonic() + within
    while not await probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def nothing_reserved(gw: RunningGateway, team: str = "ml") -> bool:
    return all(rule["reserved"] == 0 for rule in (await usage(gw, team)).values())


def sample(gw: RunningGateway, name: str, labels: dict[str, str] | None = None) -> float:
    """A metric sample of the gateway's registry (0 when it was never set)."""
    value = gw.runner.app[STATE].metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value
