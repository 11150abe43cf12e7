"""Assembly: the aiohttp Application, its middleware, routes and the lifetime of shared clients."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from gateway import json_codec
from gateway.cache.backend import RedisCacheBackend
from gateway.cache.service import CacheService
from gateway.config import GatewayConfig
from gateway.errors import (
    AuthenticationError,
    GatewayError,
    InternalError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
    render_body,
)
from gateway.handlers import REQUEST_ID, handle_proxy, handle_usage, new_request_id
from gateway.metrics import Metrics, QuotaSample
from gateway.proxy import Upstream
from gateway.quota.service import QuotaService
from gateway.state import STATE, GatewayState
from gateway.storage.errors import StoreError
from gateway.stores import build_stores

log = logging.getLogger("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_ERRORS: dict[int, type[GatewayError]] = {
    400: InvalidRequestError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    413: RequestTooLargeError,
    415: UnsupportedMediaTypeError,
}


def error_response(error: GatewayError, request_id: str) -> web.Response:
    """The only place a GatewayError becomes an HTTP response."""
    headers = {**error.headers, "x-request-id": request_id, "x-gateway-request-id": request_id}
    return web.Response(
        status=error.status,
        body=render_body(error),
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = new_request_id()
    request[REQUEST_ID] = request_id
    try:
        return await handler(request)
    except GatewayError as exc:
        return error_response(exc, request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error_type = _HTTP_ERRORS.get(exc.status, InvalidRequestError)
        message = exc.reason if exc.status != 413 else "Request body too large."
        return error_response(error_type(message), request_id)
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id})
        return error_response(
            InternalError("The gateway failed to process the request."), request_id
        )


async def handle_healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.draining:
        return _json({"status": "unready", "reason": "shutting down"}, status=503)
    try:
        await state.quotas.store.ping()
    except StoreError:
        return _json({"status": "unready", "reason": "store unreachable"}, status=503)
    return _json({"status": "ready"})


def _json(obj: object, status: int = 200) -> web.Response:
    return web.Response(body=json_codec.dumps(obj), status=status, content_type="application/json")


def make_metrics_handler(gateway: web.Application) -> Handler:
    """prometheus-client's aiohttp handler, behind an optional bearer token, with the quota
    gauges refreshed from the store first (at most every ``quota_refresh_seconds``)."""
    last_refresh = [0.0]

    async def handler(request: web.Request) -> web.StreamResponse:
        state = gateway[STATE]
        token = state.config.metrics.bearer_token
        if token is not None:
            sent = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(sent, f"Bearer {token.get_secret_value()}".encode()):
                return error_response(
                    AuthenticationError("Metrics require a bearer token."), new_request_id()
                )
        now = time.monotonic()
        if now - last_refresh[0] >= state.config.metrics.quota_refresh_seconds:
            last_refresh[0] = now
            await refresh_quota_gauges(state)
        return await make_aiohttp_handler(state.metrics.registry)(request)

    return handler


async def refresh_quota_gauges(state: GatewayState) -> None:
    """One store call per team with rules, bounded in time; on trouble the last values stay."""
    samples: list[QuotaSample] = []
    try:
        async with asyncio.timeout(2.0):
            for team in state.config.teams:
                rules = state.config.quota_rules(team)
                if not rules:
                    continue
                for usage in await state.quotas.usage(team, rules):
                    rule = usage.rule
                    samples.append(
                        QuotaSample(
                            team=team,
                            metric=rule.metric,
                            window=rule.window,
                            scope=",".join(rule.models) if rule.models else "*",
                            limit=rule.limit,
                            used=usage.used,
                            reserved=usage.reserved,
                        )
                    )
    except (GatewayError, TimeoutError):
        return
    state.metrics.quota.samples = samples


def create_metrics_app(gateway: web.Application) -> web.Application:
    """A tiny app serving only /metrics, for ``metrics.port``."""
    app = web.Application()
    app.router.add_get("/metrics", make_metrics_handler(gateway))
    return app


def create_app(
    config: GatewayConfig,
    *,
    upstream_session: aiohttp.ClientSession | None = None,
    clock: Callable[[], float] = time.time,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """Build the gateway. Tests pass their own objects instead of monkeypatching."""
    app = web.Application(
        middlewares=[error_middleware], client_max_size=config.server.max_body_bytes
    )
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    if config.metrics.enabled and config.metrics.port is None:
        app.router.add_get("/metrics", make_metrics_handler(app))
    app.router.add_get("/v1/gateway/usage", handle_usage)
    app.router.add_get("/gateway/usage", handle_usage)
    app.router.add_route("*", "/{tail:.*}", handle_proxy)

    async def upstream_client(app: web.Application) -> AsyncIterator[None]:
        session = upstream_session or Upstream.create_session(config.upstream)
        metrics = Metrics(registry)
        stores = await build_stores(config, metrics)
        cache_backend = stores.cache
        quotas = QuotaService(
            stores.quota,
            on_error=config.store.on_error,
            hold_seconds=config.upstream.total_timeout_seconds
            + config.store.reservation_grace_seconds,
            clock=clock,
            metrics=metrics,
            breaker=stores.quota_breaker,
        )
        cache = CacheService(cache_backend, metrics, clock=clock, breaker=stores.cache_breaker)
        purges = None
        if isinstance(cache_backend, RedisCacheBackend):
            purges = asyncio.get_running_loop().create_task(
                cache_backend.listen_for_purges(cache.local.purge)
            )
        app[STATE] = GatewayState(
            config, session=session, quotas=quotas, cache=cache, metrics=metrics, clock=clock
        )
        yield
        if purges is not None:
            purges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purges
        await quotas.drain()
        await stores.close()
        if upstream_session is None:
            await session.close()

    app.cleanup_ctx.append(upstream_client)
    return app
