"""Assembly: the aiohttp Application, its middleware, routes and the lifetime of shared clients."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

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
from gateway.metrics import Metrics, QuotaSample
from gateway.pipeline import REQUEST_ID, handle_proxy, handle_usage, new_request_id
from gateway.pipeline.reconciler import Reconciler
from gateway.quota.service import QuotaService
from gateway.state import STATE, GatewayState
from gateway.storage.errors import StoreError
from gateway.stores import Stores, build_stores
from gateway.upstream import Upstream

log = logging.getLogger("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_ERRORS: dict[int, type[GatewayError]] = {
    400: InvalidRequestError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    413: RequestTooLargeError,
    415: UnsupportedMediaTypeError,
}


def error_response(error: GatewayError) -> web.Response:
    """The only place a GatewayError becomes an HTTP response."""
    return web.Response(
        status=error.status,
        body=render_body(error),
        content_type="application/json",
        headers=error.headers,
    )


def stamp_request_id(headers: MutableMapping[str, str], request_id: str) -> None:
    """``x-gateway-request-id`` names the gateway's log line; ``x-request-id`` is the
    upstream's when it sent one (OpenAI support asks for that), else the gateway's."""
    headers["x-gateway-request-id"] = request_id
    if "x-request-id" not in headers:
        headers["x-request-id"] = request_id


async def _request_id_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every response the apps produce, proxied or the gateway's own, carries the ids."""
    stamp_request_id(response.headers, request.get(REQUEST_ID) or new_request_id())


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = new_request_id()
    request[REQUEST_ID] = request_id
    try:
        return await handler(request)
    except GatewayError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error_type = _HTTP_ERRORS.get(exc.status, InvalidRequestError)
        message = exc.reason if exc.status != 413 else "Request body too large."
        return error_response(error_type(message))
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id})
        return error_response(InternalError("The gateway failed to process the request."))


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
                return error_response(AuthenticationError("Metrics require a bearer token."))
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
                            limit=rule.readable(rule.counter_limit),
                            used=rule.readable(usage.used),
                            reserved=rule.readable(usage.reserved),
                        )
                    )
    except (GatewayError, TimeoutError):
        return
    state.metrics.quota.samples = samples


def create_metrics_app(gateway: web.Application) -> web.Application:
    """A tiny app serving only /metrics, for ``metrics.port``."""
    app = web.Application()
    app.router.add_get("/metrics", make_metrics_handler(gateway))
    app.on_response_prepare.append(_request_id_headers)
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
    app.on_response_prepare.append(_request_id_headers)

    # One context per resource, in dependency order; aiohttp closes them in reverse, so the
    # quota drain still reaches the store and the store closes before the HTTP client.
    app.cleanup_ctx.extend(
        [
            _upstream_client(upstream_session, config),
            _metrics(registry),
            _stores(config),
            _quota_service(config, clock),
            _cache_service(clock),
            _purge_listener,
            _gateway_state(config, clock),
            _reconciler,
        ]
    )
    return app


CleanupContext = Callable[[web.Application], AsyncIterator[None]]


@contextlib.asynccontextmanager
async def _running(work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """A task that runs for the app's life and is cancelled (and awaited) at cleanup."""
    task = asyncio.get_running_loop().create_task(work)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


_SESSION = web.AppKey("gateway.upstream_session", aiohttp.ClientSession)
_METRICS = web.AppKey("gateway.metrics", Metrics)
_STORES = web.AppKey("gateway.stores", Stores)
_QUOTAS = web.AppKey("gateway.quotas", QuotaService)
_CACHE = web.AppKey("gateway.cache", CacheService)


def _upstream_client(given: aiohttp.ClientSession | None, config: GatewayConfig) -> CleanupContext:
    """The pooled HTTP client to the upstream; a session the caller passed stays theirs."""

    async def upstream_client(app: web.Application) -> AsyncIterator[None]:
        session = given or Upstream.create_session(config.upstream)
        app[_SESSION] = session
        yield
        if given is None:
            await session.close()

    return upstream_client


def _metrics(registry: CollectorRegistry | None) -> CleanupContext:
    async def metrics(app: web.Application) -> AsyncIterator[None]:
        app[_METRICS] = Metrics(registry)
        yield

    return metrics


def _stores(config: GatewayConfig) -> CleanupContext:
    """Quota store and cache backend (one or two Redis, or memory), each with its breaker."""

    async def stores(app: web.Application) -> AsyncIterator[None]:
        stores = await build_stores(config, app[_METRICS])
        app[_STORES] = stores
        yield
        await stores.close()

    return stores


def _quota_service(config: GatewayConfig, clock: Callable[[], float]) -> CleanupContext:
    async def quota_service(app: web.Application) -> AsyncIterator[None]:
        quotas = QuotaService(
            app[_STORES].quota,
            on_error=config.store.on_error,
            hold_seconds=config.upstream.total_timeout_seconds
            + config.store.reservation_grace_seconds,
            clock=clock,
            metrics=app[_METRICS],
            breaker=app[_STORES].quota_breaker,
        )
        quotas.configure_admission(config.admission)
        app[_QUOTAS] = quotas
        async with _running(quotas.listen_for_frees()):
            yield
        await quotas.drain()  # settle what requests in flight reserved

    return quota_service


def _cache_service(clock: Callable[[], float]) -> CleanupContext:
    async def cache_service(app: web.Application) -> AsyncIterator[None]:
        stores = app[_STORES]
        app[_CACHE] = CacheService(
            stores.cache, app[_METRICS], clock=clock, breaker=stores.cache_breaker
        )
        yield

    return cache_service


async def _purge_listener(app: web.Application) -> AsyncIterator[None]:
    """Other replicas' purges, applied to this one's in-process cache tier (Redis only)."""
    backend = app[_STORES].cache
    if not isinstance(backend, RedisCacheBackend):
        yield
        return
    async with _running(backend.listen_for_purges(app[_CACHE].local.purge)):
        yield


def _gateway_state(config: GatewayConfig, clock: Callable[[], float]) -> CleanupContext:
    async def gateway_state(app: web.Application) -> AsyncIterator[None]:
        app[STATE] = GatewayState(
            config,
            session=app[_SESSION],
            quotas=app[_QUOTAS],
            cache=app[_CACHE],
            metrics=app[_METRICS],
            clock=clock,
        )
        yield

    return gateway_state


RECONCILER = web.AppKey("gateway.reconciler", Reconciler)


async def _reconciler(app: web.Application) -> AsyncIterator[None]:
    """Settles background responses and batches that finished (``pipeline.reconciler``)."""
    reconciler = Reconciler(app[STATE])
    app[RECONCILER] = reconciler
    async with _running(reconciler.run()):
        yield
