"""The per-request context: ``x-mock-*`` header hooks, gates, and writing replies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway import json_codec
from gateway.mock.content import (
    DEFAULT_COMPLETION_TOKENS,
    DEFAULT_REASONING_TOKENS,
    Budget,
    hex_id,
    is_reasoning_model,
)
from gateway.mock.errors import MockError, invalid
from gateway.mock.state import MockState

JSON = "application/json"
SSE = "text/event-stream; charset=utf-8"

_STATIC_HEADERS = {
    "openai-organization": "mock-org",
    "openai-version": "2020-10-01",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-limit-tokens": "30000000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "29999000",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-reset-tokens": "2ms",
    "access-control-expose-headers": "X-Request-ID",
}

_ERROR_TEMPLATES: dict[int, tuple[str, str, str | None]] = {
    400: ("Mock bad request.", "invalid_request_error", None),
    401: ("Mock authentication failure.", "invalid_request_error", "invalid_api_key"),
    403: ("Mock permission denied.", "invalid_request_error", None),
    404: ("Mock not found.", "invalid_request_error", None),
    429: ("Rate limit reached for requests (mock).", "requests", "rate_limit_exceeded"),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    503: ("The engine is currently overloaded, please try again later", "server_error", None),
}


@dataclass(slots=True)
class Gate:
    """Holds a stream after its first event until the test releases it."""

    release_event: asyncio.Event = field(default_factory=asyncio.Event)
    first_chunk_sent: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self.release_event.set()


def status_hook_error(status: int, retry_after: str | None) -> MockError:
    """The error ``x-mock-status: N`` asks for."""
    if not 400 <= status <= 599:
        raise invalid("x-mock-status must be between 400 and 599.")
    message, err_type, code = _ERROR_TEMPLATES.get(
        status,
        (
            f"Mock error (status {status}).",
            "server_error" if status >= 500 else "invalid_request_error",
            None,
        ),
    )
    headers = {}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    elif status == 429:
        headers["retry-after"] = "1"
    return MockError(status, message, err_type, code, headers=headers)


class Ctx:
    """One request: its parsed JSON payload, hooks, and the reply writers."""

    __slots__ = (
        "chunk_delay",
        "disconnected",
        "gates",
        "payload",
        "request",
        "request_id",
        "started",
        "state",
    )

    def __init__(
        self,
        request: web.Request,
        payload: dict[str, Any],
        started: float,
        *,
        gates: dict[str, Gate],
        chunk_delay: float,
        state: MockState,
        disconnected: asyncio.Event,
    ) -> None:
        self.request = request
        self.disconnected = disconnected
        self.state = state
        self.payload = payload
        self.started = started
        self.gates = gates
        self.chunk_delay = chunk_delay
        self.request_id = hex_id("req_")

    def hook_int(self, name: str) -> int | None:
        raw = self.request.headers.get(name)
        if raw is None:
            return None
        try:
            value = int(raw)
        except ValueError:
            raise invalid(f"Header {name} must be an integer.") from None
        if value < 0:
            raise invalid(f"Header {name} must not be negative.")
        return value

    def budget(self, model: str, limit: int | None, *, visible: int | None = None) -> Budget:
        """Tokens per choice; ``visible`` is the answer's own length when it has one (JSON)."""
        if visible is None:
            visible = self.hook_int("x-mock-completion-tokens")
        if visible is None:
            visible = DEFAULT_COMPLETION_TOKENS
        reasoning = 0
        if is_reasoning_model(model):
            hooked = self.hook_int("x-mock-reasoning-tokens")
            reasoning = DEFAULT_REASONING_TOKENS if hooked is None else hooked
        cached = self.hook_int("x-mock-cached-tokens") or 0
        if limit is None or reasoning + visible <= limit:
            return Budget(reasoning, visible, False, cached)
        spent = min(reasoning, limit)
        return Budget(spent, limit - spent, True, cached)

    def headers(self, content_type: str) -> dict[str, str]:
        headers = dict(_STATIC_HEADERS)
        headers["Content-Type"] = content_type
        headers["x-request-id"] = self.request_id
        headers["openai-processing-ms"] = str(int((time.perf_counter() - self.started) * 1000))
        return headers

    def _abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    def body(self, body: bytes, content_type: str, status: int = 200) -> web.Response:
        if self.hook_int("x-mock-drop-after-chunks") == 0:
            # aiohttp's own write then fails on the closed transport and is logged at debug.
            self._abort()
        return web.Response(body=body, status=status, headers=self.headers(content_type))

    def json_body(self, body: bytes, status: int = 200) -> web.Response:
        return self.body(body, JSON, status)

    def json(self, obj: Any) -> web.Response:
        return self.json_body(json_codec.dumps(obj))

    def error(self, exc: MockError) -> web.Response:
        headers = self.headers(JSON)
        headers.update(exc.headers)
        return web.Response(body=json_codec.dumps(exc.body()), status=exc.status, headers=headers)

    async def stream(self, events: Iterable[bytes]) -> web.StreamResponse:
        delay_ms = self.hook_int("x-mock-chunk-delay-ms")
        delay = self.chunk_delay if delay_ms is None else delay_ms / 1000
        drop_after = self.hook_int("x-mock-drop-after-chunks")
        gate_name = self.request.headers.get("x-mock-gate")
        gate = self.gates.setdefault(gate_name, Gate()) if gate_name else None

        resp = web.StreamResponse(status=200, headers=self.headers(SSE))
        await resp.prepare(self.request)
        sent = 0
        try:
            if drop_after == 0:
                self._abort()
                return resp
            for event in events:
                if sent and delay > 0:
                    await asyncio.sleep(delay)
                await resp.write(event)
                sent += 1
                if sent == 1 and gate is not None:
                    await self.request.writer.drain()
                    gate.first_chunk_sent.set()
                    await gate.release_event.wait()
                if sent == drop_after:
                    self._abort()
                    return resp
            await resp.write_eof()
        except ConnectionError:
            # The client went away. Returning (not raising) lets aiohttp log it at debug level.
            self.disconnected.set()
        return resp
