"""Assembly: the aiohttp Application, its middleware, routes and the lifetime of shared clients."""

from __future__ import annotations

import logging
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
from gateway.handlers import REQUEST_ID, STATE, GatewayState, handle_proxy, new_request_id
from gateway.proxy import Upstream

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
    return web.json_response({"status": "ok"}, dumps=lambda o: json_codec.dumps(o).decode())


async def handle_readyz(request: web.Request) -> web.Response:
    # Store reachability joins this check when a store is configured.
    return web.json_response({"status": "ready"}, dumps=lambda o: json_codec.dumps(o).decode())


def create_app(
    config: GatewayConfig,
    *,
    upstream_session: aiohttp.ClientSession | None = None,
) -> web.Application:
    """Build the gateway. Tests pass their own objects instead of monkeypatching."""
    app = web.Application(
        middlewares=[error_middleware], client_max_size=config.server.max_body_bytes
    )
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
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
        app[STATE] = GatewayState(
            config=config,
            authenticator=Authenticator(config.auth, jwks=jwks),
            upstream=Upstream(config.upstream, session),
        )
        yield
        if upstream_session is None:
            await session.close()

    app.cleanup_ctx.append(upstream_client)
    return app
