"""The gateway's catch-all route: every request to the OpenAI API, recorded as one exchange."""

from __future__ import annotations

import time

from aiohttp import web

from gateway import apis
from gateway.auth import Principal
from gateway.config import GatewayConfig
from gateway.errors import AuthenticationError, MethodNotAllowedError
from gateway.pipeline import jobs, team_policy
from gateway.pipeline.batches import handle_batch_create
from gateway.pipeline.exchange import REQUEST_ID, Exchange
from gateway.pipeline.forward import Call
from gateway.pipeline.metered import handle_metered
from gateway.pipeline.models import list_models
from gateway.pipeline.passthrough import passthrough
from gateway.pipeline.paths import FORWARDED_METHODS, api_path
from gateway.state import STATE, GatewayState


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
        response = await _route(request, state, config, exchange)
        exchange.status = response.status
        return response
    except Exception as exc:
        exchange.status = getattr(exc, "status", 500)
        exchange.outcome = type(exc).__name__
        raise
    finally:
        state.metrics.inflight.dec()
        cost = exchange.cost()  # once: metrics and the access line both report it
        exchange.record(state.metrics, cost)
        if config.logging.access_log:
            exchange.log(cost)


async def _route(
    request: web.Request, state: GatewayState, config: GatewayConfig, exchange: Exchange
) -> web.StreamResponse:
    if request.method not in FORWARDED_METHODS:
        raise MethodNotAllowedError(f"Method {request.method} is not supported.")
    path = api_path(request)
    principal = await authenticate(request, state, config)
    exchange.team, exchange.user = principal.team, principal.user
    team = config.teams[principal.team]
    team_policy.check_user(config, principal.team, principal.user)
    team_policy.check_path(team, principal.team, path)
    team_policy.check_surface(config, principal.team, request.method, path)
    call = Call(request, state, config, team, principal.team, path, exchange, principal.user)
    api = apis.classify(request.method, path)
    exchange.api = api
    if team_policy.is_model_listing(request.method, path) and team.models != ["*"]:
        return await list_models(call)
    model = team_policy.looked_up_model(request.method, path, team)
    if model is not None:
        exchange.model = model
    capped = config.is_capped(principal.team)
    if capped and request.method == "POST" and path.rstrip("/") == "/batches":
        return await handle_batch_create(call)
    if not api.metered:
        kind = jobs.job_read(request.method, path)
        if kind is not None and capped:
            return await jobs.handle_job_read(call, kind)
        return await passthrough(call)
    return await handle_metered(call, api)


async def authenticate(
    request: web.Request, state: GatewayState, config: GatewayConfig
) -> Principal:
    """The team behind the request's one bearer token (401 otherwise)."""
    authorization = request.headers.getall("Authorization", [])
    if len(authorization) > 1:
        raise AuthenticationError("Invalid API key: more than one Authorization header.")
    return await state.authenticator.authenticate(
        authorization[0] if authorization else None, config.teams
    )
