"""Assembly: the aiohttp Application, its middleware, routes and the lifetime of shared clients."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from gateway import json_codec
from gateway.auth import Authenticator, JwksCache
from gateway.config import GatewayConfig
from gateway.errors import (
    GatewayError,
    InternalError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
    render_body,
)
from gateway.handlers import (
    REQUEST_ID,
    STATE,
    GatewayState,
    handle_proxy,
    handle_usage,
    new_request_id,
)
from gateway.proxy import Upstream
from gateway.quota.service import QuotaService
from gateway.store.base import QuotaStore, StoreError
from gateway.store.memory import MemoryQuotaStore
from gateway.store.redis import RedisQuotaStore
from gateway.store.redis import connect as connect_redis

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
    try:
        await state.quotas.store.ping()
    except StoreError:
        return _json({"status": "unready", "reason": "store unreachable"}, status=503)
    return _json({"status": "ready"})


def _json(obj: object, status: int = 200) -> web.Response:
    return web.Response(body=json_codec.dumps(obj), status=status, content_type="application/json")


def build_quota_store(config: GatewayConfig) -> QuotaStore:
    if config.store.redis_url is None:
        return MemoryQuotaStore()
    client = connect_redis(
        config.store.redis_url.get_secret_value(), timeout_seconds=config.store.timeout_seconds
    )
    return RedisQuotaStore(client, prefix=config.store.key_prefix)


def create_app(
    config: GatewayConfig,
    *,
    upstream_session: aiohttp.ClientSession | None = None,
    quota_store: QuotaStore | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """Build the gateway. Tests pass their own objects instead of monkeypatching."""
    app = web.Application(
        middlewares=[error_middleware], client_max_size=config.server.max_body_bytes
    )
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/v1/gateway/usage", handle_usage)
    app.router.add_get("/gateway/usage", handle_usage)
    app.router.add_route("*", "/{tail:.*}", handle_proxy)

    async def upstream_client(app: web.Application) -> AsyncIterator[None]:
        session = upstream_session or Upstream.create_session(config.upstream)
        jwks = None
        if config.auth.jwks_url is not None:
            jwks = JwksCache(
                str(config.auth.jwks_url),
                lambda: session,
                cache_seconds=config.auth.jwks_cache_seconds,
                min_refresh_interval_seconds=config.auth.jwks_min_refresh_interval_seconds,
            )
        store = quota_store or build_quota_store(config)
        quotas = QuotaService(
            store,
            on_error=config.store.on_error,
            hold_seconds=config.upstream.total_timeout_seconds
            + config.store.reservation_grace_seconds,
            clock=clock,
        )
        app[STATE] = GatewayState(
            config=config,
            authenticator=Authenticator(config.auth, jwks=jwks),
            upstream=Upstream(config.upstream, session),
            quotas=quotas,
        )
        yield
        await quotas.drain()
        if quota_store is None:
            await store.close()
        if upstream_session is None:
            await session.close()

    app.cleanup_ctx.append(upstream_client)
    return app
