"""Per-request orchestration of a proxied call: auth, parse, policy, forward, relay, account.

Each step is a call into the module that owns it; nothing here parses JSON fields, builds
headers or renders errors itself.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway import json_codec
from gateway.auth import Principal
from gateway.cache.entry import CachedResponse
from gateway.cache.service import CachePlan
from gateway.config import GatewayConfig, ModelProfile, TeamConfig
from gateway.endpoints import (
    BAD_JSON,
    Api,
    RequestInfo,
    Usage,
    classify,
    parse_request,
    usage_from_json,
    with_output_limit,
    with_reasoning_effort,
    with_usage_requested,
)
from gateway.errors import (
    AuthenticationError,
    GatewayError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RequestTooLargeError,
)
from gateway.log import ACCESS
from gateway.metrics import Metrics
from gateway.proxy import client_response_headers, upstream_request_headers
from gateway.quota.policy import enforce_effort, plan_request
from gateway.quota.service import Reservation, RuleUsage
from gateway.relay import (
    RelayResult,
    StreamEnd,
    relay_events,
    relay_raw,
    relay_sse,
    upstream_read_error,
)
from gateway.sse import StreamMeter
from gateway.state import STATE, GatewayState

#: The methods the OpenAI API uses. TRACE and CONNECT never reach the upstream: an upstream
#: (or a proxy before it) that answered TRACE would echo the real key back.
FORWARDED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_STATUS_CLASS = {n: f"{n}xx" for n in range(1, 6)}


def _status_class(status: int) -> str:
    return _STATUS_CLASS.get(status // 100, "5xx")


REQUEST_ID: web.RequestKey[str] = web.RequestKey("gateway.request_id", str)


@dataclass(slots=True)
class Exchange:
    """What the access log says about one request."""

    request_id: str
    started: float
    method: str
    path: str
    team: str | None = None
    api: Api = Api.OTHER
    model: str | None = None
    stream: bool = False
    status: int = 0
    outcome: str = "ok"
    upstream_request_id: str | None = None
    upstream_seconds: float | None = None
    usage: Usage | None = None
    released: bool = False  # the upstream produced nothing billable
    cache: str = "none"  # hit | miss | bypass | error | none (not cacheable)
    first_byte_seconds: float | None = None  # streams: request start to first body bytes
    upstream_error: str | None = None  # connect | timeout | status_4xx | status_5xx | stream_cut
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self, metrics: Metrics) -> None:
        """Metrics for a finished request; labels are folded to bounded sets here."""
        team = self.team or "unauthenticated"
        model = metrics.model_label(self.model)
        endpoint = self.api.value
        child = metrics.child
        child(metrics.requests, team, model, endpoint, _status_class(self.status), self.cache).inc()
        if self.cache != "none":
            child(metrics.cache_lookups, self.cache).inc()
        total = time.perf_counter() - self.started
        child(metrics.duration, endpoint).observe(total)
        if self.upstream_seconds is not None:
            child(metrics.upstream_duration, endpoint).observe(self.upstream_seconds)
            child(metrics.overhead, endpoint).observe(max(0.0, total - self.upstream_seconds))
        if self.first_byte_seconds is not None:
            child(metrics.time_to_first_byte, endpoint).observe(self.first_byte_seconds)
        if self.upstream_error is not None:
            child(metrics.upstream_errors, self.upstream_error).inc()
        usage = self.usage
        if usage is not None:
            counter = metrics.saved_tokens if self.cache == "hit" else metrics.tokens
            for kind, value in (
                ("prompt", usage.prompt_tokens),
                ("cached_prompt", usage.cached_prompt_tokens),
                ("completion", usage.completion_tokens),
                ("reasoning", usage.reasoning_tokens),
            ):
                if value:
                    child(counter, team, model, kind).inc(value)

    def log(self) -> None:
        usage = self.usage
        ACCESS.write(
            {
                "request_id": self.request_id,
                "upstream_request_id": self.upstream_request_id,
                "team": self.team,
                "method": self.method,
                "path": self.path,
                "endpoint": self.api.value,
                "model": self.model,
                "stream": self.stream,
                "status": self.status,
                "outcome": self.outcome,
                "cache": self.cache,
                "prompt_tokens": usage.prompt_tokens if usage else None,
                "cached_prompt_tokens": usage.cached_prompt_tokens if usage else None,
                "completion_tokens": usage.completion_tokens if usage else None,
                "reasoning_tokens": usage.reasoning_tokens if usage else None,
                "upstream_ms": _ms(self.upstream_seconds),
                "duration_ms": _ms(time.perf_counter() - self.started),
                **self.extra,
            }
        )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


_ID_PREFIX = "gw-" + secrets.token_hex(6)
_id_counter = itertools.count(1)


def new_request_id() -> str:
    """Unique across replicas (random per-process prefix) without a system call per request."""
    return f"{_ID_PREFIX}{next(_id_counter):012x}"


def api_path(request: web.Request) -> str:
    """The path relative to the upstream's /v1, in one canonical spelling.

    The gateway classifies (metered or not), checks and forwards the *same* string: the
    percent-decoded path, re-encoded canonically. Otherwise ``/v1/%63hat/completions`` would be
    passed through unmetered while the upstream decodes it to ``/chat/completions``. Spellings
    that different servers read differently are refused: encoded separators, empty segments,
    ``;`` parameters, backslashes, dot segments and control characters.
    """
    raw = request.rel_url.raw_path
    lowered = raw.lower()
    if "%2f" in lowered or "%5c" in lowered:
        raise InvalidRequestError("Invalid request path.", code="invalid_path")
    decoded = unquote(raw)
    if decoded == "/v1" or decoded.startswith("/v1/"):
        decoded = decoded[3:] or "/"
    if (
        "//" in decoded
        or ";" in decoded
        or "\\" in decoded
        or any(seg in (".", "..") for seg in decoded.split("/"))
        or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in decoded)
    ):
        raise InvalidRequestError("Invalid request path.", code="invalid_path")
    return quote(decoded, safe=_PATH_SAFE)


_PATH_SAFE = "/-._~!$&'()*+,=:@"


async def handle_proxy(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    config = state.config
    exchange = Exchange(
        request_id=request[REQUEST_ID],
        started=time.perf_counter(),
        method=request.method,
        path=request.rel_url.raw_path,
    )
    state.metrics.inflight.inc()
    try:
        response = await _proxy(request, state, config, exchange)
        exchange.status = response.status
        return response
    except Exception as exc:
        exchange.status = getattr(exc, "status", 500)
        exchange.outcome = type(exc).__name__
        raise
    finally:
        state.metrics.inflight.dec()
        exchange.record(state.metrics)
        if config.logging.access_log:
            exchange.log()


async def _proxy(
    request: web.Request, state: GatewayState, config: GatewayConfig, exchange: Exchange
) -> web.StreamResponse:
    if request.method not in FORWARDED_METHODS:
        raise MethodNotAllowedError(f"Method {request.method} is not supported.")
    path = api_path(request)
    principal = await _authenticate(request, state, config)
    exchange.team = principal.team
    team = config.teams[principal.team]
    if not team.allows_path(path):
        raise PermissionDeniedError(
            f"Team {principal.team!r} may not call {path}.", code="path_not_allowed"
        )
    api = classify(request.method, path)
    exchange.api = api
    if request.method == "GET" and path.rstrip("/") == "/models" and team.models != ["*"]:
        return await _models_for_team(request, state, team, path, exchange)
    if request.method == "GET" and path.startswith("/models/"):
        model = unquote(path[len("/models/") :])
        exchange.model = model
        if not team.allows_model(model):
            raise NotFoundError(
                f"The model '{model}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
    if api is Api.OTHER:
        return await _passthrough(request, state, config, team, path, exchange)
    return await _metered(request, state, config, team, path, api, exchange)


async def _authenticate(
    request: web.Request, state: GatewayState, config: GatewayConfig
) -> Principal:
    """The team behind the request's one bearer token (401 otherwise)."""
    authorization = request.headers.getall("Authorization", [])
    if len(authorization) > 1:
        raise AuthenticationError("Invalid API key: more than one Authorization header.")
    return await state.authenticator.authenticate(
        authorization[0] if authorization else None, config.teams
    )


@dataclass(slots=True)
class MeteredCall:
    """One request to a metered API, as parsed and rewritten so far."""

    request: web.Request
    state: GatewayState
    config: GatewayConfig
    team: TeamConfig
    team_name: str
    path: str
    info: RequestInfo
    profile: ModelProfile
    raw: bytes
    body: dict[str, Any]
    exchange: Exchange


async def _metered(
    request: web.Request,
    state: GatewayState,
    config: GatewayConfig,
    team: TeamConfig,
    path: str,
    api: Api,
    exchange: Exchange,
) -> web.StreamResponse:
    raw = await request.read()
    try:
        body = json_codec.loads(raw)
    except BAD_JSON:
        raise InvalidRequestError(
            "We could not parse the JSON body of your request. The body must be a JSON object.",
            code="invalid_json",
        ) from None
    info = parse_request(api, body)
    exchange.model = info.model
    exchange.stream = info.stream
    team_name = exchange.team or ""
    _check_model(team, team_name, info)
    profile = config.model_profile(info.model)
    call = MeteredCall(
        request, state, config, team, team_name, path, info, profile, raw, body, exchange
    )
    effort = enforce_effort(team, info, profile)
    if effort is not None:
        call.body = with_reasoning_effort(info, call.body, effort)

    query = request.rel_url.raw_query_string
    plan = state.cache.plan(
        config,
        team_name,
        team,
        info,
        call.body,
        method=request.method,
        path=f"{path}?{query}" if query else path,
        headers=request.headers,
    )
    if plan is None:
        return await _charged(call, None)
    entry, exchange.cache = await state.cache.lookup(plan)
    if entry is not None:
        return await _serve_hit(call, plan.key, entry)
    if not plan.directives.lookup:
        return await _charged(call, plan)  # no-cache: a fresh answer, stored for the next one
    async with state.cache.coalesce(plan) as shared:
        if shared is not None:
            exchange.cache = "hit"  # stored, or produced by an identical request in flight
            return await _serve_hit(call, plan.key, shared)
        if plan.backend_failed:
            exchange.cache = "error"
        return await _charged(call, plan)


async def _serve_hit(call: MeteredCall, key: str, entry: CachedResponse) -> web.StreamResponse:
    """Replay a stored response: no upstream call, no quota charge; tokens count as saved."""
    exchange = call.exchange
    exchange.usage = entry.usage
    cache = call.state.cache
    headers: CIMultiDict[str] = CIMultiDict(entry.headers)
    headers["x-gateway-cache"] = "hit"
    headers["age"] = str(entry.age(cache.clock()))
    _ensure_request_id(headers, exchange.request_id)
    if entry.events is None:
        return web.Response(status=entry.status, body=entry.body, headers=headers)
    client = web.StreamResponse(status=entry.status, headers=headers)
    if not await _prepare(client, call.request, exchange):
        return client
    replay = cache.replay(key, entry, include_usage=call.info.include_usage)
    result = await relay_events(client, [replay])
    _note_stream_end(exchange, result)
    return client


async def _charged(call: MeteredCall, plan: CachePlan | None) -> web.StreamResponse:
    """Reserve, forward, relay, settle: the path of every request that reaches the upstream."""
    state, info, exchange = call.state, call.info, call.exchange
    reservation = await _reserve(
        state, call.config, call.team, call.team_name, info, call.profile, len(call.raw), exchange
    )
    try:
        body = call.body
        limit = _output_limit(info, call.team, reservation)
        if limit is not None:
            body = with_output_limit(info, body, limit)
            exchange.extra["output_limit"] = limit
            if plan is not None:
                plan.output_lowered = True
        # Usage must be metered on every stream: ask for it, and hide it again from a client
        # that did not ask, so its stream stays exactly what OpenAI would have sent it.
        hide_usage = (
            info.stream and info.api in (Api.CHAT, Api.COMPLETIONS) and not info.include_usage
        )
        if hide_usage:
            body = with_usage_requested(info, body)
        # Always the gateway's own serialisation, never the client's bytes: a body with
        # duplicate keys must mean to the upstream exactly what the gateway checked.
        payload = json_codec.dumps(body)
        extra_headers = dict(reservation.headers) if reservation is not None else {}
        if limit is not None:
            extra_headers["x-gateway-output-limit"] = str(limit)
        if plan is not None:
            extra_headers["x-gateway-cache"] = exchange.cache
        return await _forward_metered(call, payload, hide_usage, extra_headers, plan)
    finally:
        if reservation is not None:
            # Shielded: a handler cancelled at shutdown must still settle what it reserved.
            await asyncio.shield(
                state.quotas.settle(reservation, exchange.usage, release=exchange.released)
            )


async def _reserve(
    state: GatewayState,
    config: GatewayConfig,
    team: TeamConfig,
    team_name: str,
    info: RequestInfo,
    profile: ModelProfile,
    body_bytes: int,
    exchange: Exchange,
) -> Reservation | None:
    rules = config.quota_rules(team_name)
    if not rules:
        return None
    plan = plan_request(
        rules,
        info,
        profile,
        team,
        body_bytes=body_bytes,
        now=state.quotas.clock(),
        hold_seconds=state.quotas.hold_seconds,
    )
    if not plan.windows:
        return None
    try:
        reservation = await state.quotas.reserve(team_name, exchange.request_id, plan)
    except QuotaExceededError as exc:
        state.metrics.quota_rejections.labels(team=team_name, metric=exc.metric or "").inc()
        raise
    exchange.extra["reserved_output"] = reservation.output
    if reservation.clamped_by is not None:
        state.metrics.quota_clamps.labels(team=team_name, metric=reservation.clamped_by).inc()
    return reservation


def _output_limit(
    info: RequestInfo, team: TeamConfig, reservation: Reservation | None
) -> int | None:
    """The output limit the gateway must write into the request, if any.

    With output caps, the granted budget is written whenever it is below what the client
    asked (or the client asked for nothing): the upstream then cannot exceed the reservation.
    """
    if info.output_limit_field is None:
        return None
    limit: int | None = None
    if reservation is not None and any(c.per_output > 0 for c in reservation.plan.charges):
        limit = reservation.output
    elif team.max_output_tokens is not None:
        limit = team.max_output_tokens
    if limit is None or (info.max_output_tokens is not None and info.max_output_tokens <= limit):
        return None
    return limit


async def _forward_metered(
    call: MeteredCall,
    payload: bytes,
    hide_usage: bool,
    extra_headers: dict[str, str],
    plan: CachePlan | None,
) -> web.StreamResponse:
    """Send upstream and relay; records usage (or that nothing was produced) on the exchange,
    and hands complete, successful responses to the cache."""
    request, state, exchange, api = call.request, call.state, call.exchange, call.info.api
    headers = upstream_request_headers(request.headers, state.upstream.config, accept_encoding=None)
    headers["Content-Type"] = "application/json"
    sent_at = time.perf_counter()
    try:
        upstream = await state.upstream.send(
            request.method, call.path, request.rel_url.raw_query_string, headers, payload
        )
    except GatewayError as exc:
        exchange.released = True  # nothing reached the upstream model
        exchange.upstream_error = _upstream_error_kind(exc)
        raise
    try:
        exchange.upstream_request_id = upstream.headers.get("x-request-id")
        response_headers = client_response_headers(upstream.headers)
        response_headers.update(extra_headers)
        _ensure_request_id(response_headers, exchange.request_id)
        if upstream.status >= 400:
            exchange.released = True  # an upstream error produced no tokens
            exchange.upstream_error = f"status_{upstream.status // 100}xx"
        content_type = upstream.headers.get("Content-Type", "")
        if upstream.status < 300 and content_type.startswith("text/event-stream"):
            client = web.StreamResponse(status=upstream.status, headers=response_headers)
            if not await _prepare(client, request, exchange):
                return client
            meter = StreamMeter(api, hide_usage=hide_usage)
            recorder = state.cache.recorder(plan) if plan is not None else None
            result = await relay_sse(upstream, client, meter, recorder)
            exchange.upstream_seconds = time.perf_counter() - sent_at
            exchange.usage = meter.usage
            _note_stream_end(exchange, result)
            if result.end is StreamEnd.UPSTREAM_CUT and meter.events == 0:
                exchange.released = True  # cut before its first event: nothing was produced
            if plan is not None and recorder is not None:
                await state.cache.store_stream(plan, upstream.status, upstream.headers, recorder)
            return client
        try:
            data = await upstream.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            exchange.upstream_error = "stream_cut"
            raise upstream_read_error(exc) from None
        exchange.upstream_seconds = time.perf_counter() - sent_at
        if upstream.status < 300:
            exchange.usage = usage_from_json(api, data)
            if plan is not None:
                await state.cache.store_json(
                    plan, upstream.status, upstream.headers, data, exchange.usage
                )
        return web.Response(status=upstream.status, body=data, headers=response_headers)
    finally:
        upstream.release()


async def _models_for_team(
    request: web.Request,
    state: GatewayState,
    team: TeamConfig,
    path: str,
    exchange: Exchange,
) -> web.StreamResponse:
    """The model list, narrowed to what the team may use (SDK model pickers show only those)."""
    headers = upstream_request_headers(request.headers, state.upstream.config, accept_encoding=None)
    upstream = await state.upstream.send(
        "GET", path, request.rel_url.raw_query_string, headers, None
    )
    try:
        data = await upstream.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise upstream_read_error(exc) from None
    finally:
        upstream.release()
    response_headers = client_response_headers(upstream.headers)
    _ensure_request_id(response_headers, exchange.request_id)
    if upstream.status == 200:
        try:
            listing = json_codec.loads(data)
            listing["data"] = [
                m
                for m in listing["data"]
                if isinstance(m, dict) and team.allows_model(str(m.get("id", "")))
            ]
            data = json_codec.dumps(listing)
        except (*BAD_JSON, KeyError, AttributeError):  # type: ignore[misc]
            pass  # not the shape we know: pass it on untouched
    return web.Response(status=upstream.status, body=data, headers=response_headers)


async def _passthrough(
    request: web.Request,
    state: GatewayState,
    config: GatewayConfig,
    team: TeamConfig,
    path: str,
    exchange: Exchange,
) -> web.StreamResponse:
    """Any other API: body streamed through unparsed, response relayed as is."""
    body: bytes | AsyncIterator[bytes] | None = None
    headers = upstream_request_headers(
        request.headers,
        state.upstream.config,
        accept_encoding=request.headers.get("Accept-Encoding"),
    )
    if request.body_exists:
        limit = config.server.max_upload_bytes
        if request.content_length is not None:
            if request.content_length > limit:
                raise RequestTooLargeError(f"Request body exceeds {limit} bytes.")
            headers["Content-Length"] = str(request.content_length)
        body = _bounded_body(request, limit)
    sent_at = time.perf_counter()
    try:
        upstream = await state.upstream.send(
            request.method, path, request.rel_url.raw_query_string, headers, body
        )
    except GatewayError as exc:
        exchange.upstream_error = _upstream_error_kind(exc)
        raise
    if upstream.status >= 400:
        exchange.upstream_error = f"status_{upstream.status // 100}xx"
    try:
        exchange.upstream_request_id = upstream.headers.get("x-request-id")
        response_headers = client_response_headers(upstream.headers)
        _ensure_request_id(response_headers, exchange.request_id)
        client = web.StreamResponse(status=upstream.status, headers=response_headers)
        # Bytes pass through undecoded (auto_decompress=False), so the length still holds.
        client.content_length = upstream.content_length
        if not await _prepare(client, request, exchange):
            return client
        result = await relay_raw(request, upstream, client)
        exchange.upstream_seconds = time.perf_counter() - sent_at
        _note_stream_end(exchange, result)
        return client
    finally:
        upstream.release()


async def _bounded_body(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        received += len(chunk)
        if received > limit:
            # Past the limit mid-upload: aborting the upstream request is all that is left.
            raise RequestTooLargeError(f"Request body exceeds {limit} bytes.")
        yield chunk


def _upstream_error_kind(exc: GatewayError) -> str | None:
    if exc.status == 504:
        return "timeout"
    if exc.status in (502, 503):
        return "connect"
    return None  # e.g. 413: the client's upload was too large, not an upstream failure


async def _prepare(client: web.StreamResponse, request: web.Request, exchange: Exchange) -> bool:
    """Send a stream's status and headers; False when the client has already gone."""
    try:
        await client.prepare(request)
    except (ConnectionError, aiohttp.ClientConnectionResetError, RuntimeError):
        exchange.outcome = StreamEnd.CLIENT_GONE.value
        return False
    return True


def _note_stream_end(exchange: Exchange, result: RelayResult) -> None:
    if result.first_byte_at is not None:
        exchange.first_byte_seconds = result.first_byte_at - exchange.started
    if result.end is not StreamEnd.COMPLETE:
        exchange.outcome = result.end.value
        if result.end is StreamEnd.UPSTREAM_CUT:
            exchange.upstream_error = "stream_cut"


def _check_model(team: TeamConfig, team_name: str, info: RequestInfo) -> None:
    if info.model is not None and not team.allows_model(info.model):
        raise PermissionDeniedError(
            f"Team {team_name!r} is not allowed to use model {info.model!r}.",
            param="model",
        )


def _ensure_request_id(headers: Any, request_id: str) -> None:
    headers["x-gateway-request-id"] = request_id
    if "x-request-id" not in headers:
        headers["x-request-id"] = request_id


async def handle_usage(request: web.Request) -> web.Response:
    """``GET /v1/gateway/usage``: the calling team's rules with what is used and left."""
    state = request.app[STATE]
    config = state.config
    principal = await _authenticate(request, state, config)
    rules = config.quota_rules(principal.team)
    usage = await state.quotas.usage(principal.team, rules)
    body = {
        "object": "gateway.usage",
        "team": principal.team,
        "rules": [usage_entry(u) for u in usage],
    }
    return web.Response(body=json_codec.dumps(body), content_type="application/json")


def usage_entry(usage: RuleUsage) -> dict[str, Any]:
    return {
        "metric": usage.rule.metric,
        "window": usage.rule.window,
        "models": usage.rule.models,
        "limit": usage.rule.limit,
        "used": usage.used,
        "reserved": usage.reserved,
        "remaining": usage.remaining,
        "window_start": _iso(usage.window_start),
        "resets_at": _iso(usage.window_end),
    }


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
