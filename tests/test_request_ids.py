"""Every response the gateway produces carries ``x-request-id`` and ``x-gateway-request-id``;
a proxied response keeps the upstream's ``x-request-id``."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from gateway.app import create_metrics_app
from tests.support.gateway_proc import RunningGateway, token

METRICS_TOKEN = "metrics-token-for-request-id-tests"


def assert_gateway_ids(resp: aiohttp.ClientResponse) -> str:
    ours = resp.headers["x-gateway-request-id"]
    assert ours.startswith("gw-"), (resp.url, dict(resp.headers))
    assert resp.headers["x-request-id"] == ours, (resp.url, dict(resp.headers))
    return ours


async def test_the_gateways_own_responses_carry_its_request_id(make_gateway) -> None:
    gw: RunningGateway = await make_gateway(metrics={"bearer_token": METRICS_TOKEN})
    calls = [
        ("GET", gw.root + "/healthz", None, 200),
        ("GET", gw.root + "/readyz", None, 200),
        ("GET", gw.url + "/gateway/usage", token("ml"), 200),
        ("GET", gw.root + "/gateway/usage", None, 401),
        ("GET", gw.root + "/metrics", METRICS_TOKEN, 200),
        ("GET", gw.root + "/metrics", None, 401),
        ("GET", gw.url + "/models", None, 401),
        ("GET", gw.url + "/models", token("off"), 401),
        ("POST", gw.url + "/chat/completions", token("ml"), 400),
        ("TRACE", gw.url + "/models", token("ml"), 405),
    ]
    seen: set[str] = set()
    async with aiohttp.ClientSession() as s:
        for method, url, auth, status in calls:
            headers = {"Authorization": f"Bearer {auth}"} if auth else {}
            async with s.request(method, url, headers=headers, data=b"{") as resp:
                assert resp.status == status, (method, url, resp.status)
                seen.add(assert_gateway_ids(resp))
    assert len(seen) == len(calls)  # one id per response


async def test_a_proxied_response_keeps_the_upstreams_id(gateway: RunningGateway) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.get(gateway.url + "/models", headers={"Authorization": f"Bearer {token()}"}) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["x-request-id"].startswith("req_")  # the mock upstream's
        assert resp.headers["x-gateway-request-id"].startswith("gw-")


async def test_the_separate_metrics_port_sets_ids_too(make_gateway) -> None:
    gw: RunningGateway = await make_gateway(metrics={"port": 0})
    runner = web.AppRunner(create_metrics_app(gw.runner.app), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            assert resp.status == 200
            assert_gateway_ids(resp)
    finally:
        await runner.cleanup()
