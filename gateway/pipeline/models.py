"""``GET /models`` for a team with a model allow-list: the list narrowed to what it may use."""

from __future__ import annotations

from aiohttp import web

from gateway.pipeline.forward import Call, forward_whole
from gateway.pipeline.team_policy import visible_models


async def list_models(call: Call) -> web.StreamResponse:
    forwarded, data = await forward_whole(call, None)
    status = forwarded.upstream.status
    if status == 200:
        data = visible_models(data, call.team)
    return web.Response(status=status, body=data, headers=forwarded.headers)
