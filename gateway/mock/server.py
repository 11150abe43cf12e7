"""The app factory, routing, request recording and auth, and the ways to run the mock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway import json_codec
from gateway.mock import (
    audio,
    batches,
    chat,
    completions,
    conversations,
    embeddings,
    files,
    images,
    models,
    moderations,
    responses,
    stored_responses,
)
from gateway.mock.errors import MockError, invalid
from gateway.mock.hooks import Ctx, Gate, status_hook_error
from gateway.mock.state import MockState

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
    #: Set when the client closed the connection before the reply was complete (the mock
    #: runs with handler cancellation, so this covers waits as well as failed writes).
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class InFlight:
    """Requests being answered right now, and the most at once: tests of concurrency caps."""

    now: int = 0
    peak: int = 0


REQUESTS_KEY = web.AppKey("mock_upstream_requests", list[RecordedRequest])
IN_FLIGHT_KEY = web.AppKey("mock_upstream_in_flight", InFlight)
GATES_KEY = web.AppKey("mock_upstream_gates", dict[str, Gate])
STATE_KEY = web.AppKey("mock_upstream_state", MockState)

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
        self.state = MockState()
        self.in_flight = InFlight()

    def route(self, endpoint: Endpoint, *, json_body: bool) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            in_flight = self.in_flight
            in_flight.now += 1
            in_flight.peak = max(in_flight.peak, in_flight.now)
            try:
                return await self.handle(request, endpoint, json_body)
            finally:
                in_flight.now -= 1

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
        record = RecordedRequest(
            request.method,
            request.path,
            dict(request.query),
            {k.lower(): v for k, v in request.headers.items()},
            body,
            payload,
        )
        self._record(record)
        ctx = Ctx(
            request,
            payload or {},
            started,
            gates=self.gates,
            chunk_delay=self.chunk_delay,
            state=self.state,
            disconnected=record.disconnected,
        )
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
        except asyncio.CancelledError:
            record.disconnected.set()  # aiohttp cancels the handler when the client leaves
            raise

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


# (method, path, endpoint, whether the body must be a JSON object)
_ROUTES: list[tuple[str, str, Endpoint, bool]] = [
    ("POST", "/chat/completions", chat.chat, True),
    ("POST", "/responses", responses.responses, True),
    ("GET", "/responses/{response_id}", stored_responses.retrieve, False),
    ("DELETE", "/responses/{response_id}", stored_responses.delete, False),
    ("POST", "/responses/{response_id}/cancel", stored_responses.cancel, False),
    ("GET", "/responses/{response_id}/input_items", stored_responses.input_items, False),
    ("POST", "/completions", completions.completions, True),
    ("POST", "/embeddings", embeddings.embeddings, True),
    ("POST", "/images/generations", images.generations, True),
    ("POST", "/images/edits", images.edits, False),
    ("POST", "/images/variations", images.variations, False),
    ("POST", "/audio/speech", audio.speech, True),
    ("POST", "/audio/transcriptions", audio.transcriptions, False),
    ("POST", "/audio/translations", audio.translations, False),
    ("POST", "/moderations", moderations.moderations, True),
    ("POST", "/files", files.upload, False),
    ("GET", "/files", files.list_files, False),
    ("GET", "/files/{file_id}", files.retrieve, False),
    ("DELETE", "/files/{file_id}", files.delete, False),
    ("GET", "/files/{file_id}/content", files.download, False),
    ("POST", "/batches", batches.create, True),
    ("GET", "/batches", batches.list_batches, False),
    ("GET", "/batches/{batch_id}", batches.retrieve, False),
    ("POST", "/batches/{batch_id}/cancel", batches.cancel, False),
    ("POST", "/conversations", conversations.create, True),
    ("GET", "/conversations/{conv_id}", conversations.retrieve, False),
    ("POST", "/conversations/{conv_id}", conversations.update, True),
    ("DELETE", "/conversations/{conv_id}", conversations.delete, False),
    ("GET", "/models", models.list_models, False),
    ("GET", "/models/{model_id:.+}", models.get_model, False),
]


def create_mock_app(
    api_key: str | None = "sk-mock", *, chunk_delay_seconds: float = 0.0
) -> web.Application:
    """The fake OpenAI app; ``api_key=None`` turns auth off."""
    server = _MockServer(api_key, chunk_delay_seconds)
    app = web.Application()
    app[REQUESTS_KEY] = server.requests
    app[GATES_KEY] = server.gates
    app[STATE_KEY] = server.state
    app[IN_FLIGHT_KEY] = server.in_flight
    for prefix in ("/v1", ""):
        for method, path, endpoint, json_body in _ROUTES:
            handler = server.route(endpoint, json_body=json_body)
            if method == "GET":
                app.router.add_get(prefix + path, handler)  # answers HEAD too
            else:
                app.router.add_route(method, prefix + path, handler)
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
        self.in_flight: InFlight = self.app[IN_FLIGHT_KEY]

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
    # Handler cancellation: a client that leaves stops its answer, as on OpenAI, and the
    # request's ``disconnected`` event tells a test so.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
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
        handler_cancellation=True,
        loop=loop,
        print=None,
    )
