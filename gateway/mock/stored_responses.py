"""``/responses/{id}``: retrieve, delete, cancel and list the input items of stored responses.

A response is stored unless the request said ``"store": false``, as on OpenAI.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.mock.background import BackgroundRun
from gateway.mock.content import hex_id
from gateway.mock.errors import invalid
from gateway.mock.hooks import Ctx
from gateway.mock.state import StoredResponse

_WHAT = "response"


def store(ctx: Ctx, response: dict[str, Any], run: BackgroundRun | None = None) -> None:
    if response.get("store") is False and run is None:
        return
    items = _input_items(ctx.payload)
    ctx.state.responses.put(response["id"], StoredResponse(response, items, run))


def _input_items(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's input as the item resources OpenAI lists, each with an id."""
    raw = payload.get("input")
    entries: list[Any] = [{"role": "user", "content": raw}] if isinstance(raw, str) else raw or []
    items: list[dict[str, Any]] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        if entry.get("type", "message") == "message" and "role" in entry:
            parts = entry.get("content")
            if isinstance(parts, str):
                kind = "output_text" if entry["role"] == "assistant" else "input_text"
                parts = [{"type": kind, "text": parts}]
            items.append(
                {
                    "id": entry.get("id") or hex_id("msg_"),
                    "type": "message",
                    "role": entry["role"],
                    "status": "completed",
                    "content": parts,
                }
            )
        else:
            item = {**entry, "id": entry.get("id") or hex_id("fco_")}
            if item.get("type") == "function_call_output":
                item.setdefault("status", "completed")
            items.append(item)
    return items


async def retrieve(ctx: Ctx) -> web.StreamResponse:
    stored = ctx.state.responses.get(ctx.request.match_info["response_id"], _WHAT)
    run = stored.run
    if ctx.request.query.get("stream") == "true" and run is not None:
        return await ctx.stream(run.events(await run.finished()))
    return ctx.json(stored.view())


async def delete(ctx: Ctx) -> web.StreamResponse:
    response_id = ctx.request.match_info["response_id"]
    ctx.state.responses.pop(response_id, _WHAT)
    return ctx.json({"id": response_id, "object": "response", "deleted": True})


async def cancel(ctx: Ctx) -> web.StreamResponse:
    stored = ctx.state.responses.get(ctx.request.match_info["response_id"], _WHAT)
    if stored.run is None:
        raise invalid("Only background responses can be cancelled.", code="invalid_request")
    # A response that already finished stays as it is, as on OpenAI.
    return ctx.json(stored.run.cancel())


async def input_items(ctx: Ctx) -> web.StreamResponse:
    stored = ctx.state.responses.get(ctx.request.match_info["response_id"], _WHAT)
    query = ctx.request.query
    items = list(stored.input_items)
    if query.get("order", "desc") != "asc":
        items.reverse()
    after = query.get("after")
    if after:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    try:
        limit = max(1, min(100, int(query.get("limit", "20"))))
    except ValueError:
        raise invalid("Invalid 'limit': expected an integer.", param="limit") from None
    page = items[:limit]
    return ctx.json(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )
