"""The one way a request reaches the upstream: headers cleaned, sent, the answer's headers
prepared for the client, and what happened noted on the exchange."""

from __future__ import annotations

import time
from collections.abc import AsyncIterable
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from gateway.config import GatewayConfig, TeamConfig
from gateway.errors import GatewayError
from gateway.pipeline.exchange import Exchange
from gateway.state import GatewayState
from gateway.upstream.client import UpstreamResponse
from gateway.upstream.headers import client_response_headers, upstream_request_headers
from gateway.upstream.relay import RelayResult, StreamEnd, prepare


@dataclass(slots=True)
class Call:
    """An authenticated request on its way through the pipeline."""

    request: web.Request
    state: GatewayState
    config: GatewayConfig
    team: TeamConfig
    team_name: str
    #: Canonical, relative to the upstream's ``/v1`` (``paths.api_path``).
    path: str
    exchange: Exchange
    #: The person behind the token (``auth.user_claim``), for per-user caps.
    user: str | None = None


@dataclass(slots=True)
class Forwarded:
    upstream: UpstreamResponse
    #: The upstream's headers as the client gets them (cleaned; the app adds the request ids).
    headers: CIMultiDict[str]
    sent_at: float


async def forward(
    call: Call,
    body: bytes | AsyncIterable[bytes] | None,
    *,
    accept_encoding: str | None,
    content_type: str | None = None,
    content_length: int | None = None,
) -> Forwarded:
    """Send the request upstream; returns once its status and headers are in.

    The caller must release ``upstream``. Raises the gateway's 502/504 when the upstream cannot
    be reached (and 413 when a streamed upload runs past its limit).
    """
    request, exchange = call.request, call.exchange
    headers = upstream_request_headers(
        request.headers, call.state.upstream.config, accept_encoding=accept_encoding
    )
    if content_type is not None:
        headers["Content-Type"] = content_type
    if content_length is not None:
        headers["Content-Length"] = str(content_length)
    sent_at = time.perf_counter()
    try:
        upstream = await call.state.upstream.send(
            request.method, call.path, request.rel_url.raw_query_string, headers, body
        )
    except GatewayError as exc:
        exchange.upstream_error = _error_kind(exc)
        raise
    exchange.upstream_request_id = upstream.headers.get("x-request-id")
    if upstream.status >= 400:
        exchange.upstream_error = f"status_{upstream.status // 100}xx"
    response_headers = client_response_headers(upstream.headers)
    return Forwarded(upstream, response_headers, sent_at)


async def forward_whole(
    call: Call,
    body: bytes | None,
    *,
    accept_encoding: str | None = None,
    content_type: str | None = None,
) -> tuple[Forwarded, bytes]:
    """``forward`` for a small JSON answer the gateway reads whole (models list, jobs): the
    upstream response is read and released here."""
    forwarded = await forward(
        call, body, accept_encoding=accept_encoding, content_type=content_type
    )
    try:
        data = await forwarded.upstream.read()
    finally:
        forwarded.upstream.release()
    return forwarded, data


def _error_kind(exc: GatewayError) -> str | None:
    if exc.status == 504:
        return "timeout"
    if exc.status in (502, 503):
        return "connect"
    return None  # e.g. 413: the client's upload was too large, not an upstream failure


async def start_stream(
    client: web.StreamResponse, request: web.Request, exchange: Exchange
) -> bool:
    """Send a stream's status and headers; False (noted) when the client has already gone."""
    if await prepare(client, request):
        return True
    exchange.outcome = StreamEnd.CLIENT_GONE.value
    return False


def note_stream_end(exchange: Exchange, result: RelayResult) -> None:
    if result.first_byte_at is not None:
        exchange.first_byte_seconds = result.first_byte_at - exchange.started
    if result.end is not StreamEnd.COMPLETE:
        exchange.outcome = result.end.value
        if result.end is StreamEnd.UPSTREAM_CUT:
            exchange.upstream_error = "stream_cut"
