"""Run the gateway app on a loopback port inside the test's event loop."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.app import create_app
from gateway.auth import mint_token
from gateway.config import GatewayConfig
from gateway.config_loader import parse_config
from gateway.server import GatewayRunner

JWT_SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz-0123456789-abcdef"
UPSTREAM_KEY = "sk-upstream-REAL-KEY-7f3a9c"


def base_config(upstream_url: str, **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "upstream": {"base_url": upstream_url, "api_key": UPSTREAM_KEY, "read_timeout_seconds": 10},
        "auth": {"algorithms": ["HS256"], "hs_secret": JWT_SECRET},
        "server": {"host": "127.0.0.1", "port": 0},
        "teams": {
            "ml": {"models": ["gpt-4o*", "gpt-5*", "o3*", "text-embedding-*", "gpt-image-*"]},
            "web": {"models": ["gpt-4o-mini"], "paths": ["/chat/completions", "/models*"]},
            "off": {"enabled": False},
        },
    }
    for key, value in sections.items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            merged = copy.deepcopy(data[key])
            merged.update(value)
            data[key] = merged
        else:
            data[key] = value
    return data


def token(team: str = "ml", *, ttl: float = 3600, secret: str = JWT_SECRET, **kw: Any) -> str:
    return mint_token(secret, team, ttl_seconds=ttl, **kw)


@dataclass
class RunningGateway:
    config: GatewayConfig
    runner: web.AppRunner
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    closed: bool = False

    async def close(self) -> None:
        if not self.closed:  # a test may stop a replica before the fixture does
            self.closed = True
            await self.runner.cleanup()


async def start_gateway(
    data: Mapping[str, Any], *, clock: Callable[[], float] | None = None
) -> RunningGateway:
    config = parse_config(dict(data), source="<test>", env={})
    app = create_app(config, clock=clock) if clock is not None else create_app(config)
    runner = GatewayRunner(app, access_log=None, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return RunningGateway(config, runner, port)
