"""The life of a ``gateway serve`` process: start, reload, drain, stop.

``GatewayServer`` owns the listeners (the API port and the optional metrics port), the
optional in-process mock upstream, the signal handlers and the config reloader. The objects a
request uses (HTTP client, stores, cache) belong to the app's cleanup contexts
(``gateway.app``), which the runners start and close.

Shutdown order matters to load balancers: unready first (``/readyz`` answers 503), wait
``shutdown_delay_seconds`` so they notice, then close the listeners and give requests and
streams in flight ``shutdown_grace_seconds`` (aiohttp's ``shutdown_timeout``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.web_request import BaseRequest
from pydantic import ValidationError

from gateway import __version__
from gateway.app import create_app, create_metrics_app, error_response, stamp_request_id
from gateway.auth import mint_configured_token
from gateway.config import GatewayConfig, ServerConfig
from gateway.config_loader import ConfigError, format_validation_error, load_config
from gateway.errors import GatewayError, InternalError, InvalidRequestError
from gateway.log import configure_logging
from gateway.pipeline import new_request_id
from gateway.pipeline.disconnect import WatchedRequestHandler
from gateway.reload import ConfigReloader
from gateway.state import STATE, GatewayState

if TYPE_CHECKING:
    from gateway.mock import MockUpstream

log = logging.getLogger("gateway")


class StartupError(Exception):
    """The gateway cannot start with this config; the message says why."""


def with_listen_address(
    config: GatewayConfig, host: str | None = None, port: int | None = None
) -> GatewayConfig:
    """``config`` with ``server.host``/``server.port`` replaced where given (command flags win
    over the file and the environment)."""
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if not overrides:
        return config
    try:
        server = ServerConfig.model_validate({**config.server.model_dump(), **overrides})
    except ValidationError as exc:
        raise ConfigError(format_validation_error("--host/--port", exc)) from None
    return config.model_copy(update={"server": server})


class _JsonErrorRequestHandler(WatchedRequestHandler):
    """Requests aiohttp cannot parse (or that fail outside the app's middleware) get an
    OpenAI-shaped error. aiohttp's own plain-text page echoes the offending input: a header
    line with a stray CR after a token would hand the token to whatever logs error bodies.
    (Watched: the pipeline stops waiting on the upstream for a client that has left.)"""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, None)  # logs; raises once bytes were sent
        error: GatewayError
        if status >= 500:
            error = InternalError("The gateway failed to process the request.")
        else:
            error = InvalidRequestError("The request could not be parsed.")
            error.status = status
        response = error_response(error)
        stamp_request_id(response.headers, new_request_id())
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> WatchedRequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer unparsable requests with JSON errors."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp has no public hook for the protocol's error page: the server the app built
        # (with all its settings) only changes the class that makes its connection handlers.
        server.__class__ = _JsonErrorServer
        return server


class GatewayServer:
    def __init__(
        self,
        config_path: str,
        env: Mapping[str, str],
        *,
        with_mock: bool = False,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        self.config_path = config_path
        self.env = dict(env)
        self.with_mock = with_mock
        self.host = host
        self.port = port
        self.app: web.Application | None = None
        self._runners: list[web.AppRunner] = []
        self._mock: MockUpstream | None = None
        self._reloader: ConfigReloader | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def load(self) -> GatewayConfig:
        return self.adjust(load_config(self.config_path, env=self.env))

    def adjust(self, config: GatewayConfig) -> GatewayConfig:
        return with_listen_address(config, self.host, self.port)

    async def start(self) -> None:
        """Load the config and listen; raises ConfigError or StartupError."""
        if self.with_mock:
            from gateway.mock import start_mock_upstream

            mock_key = "sk-mock-" + secrets.token_hex(8)
            self._mock = await start_mock_upstream(host="127.0.0.1", port=0, api_key=mock_key)
            self.env["OPENAI_BASE_URL"] = self._mock.url
            self.env["OPENAI_API_KEY"] = mock_key
        config = self.load()
        configure_logging(config.logging.level)
        if not config.upstream.api_key.get_secret_value():
            raise StartupError(
                "upstream.api_key is empty: set OPENAI_API_KEY or use --mock-upstream"
            )
        await self._start_runners(config)
        log.info(
            "gateway started",
            extra={
                "version": __version__,
                "listen": f"{config.server.host}:{config.server.port}",
                "upstream": str(config.upstream.base_url),
                "mock_upstream": self.with_mock,
                "teams": len(config.teams),
            },
        )
        print_banner(config, self.with_mock)
        self._reloader = ConfigReloader(
            self.config_path, self.state, env=self.env, adjust=self.adjust
        )
        if config.server.config_poll_seconds > 0:
            self._watcher = asyncio.get_running_loop().create_task(
                self._reloader.watch(config.server.config_poll_seconds)
            )

    async def _start_runners(self, config: GatewayConfig) -> None:
        self.app = create_app(config)
        runner = GatewayRunner(
            self.app, access_log=None, shutdown_timeout=config.server.shutdown_grace_seconds
        )
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, config.server.host, config.server.port).start()
        if config.metrics.enabled and config.metrics.port is not None:
            metrics_runner = GatewayRunner(create_metrics_app(self.app), access_log=None)
            await metrics_runner.setup()
            self._runners.append(metrics_runner)
            await web.TCPSite(metrics_runner, config.server.host, config.metrics.port).start()

    @property
    def state(self) -> GatewayState:
        assert self.app is not None, "start() first"
        return self.app[STATE]

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop (gracefully); SIGHUP reloads the config file."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        if self._reloader is not None:
            loop.add_signal_handler(signal.SIGHUP, self._reloader.reload)

    def ignore_stop_signals(self) -> None:
        """For the last moments of the process: once the loop closes, Python's default action
        would turn a repeated SIGTERM (an orchestrator resending it) into a kill, not exit 0."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)

    def request_stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Drain and close: unready, wait for the load balancers, then close the listeners."""
        if self.app is not None:
            state = self.state
            state.draining = True
            server_config = state.config.server
            log.info(
                "gateway draining", extra={"grace_seconds": server_config.shutdown_grace_seconds}
            )
            if self._watcher is not None:
                self._watcher.cancel()
            if server_config.shutdown_delay_seconds:
                await asyncio.sleep(server_config.shutdown_delay_seconds)
        for runner in self._runners:
            await runner.cleanup()
        if self._mock is not None:
            await self._mock.close()
        if self.app is not None:
            log.info("gateway stopped")


async def serve(
    config_path: str,
    env: Mapping[str, str],
    *,
    with_mock: bool = False,
    host: str | None = None,
    port: int | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop."""
    server = GatewayServer(config_path, env, with_mock=with_mock, host=host, port=port)
    try:
        await server.start()
    except BaseException:
        await server.stop()
        raise
    server.install_signal_handlers()
    await server.wait()
    await server.stop()
    server.ignore_stop_signals()


def print_banner(config: GatewayConfig, with_mock: bool) -> None:
    host = "127.0.0.1" if config.server.host in ("0.0.0.0", "::", "") else config.server.host
    base = f"http://{host}:{config.server.port}/v1"
    team = next((name for name, t in config.teams.items() if t.enabled), None)
    lines = [
        "",
        f"  OpenAI gateway listening on {base}"
        + ("  (offline mock upstream: no OPENAI_API_KEY set)" if with_mock else ""),
    ]
    # A working token in the output is for someone at a terminal (or the offline demo); a
    # pod's log pipeline must never receive one.
    interactive = with_mock or sys.stderr.isatty()
    if not interactive:
        lines.append("  Mint a team token with: gateway token --team <team> --ttl 24h\n")
    elif team and config.auth.hs_secret is not None:
        token = mint_configured_token(config.auth, team, ttl_seconds=86400)
        model = "gpt-4o-mini"
        lines += [
            f"  Team token for {team!r} (valid 24h):",
            f"    export GATEWAY_TOKEN={token}",
            "",
            "  Try it with curl:",
            f'    curl -s {base}/chat/completions -H "Authorization: Bearer $GATEWAY_TOKEN" \\',
            "      -H 'Content-Type: application/json' \\",
            f'      -d \'{{"model": "{model}", "messages": '
            '[{"role": "user", "content": "Hello"}]}\'',
            "",
            "  Or with the OpenAI Python SDK:",
            "    from openai import OpenAI; import os",
            f'    client = OpenAI(base_url="{base}", api_key=os.environ["GATEWAY_TOKEN"])',
            f'    print(client.chat.completions.create(model="{model}", '
            'messages=[{"role": "user", "content": "Hello"}]).choices[0].message.content)',
            "",
        ]
    print("\n".join(lines), file=sys.stderr, flush=True)
