"""The app factory, routing, request recording and auth, and the ways to run the mock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway import json_codec
from gateway.mock import chat, completions, embeddings, images, models, responses
from gateway.mock.errors import MockError, invalid
from gateway.mock.hooks import Ctx, Gate, status_hook_error

MAX_RECORDED = 10_000
# Trimming in batches keeps recording O(1) amortised instead of a memmove per request.
_TRIM_BATCH = 1_000

_BAD_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)


@dataclass(slots=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    json: dict[str, Any] | None  # the parsed body when it was a JSON object


REQUESTS_KEY = web.AppKey("mock_upstream_requests", list[RecordedRequest])
GATES_KEY = web.AppKey("mock_upstream_gates", dict[str, Gate])

Endpoint = Callable[[Ctx], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _not_found(ctx: Ctx) -> web.StreamResponse:
    request = ctx.request
    raise MockError(404, f"Invalid URL ({request.method} {request.path})")


class _MockServer:
    def __init__(self, api_key: str | None, chunk_delay: float) -> None:
        self.expected_auth = None if api_key is None else f"Bearer {api_key}"
        self.chunk_delay = chunk_delay
        self.requests: list[RecordedRequest] = []
        self.gates: dict[str, Gate] = {}

    def route(self, endpoint: Endpoint, *, json_body: bool) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self.handle(request, endpoint, json_body)

        return handler

    async def handle(
        self, request: web.Request, endpoint: Endpoint, json_body: bool
    ) -> web.StreamResponse:
        started = time.perf_counter()
        body = await request.read()
        parsed: Any = None
        bad_json = False
        if body:
            try:
                parsed = json_codec.loads(body)
            except json_codec.JSONDecodeError:
                bad_json = True
        payload = parsed if type(parsed) is dict else None
        self._record(
            RecordedRequest(
                request.method,
                request.path,
                dict(request.query),
                {k.lower(): v for k, v in request.headers.items()},
                body,
                payload,
            )
        )
        ctx = Ctx(request, payload or {}, started, gates=self.gates, chunk_delay=self.chunk_delay)
        try:
            delay_ms = ctx.hook_int("x-mock-first-byte-delay-ms")
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            self._check_auth(request)
            status = ctx.hook_int("x-mock-status")
            if status is not None:
                raise status_hook_error(status, request.headers.get("x-mock-retry-after"))
            if json_body and (bad_json or (body and payload is None)):
                raise invalid(_BAD_JSON_MESSAGE)
            return await endpoint(ctx)
        except MockError as exc:
            return ctx.error(exc)

    def _record(self, rec: RecordedRequest) -> None:
        log = self.requests
        log.append(rec)
        if len(log) > MAX_RECORDED + _TRIM_BATCH:
            del log[: len(log) - MAX_RECORDED]

    def _check_auth(self, request: web.Request) -> None:
        if self.expected_auth is None:
            return
        got = request.headers.get("Authorization")
        if got == self.expected_auth:
            return
        if not got:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        else:
            key = got.removeprefix("Bearer ").strip()
            masked = key[:3] + "*" * 8 + key[-4:] if len(key) > 8 else "*" * len(key)
            message = (
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
        raise MockError(401, message, "invalid_request_error", "invalid_api_key")


def create_mock_app(
    api_key: str | None = "sk-mock", *, chunk_delay_seconds: float = 0.0
) -> web.Application:
    """The fake OpenAI app; ``api_key=None`` turns auth off."""
    server = _MockServer(api_key, chunk_delay_seconds)
    app = web.Application()
    app[REQUESTS_KEY] = server.requests
    app[GATES_KEY] = server.gates
    posts: list[tuple[str, Endpoint]] = [
        ("/chat/completions", chat.chat),
        ("/responses", responses.responses),
        ("/completions", completions.completions),
        ("/embeddings", embeddings.embeddings),
        ("/images/generations", images.generations),
    ]
    for prefix in ("/v1", ""):
        for path, endpoint in posts:
            app.router.add_post(prefix + path, server.route(endpoint, json_body=True))
        app.router.add_get(prefix + "/models", server.route(models.list_models, json_body=False))
        app.router.add_get(
            prefix + "/models/{model_id:.+}", server.route(models.get_model, json_body=False)
        )
    app.router.add_route("*", "/{tail:.*}", server.route(_not_found, json_body=False))
    return app


class MockUpstream:
    """A running mock server; ``url`` is the base URL to give an SDK (it ends in ``/v1``)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self._runner = runner
        self.app = runner.app
        self.host = host
        self.port = port
        url_host = f"[{host}]" if ":" in host else host
        self.root_url = f"http://{url_host}:{port}"
        self.url = self.root_url + "/v1"
        self.requests: list[RecordedRequest] = self.app[REQUESTS_KEY]

    def gate(self, name: str) -> Gate:
        """The gate streams sent with ``x-mock-gate: name`` wait on (created on first use)."""
        return self.app[GATES_KEY].setdefault(name, Gate())

    async def close(self) -> None:
        # Release parked streams first so cleanup does not wait on them.
        for gate in self.app[GATES_KEY].values():
            gate.release()
        await self._runner.cleanup()

    async def __aenter__(self) -> MockUpstream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start_mock_upstream(
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = "sk-mock",
    *,
    chunk_delay_seconds: float = 0.0,
) -> MockUpstream:
    """Start the mock on ``host:port`` (0 picks a free port) in the running loop."""
    app = create_mock_app(api_key, chunk_delay_seconds=chunk_delay_seconds)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = int(runner.addresses[0][1])
    return MockUpstream(runner, host, bound_port)


def run_mock_upstream(host: str, port: int, api_key: str | None) -> None:
    """Serve until interrupted (the CLI entry point); uses uvloop when it is installed."""
    loop: asyncio.AbstractEventLoop | None = None
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        pass
    else:
        loop = uvloop.new_event_loop()
    auth = "auth off" if api_key is None else "Authorization: Bearer <api key> required"
    print(f"mock upstream: base URL http://{host}:{port}/v1 ({auth})", flush=True)
    web.run_app(
        create_mock_app(api_key),
        host=host,
        port=port,
        access_log=None,
        backlog=1024,
        shutdown_timeout=5.0,
        loop=loop,
        print=None,
    )
