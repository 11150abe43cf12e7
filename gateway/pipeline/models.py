"""``GET /models`` for a team with a model allow-list: the list narrowed to what it may use."""

from __future__ import annotations

from aiohttp import web

from gateway.pipeline.forward import Call, forward
from gateway.pipeline.team_policy import visible_models


async def list_models(call: Call) -> web.StreamResponse:
    forwarded = await forward(call, None, accept_encoding=None)
    upstream = forwarded.upstream
    try:
        data = await upstream.read()
    finally:
        upstream.release()
    if upstream.status == 200:
        data = visible_models(data, call.team)
    return web.Response(status=upstream.status, body=data, headers=forwarded.headers)
