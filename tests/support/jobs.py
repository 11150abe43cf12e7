"""Helpers for tests of background responses and batches through the gateway."""

from __future__ import annotations

import asyncio
import time
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
