"""The metered path, top to bottom as in the design: parse, team policy, cache (lookup,
single-flight), reserve, forward, relay, settle, store. Every step is a call into the module
that owns it; this one only orders them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from gateway import json_codec
from gateway.apis import BAD_JSON, ApiSpec, RequestInfo, Usage
from gateway.cache.entry import CachedResponse
from gateway.cache.service import CachePlan
from gateway.config import ModelProfile
from gateway.errors import GatewayError, InvalidRequestError
from gateway.pipeline import team_policy
from gateway.pipeline.background import relay_background
from gateway.pipeline.disconnect import ClientGone, cancel_on_disconnect, connection_lost
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.forward import Call, Forwarded, forward, note_stream_end, start_stream
from gateway.pipeline.jobs import TERMINAL
from gateway.quota.admission import LeftQueue
from gateway.quota.early_stop import EarlyStop, early_stop_output
from gateway.quota.policy import estimate_prompt_tokens, plan_request
from gateway.quota.service import Reservation
from gateway.sse import StreamMeter
from gateway.upstream.client import UpstreamResponse
from gateway.upstream.relay import RelayResult, StreamEnd, relay_events, relay_sse

_JSON = "application/json"
_SSE = "text/event-stream"
#: nginx's "client closed request": logged for a request whose client left before its answer.
CLIENT_CLOSED_REQUEST = 499


@dataclass(slots=True)
class MeteredCall:
    """A request to a metered API, as parsed and rewritten so far."""

    call: Call
    info: RequestInfo
    profile: ModelProfile
    raw: bytes
    body: dict[str, Any]
    #: A background response: it settles when it finishes, not when this call ends.
    background: bool = field(init=False)
    reservation: Reservation | None = None  # once reserved (a streamed background create's job)

    def __post_init__(self) -> None:
        # Once per request: the reservation, the client watch and the relay all ask.
        self.background = self.info.api.runs_in_background(self.info, self.body)


async def handle_metered(call: Call, api: ApiSpec) -> web.StreamResponse:
    request, state, exchange = call.request, call.state, call.exchange
    raw = await request.read()
    body = _decode_body(raw)
    info = api.parse(body)
    assert isinstance(body, dict)  # a metered API's parse refuses anything else (400)
    exchange.model, exchange.stream = info.model, info.stream
    team_policy.check_model(call.team, call.team_name, info.model)
    exchange.price = team_policy.request_price(call.config, info)
    profile = call.config.model_profile(info.model)
    effort = team_policy.reasoning_effort(call.team, info, profile)
    if effort is not None:
        body = api.with_reasoning_effort(info, body, effort)
    metered = MeteredCall(call, info, profile, raw, body)

    query = request.rel_url.raw_query_string
    plan = state.cache.plan(
        call.config,
        call.team_name,
        call.team,
        info,
        body,
        method=request.method,
        path=f"{call.path}?{query}" if query else call.path,
        headers=request.headers,
    )
    if plan is None:
        return await _charged(metered, None)
    entry, exchange.cache = await state.cache.lookup(plan)
    if entry is not None:
        return await _serve_hit(metered, plan.key, entry)
    if not plan.directives.lookup:
        return await _charged(metered, plan)  # no-cache: a fresh answer, stored for the next one
    async with state.cache.coalesce(plan) as shared:
        if shared is not None:
            exchange.cache = "hit"  # stored, or produced by an identical request in flight
            return await _serve_hit(metered, plan.key, shared)
        if plan.backend_failed:
            exchange.cache = "error"
        return await _charged(metered, plan)


def _decode_body(raw: bytes) -> object:
    try:
        return json_codec.loads(raw)
    except BAD_JSON:
        raise InvalidRequestError(
            "We could not parse the JSON body of your request. The body must be a JSON object.",
            code="invalid_json",
        ) from None


async def _serve_hit(metered: MeteredCall, key: str, entry: CachedResponse) -> web.StreamResponse:
    """Replay a stored response: no upstream call, no quota charge; tokens count as saved."""
    call = metered.call
    exchange, cache = call.exchange, call.state.cache
    exchange.usage = entry.usage
    headers: CIMultiDict[str] = CIMultiDict(entry.headers)
    headers["x-gateway-cache"] = "hit"
    headers["age"] = str(entry.age(cache.clock()))
    if entry.events is None:
        return web.Response(status=entry.status, body=entry.body, headers=headers)
    client = web.StreamResponse(status=entry.status, headers=headers)
    if not await start_stream(client, call.request, exchange):
        return client
    replay = cache.replay(key, entry, include_usage=metered.info.include_usage)
    note_stream_end(exchange, await relay_events(client, [replay]))
    return client


async def _charged(metered: MeteredCall, plan: CachePlan | None) -> web.StreamResponse:
    """Reserve, forward, relay, settle: the path of every request that reaches the upstream."""
    call, info = metered.call, metered.info
    exchange = call.exchange
    try:
        reservation = await _reserve(metered)
    except LeftQueue:
        exchange.outcome = StreamEnd.CLIENT_GONE.value  # left while waiting for budget
        return web.Response(status=CLIENT_CLOSED_REQUEST)
    metered.reservation = reservation
    try:
        body = metered.body
        limit = team_policy.output_limit(info, call.team, reservation)
        if limit is not None:
            body = info.api.with_output_limit(info, body, limit)
            exchange.extra["output_limit"] = limit
            if plan is not None:
                plan.output_lowered = True
        # Usage must be metered on every stream: ask for it, and hide it again from a client
        # that did not ask, so its stream stays exactly what OpenAI would have sent it.
        if info.hides_usage:
            body = info.api.with_usage_requested(info, body)
        extra_headers = dict(reservation.headers) if reservation is not None else {}
        if limit is not None:
            extra_headers["x-gateway-output-limit"] = str(limit)
        if plan is not None:
            extra_headers["x-gateway-cache"] = exchange.cache
        # Always the gateway's own serialisation, never the client's bytes: a body with
        # duplicate keys must mean to the upstream exactly what the gateway checked.
        return await _forward(metered, json_codec.dumps(body), extra_headers, plan)
    finally:
        if reservation is not None:
            stop = exchange.early_stop if exchange.usage is None else None
            if stop is not None and not exchange.released:
                output = early_stop_output(reservation.plan, reservation.output, stop)
                exchange.extra["early_stop_output"] = output
                if exchange.price is not None:
                    exchange.early_stop_cost = exchange.price.cost(
                        Usage(
                            prompt_tokens=estimate_prompt_tokens(len(metered.raw)),
                            completion_tokens=output,
                        )
                    )
            # Shielded: a handler cancelled at shutdown must still settle what it reserved.
            await asyncio.shield(_settle_or_hand_over(metered, reservation, stop))


async def _settle_or_hand_over(
    metered: MeteredCall, reservation: Reservation, stop: EarlyStop | None
) -> None:
    call = metered.call
    state, exchange = call.state, call.exchange
    job_id = exchange.extra.get("background_id")
    if isinstance(job_id, str) and not exchange.released and not reservation.settled:
        hold = call.config.admission.background_hold_seconds
        if await state.jobs.open(
            reservation, "response", job_id, "/v1/responses", hold_seconds=hold
        ):
            return
    await state.quotas.settle(
        reservation, exchange.usage, release=exchange.released, early_stop=stop
    )


async def _reserve(metered: MeteredCall) -> Reservation | None:
    call = metered.call
    state, team_name, exchange = call.state, call.team_name, call.exchange
    rules = call.config.quota_rules(team_name)
    user_rules = call.config.user_quota_rules(team_name)
    max_concurrent = call.config.max_concurrent(team_name)
    if not rules and not user_rules and max_concurrent is None:
        return None  # the common uncapped team: no planning at all
    hold = state.quotas.hold_seconds
    if metered.background:
        hold = call.config.admission.background_hold_seconds
    plan = plan_request(
        rules,
        metered.info,
        metered.profile,
        call.team,
        body_bytes=len(metered.raw),
        now=state.quotas.clock(),
        hold_seconds=hold,
        # A background response is not a request in flight here: it must not hold a slot
        # for the hours it may run.
        max_concurrent=None if metered.background else max_concurrent,
        price=exchange.price,
        user=call.user,
        user_rules=user_rules,
    )
    if not plan.charges:
        return None
    reservation = await state.quotas.reserve(
        team_name,
        exchange.request_id,
        plan,
        hold_seconds=hold,
        gone=lambda: connection_lost(call.request),
    )
    exchange.extra["reserved_output"] = reservation.output
    if reservation.clamped_by is not None:
        state.metrics.quota_clamps.labels(team=team_name, metric=reservation.clamped_by).inc()
    return reservation


async def _forward(
    metered: MeteredCall, payload: bytes, extra_headers: dict[str, str], plan: CachePlan | None
) -> web.StreamResponse:
    """Send upstream and relay; records usage (or that nothing was produced) on the exchange,
    and hands complete, successful responses to the cache.

    A client that leaves while the gateway waits on the upstream (for its answer, or for the
    next event of a stream) stops the wait at once and closes the upstream connection, so the
    model stops generating; the exchange then carries an ``EarlyStop`` for the settlement."""
    call, api = metered.call, metered.info.api
    state, exchange = call.state, call.exchange
    sent_at = time.perf_counter()
    try:
        with _watch_client(metered):
            forwarded = await forward(call, payload, accept_encoding=None, content_type=_JSON)
    except GatewayError:
        exchange.released = True  # nothing reached the upstream model
        raise
    except ClientGone:
        _stop_upstream(metered, None, sent_at, relayed_events=0)
        return _client_left(metered)
    upstream = forwarded.upstream
    try:
        headers = forwarded.headers
        headers.update(extra_headers)
        if upstream.status >= 400:
            exchange.released = True  # an upstream error produced no tokens
        content_type = upstream.headers.get("Content-Type", "")
        if upstream.status < 300 and content_type.startswith(_SSE):
            client = web.StreamResponse(status=upstream.status, headers=headers)
            if metered.background:
                await _relay_background(metered, forwarded, client)
                return client
            if not await start_stream(client, call.request, exchange):
                _stop_upstream(metered, upstream, sent_at, relayed_events=0)
                return client
            meter = StreamMeter(api, hide_usage=metered.info.hides_usage)
            recorder = state.cache.recorder(plan, meter) if plan is not None else None
            result = RelayResult(StreamEnd.COMPLETE)
            try:
                with cancel_on_disconnect(call.request):
                    await relay_sse(upstream, client, meter, result)
            except ClientGone:
                # Gone after the terminal event went out (with the stream's end, before the
                # upstream's EOF was read) is a complete stream, not a client that left early.
                if not meter.done:
                    result.end = StreamEnd.CLIENT_GONE
            exchange.upstream_seconds = time.perf_counter() - forwarded.sent_at
            exchange.usage = meter.usage
            note_stream_end(exchange, result)
            if result.end is StreamEnd.CLIENT_GONE and meter.usage is None:
                _stop_upstream(metered, upstream, sent_at, relayed_events=meter.events)
            if result.end is StreamEnd.UPSTREAM_CUT and meter.events == 0:
                exchange.released = True  # cut before its first event: nothing was produced
            if plan is not None and recorder is not None:
                await state.cache.store_stream(plan, upstream.status, upstream.headers, recorder)
            return client
        try:
            with _watch_client(metered):
                data = await upstream.read()
        except GatewayError:
            exchange.upstream_error = "stream_cut"
            raise
        except ClientGone:
            _stop_upstream(metered, upstream, sent_at, relayed_events=0)
            return _client_left(metered)
        exchange.upstream_seconds = time.perf_counter() - forwarded.sent_at
        if upstream.status < 300 and metered.background:
            _note_background(exchange, api, data)
        elif upstream.status < 300:
            exchange.usage = api.usage_from_json(data)
            if plan is not None:
                await state.cache.store_json(
                    plan, upstream.status, upstream.headers, data, exchange.usage
                )
        return web.Response(status=upstream.status, body=data, headers=headers)
    finally:
        upstream.release()


async def _relay_background(
    metered: MeteredCall, forwarded: Forwarded, client: web.StreamResponse
) -> None:
    """A streamed background create: never stopped early; a job settles it if one owns it."""
    call, exchange = metered.call, metered.call.exchange
    meter = StreamMeter(metered.info.api, hide_usage=metered.info.hides_usage)
    result, job_id = await relay_background(
        call, metered.reservation, forwarded.upstream, client, meter
    )
    exchange.upstream_seconds = time.perf_counter() - forwarded.sent_at
    note_stream_end(exchange, result)
    if job_id is not None:
        exchange.extra["background_id"] = job_id  # its usage is counted when the job settles
        return
    exchange.usage = meter.usage
    if result.end is StreamEnd.UPSTREAM_CUT and meter.events == 0:
        exchange.released = True


def _watch_client(metered: MeteredCall) -> contextlib.AbstractContextManager[object]:
    """Stop the upstream if the client leaves, except for a background response: it runs on
    upstream whether or not this connection stays, so the gateway must learn its id."""
    if metered.background:
        return contextlib.nullcontext()
    return cancel_on_disconnect(metered.call.request)


def _note_background(exchange: Exchange, api: ApiSpec, data: bytes) -> None:
    """A background response still running hands its reservation over to a job."""
    try:
        obj = json_codec.loads(data)
    except BAD_JSON:
        return
    if not isinstance(obj, dict):
        return
    if obj.get("status") in TERMINAL["response"]:
        exchange.usage = api.usage(obj.get("usage"))
    elif isinstance(obj.get("id"), str):
        exchange.extra["background_id"] = obj["id"]


def _stop_upstream(
    metered: MeteredCall,
    upstream: UpstreamResponse | None,
    sent_at: float,
    *,
    relayed_events: int,
) -> None:
    """Close the upstream connection of a request whose client left (``None``: the cancelled
    send already did), and note how long the upstream ran and what was relayed."""
    if upstream is not None:
        upstream.close()
    metered.call.exchange.early_stop = EarlyStop(
        upstream_seconds=time.perf_counter() - sent_at,
        relayed_events=relayed_events,
        tokens_per_second=metered.profile.max_output_tokens_per_second,
    )


def _client_left(metered: MeteredCall) -> web.Response:
    """The client left before its (non-stream) answer. The response is for the log; nobody is
    there to read it."""
    exchange = metered.call.exchange
    assert exchange.early_stop is not None
    exchange.upstream_seconds = exchange.early_stop.upstream_seconds
    exchange.outcome = StreamEnd.CLIENT_GONE.value
    return web.Response(status=CLIENT_CLOSED_REQUEST)
