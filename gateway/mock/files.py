"""``/files``: upload (multipart), list, retrieve, download and delete, kept in memory."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway.mock.content import hex_id
from gateway.mock.errors import invalid
from gateway.mock.forms import read_form, require_file, require_text
from gateway.mock.hooks import Ctx
from gateway.mock.state import StoredFile

PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})


async def upload(ctx: Ctx) -> web.StreamResponse:
    form = await read_form(ctx.request)
    upload = require_file(form, "file")
    purpose = require_text(form, "purpose")
    if purpose not in PURPOSES:
        raise invalid(
            f"Invalid value for 'purpose': '{purpose}'.", param="purpose", code="invalid_value"
        )
    meta: dict[str, Any] = {
        "object": "file",
        "id": hex_id("file-")[:29],
        "purpose": purpose,
        "filename": upload.filename or "upload",
        "bytes": len(upload.data),
        "created_at": int(time.time()),
        "expires_at": None,
        "status": "processed",
        "status_details": None,
    }
    ctx.state.files.put(meta["id"], StoredFile(meta, upload.data))
    return ctx.json(meta)


async def list_files(ctx: Ctx) -> web.StreamResponse:
    purpose = ctx.request.query.get("purpose")
    newest_first = ctx.request.query.get("order", "desc") != "asc"
    files = [f.meta for f in ctx.state.files.values() if purpose in (None, f.meta["purpose"])]
    if newest_first:
        files.reverse()
    return ctx.json(
        {
            "object": "list",
            "data": files,
            "first_id": files[0]["id"] if files else None,
            "last_id": files[-1]["id"] if files else None,
            "has_more": False,
        }
    )


async def retrieve(ctx: Ctx) -> web.StreamResponse:
    return ctx.json(ctx.state.files.get(ctx.request.match_info["file_id"], "such file").meta)


async def download(ctx: Ctx) -> web.StreamResponse:
    stored = ctx.state.files.get(ctx.request.match_info["file_id"], "such file")
    return ctx.body(stored.data, "application/octet-stream")


async def delete(ctx: Ctx) -> web.StreamResponse:
    file_id = ctx.request.match_info["file_id"]
    ctx.state.files.pop(file_id, "such file")
    return ctx.json({"id": file_id, "object": "file", "deleted": True})
