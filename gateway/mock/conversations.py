"""``/conversations``: create, retrieve, update metadata and delete (items are not kept)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway.mock.content import hex_id
from gateway.mock.errors import invalid
from gateway.mock.hooks import Ctx

_WHAT = "conversation"


def _metadata(payload: dict[str, Any]) -> dict[str, Any]:
    metadata = payload.get("metadata")
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or len(metadata) > 16:
        raise invalid(
            "Invalid 'metadata': expected an object of at most 16 keys.",
            param="metadata",
            code="invalid_value",
        )
    return metadata


async def create(ctx: Ctx) -> web.StreamResponse:
    conversation: dict[str, Any] = {
        "id": hex_id("conv_"),
        "object": "conversation",
        "created_at": int(time.time()),
        "metadata": _metadata(ctx.payload),
    }
    ctx.state.conversations.put(conversation["id"], conversation)
    return ctx.json(conversation)


async def retrieve(ctx: Ctx) -> web.StreamResponse:
    return ctx.json(ctx.state.conversations.get(ctx.request.match_info["conv_id"], _WHAT))


async def update(ctx: Ctx) -> web.StreamResponse:
    conversation = ctx.state.conversations.get(ctx.request.match_info["conv_id"], _WHAT)
    conversation["metadata"] = _metadata(ctx.payload)
    return ctx.json(conversation)


async def delete(ctx: Ctx) -> web.StreamResponse:
    conv_id = ctx.request.match_info["conv_id"]
    ctx.state.conversations.pop(conv_id, _WHAT)
    return ctx.json({"id": conv_id, "object": "conversation.deleted", "deleted": True})
