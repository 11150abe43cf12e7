from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.mock import MockUpstream, start_mock_upstream
from tests.support.gateway_proc import UPSTREAM_KEY, RunningGateway, base_config, start_gateway
from tests.support.redis_proc import RedisProcess, free_port, start_or_skip
from tests.support.redis_topology import ClusterProcess, SentinelSetup


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A real redis-server on a free port for the whole session (never the machine's own)."""
    proc = RedisProcess(port=free_port(), workdir=tmp_path_factory.mktemp("redis"))
    start_or_skip(proc)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    """A real 3-primary Redis Cluster on loopback for the whole session."""
    cluster = ClusterProcess(workdir=tmp_path_factory.mktemp("cluster"))
    start_or_skip(cluster)
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_sentinel(tmp_path: Any) -> Iterator[SentinelSetup]:
    """A real primary, replica and Sentinel; one per test, since tests fail it over."""
    setup = SentinelSetup(workdir=tmp_path / "sentinel")
    start_or_skip(setup)
    yield setup
    setup.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[MockUpstream]:
    mock = await start_mock_upstream(host="127.0.0.1", port=0, api_key=UPSTREAM_KEY)
    yield mock
    await mock.close()


GatewayFactory = Callable[..., Any]


@pytest.fixture
async def make_gateway(upstream: MockUpstream) -> AsyncIterator[GatewayFactory]:
    started: list[RunningGateway] = []

    async def factory(*, clock: Any = None, **sections: Any) -> RunningGateway:
        gw = await start_gateway(base_config(upstream.url, **sections), clock=clock)
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        await gw.close()


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> RunningGateway:
    gw: RunningGateway = await make_gateway()
    return gw


@pytest.fixture
async def redis_client(redis_server: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the test's redis-server, to read what the gateway wrote."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()
