"""``POST /images/generations``: a 1x1 PNG as ``b64_json`` (``usage`` for ``gpt-image*``)."""

from __future__ import annotations

import base64
import struct
import time
import zlib
from typing import Any

from aiohttp import web

from gateway.mock import content
from gateway.mock.hooks import Ctx
from gateway.mock.params import opt_int, require_string


def _tiny_png() -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)  # 1x1, 8-bit RGBA
    idat = zlib.compress(b"\x00\x10\xa3\x7f\xff")  # filter byte + one pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


PNG_B64 = base64.b64encode(_tiny_png()).decode()


async def generations(ctx: Ctx) -> web.StreamResponse:
    p = ctx.payload
    prompt = require_string(p, "prompt")
    model = p.get("model") or "dall-e-2"
    n = opt_int(p, "n", 1, 10) or 1
    created = int(time.time())
    size = p.get("size") or "1024x1024"
    gpt_image = str(model).startswith("gpt-image")
    quality = p.get("quality") or ("medium" if gpt_image else "standard")
    if not gpt_image:
        item: dict[str, Any] = (
            {"url": "data:image/png;base64," + PNG_B64}
            if p.get("response_format") == "url"
            else {"b64_json": PNG_B64}
        )
        return ctx.json({"created": created, "data": [item] * n})
    input_tokens = content.estimate_tokens(prompt)
    per_image = {"low": 272, "high": 4160}.get(quality, 1056)
    output_tokens = per_image * n
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"text_tokens": input_tokens, "image_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"image_tokens": output_tokens, "text_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }
    meta = {"background": "opaque", "output_format": "png", "size": size, "quality": quality}
    if p.get("stream") is True:
        return await ctx.stream(
            content.sse_event(
                "image_generation.completed",
                i,
                {"b64_json": PNG_B64, "created_at": created, **meta, "usage": usage},
            )
            for i in range(n)
        )
    return ctx.json(
        {"created": created, "data": [{"b64_json": PNG_B64}] * n, **meta, "usage": usage}
    )
