"""``/images/generations`` (JSON), ``/images/edits`` and ``/images/variations`` (multipart).

Every image is the same 1x1 PNG as ``b64_json``; ``gpt-image*`` models add ``usage`` and the
output metadata, and stream ``image_generation.completed`` / ``image_edit.completed``.
"""

from __future__ import annotations

import base64
import struct
import time
import zlib
from typing import Any

from aiohttp import web

from gateway.mock import content
from gateway.mock.errors import invalid
from gateway.mock.forms import field_text, read_form, require_file, require_text
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
    n = opt_int(p, "n", 1, 10) or 1
    fields = {k: v for k, v in p.items() if isinstance(v, str)}
    return await _images(
        ctx, fields, prompt, n, p.get("stream") is True, "image_generation", input_images=0
    )


async def edits(ctx: Ctx) -> web.StreamResponse:
    form = await read_form(ctx.request)
    images = form.get("image") or form.get("image[]") or []
    if not images:
        require_file(form, "image")
    prompt = require_text(form, "prompt")
    fields = {name: f[0].text() for name, f in form.items() if f and f[0].filename is None}
    stream = field_text(form, "stream") == "true"
    n = _form_n(form)
    return await _images(ctx, fields, prompt, n, stream, "image_edit", input_images=len(images))


async def variations(ctx: Ctx) -> web.StreamResponse:
    form = await read_form(ctx.request)
    require_file(form, "image")
    fields = {name: f[0].text() for name, f in form.items() if f and f[0].filename is None}
    fields.setdefault("model", "dall-e-2")
    if fields["model"] != "dall-e-2":
        raise invalid(
            "Invalid value for 'model': variations only support dall-e-2.",
            param="model",
            code="invalid_value",
        )
    return await _images(ctx, fields, "", _form_n(form), False, "image_variation", 0)


def _form_n(form: dict[str, Any]) -> int:
    raw = field_text(form, "n", "1") or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= 10:
        raise invalid("Invalid 'n': integer out of range.", param="n", code="invalid_value")
    return int(raw)


async def _images(
    ctx: Ctx,
    fields: dict[str, str],
    prompt: str,
    n: int,
    stream: bool,
    event_prefix: str,
    input_images: int,
) -> web.StreamResponse:
    model = fields.get("model") or "dall-e-2"
    created = int(time.time())
    size = fields.get("size") or "1024x1024"
    gpt_image = model.startswith("gpt-image")
    quality = fields.get("quality") or ("medium" if gpt_image else "standard")
    if not gpt_image:
        item: dict[str, Any] = (
            {"url": "data:image/png;base64," + PNG_B64}
            if fields.get("response_format") == "url"
            else {"b64_json": PNG_B64}
        )
        return ctx.json({"created": created, "data": [item] * n})
    text_tokens = content.estimate_tokens(prompt)
    # An input image costs like a low-quality output one.
    image_tokens = 272 * input_images
    input_tokens = text_tokens + image_tokens
    per_image = {"low": 272, "high": 4160}.get(quality, 1056)
    output_tokens = per_image * n
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"image_tokens": output_tokens, "text_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }
    meta = {"background": "opaque", "output_format": "png", "size": size, "quality": quality}
    if stream:
        return await ctx.stream(
            content.sse_event(
                event_prefix + ".completed",
                i,
                {"b64_json": PNG_B64, "created_at": created, **meta, "usage": usage},
            )
            for i in range(n)
        )
    return ctx.json(
        {"created": created, "data": [{"b64_json": PNG_B64}] * n, **meta, "usage": usage}
    )
