"""``POST /embeddings``: deterministic unit vectors, ``float`` or ``base64``."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import sys
from array import array
from functools import lru_cache
from typing import Any

from aiohttp import web

from gateway.mock import content
from gateway.mock.errors import invalid
from gateway.mock.hooks import Ctx
from gateway.mock.params import is_token_list, opt_int, require_model

DEFAULT_EMBEDDING_DIMENSIONS = 8
MAX_EMBEDDING_DIMENSIONS = 8192


@lru_cache(maxsize=4096)
def _embedding(key: str, dims: int) -> tuple[tuple[float, ...], str]:
    """A unit vector from SHAKE-128 of the input, as floats and as base64 float32.

    The floats are float32-rounded so the ``float`` and ``base64`` encodings decode equal.
    """
    raw = struct.unpack(f"<{dims}H", hashlib.shake_128(key.encode()).digest(2 * dims))
    values = [v / 32767.5 - 1.0 for v in raw]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    packed = array("f", [v / norm for v in values])
    floats = tuple(packed.tolist())
    if sys.byteorder == "big":
        packed.byteswap()
    return floats, base64.b64encode(packed.tobytes()).decode()


async def embeddings(ctx: Ctx) -> web.StreamResponse:
    p = ctx.payload
    model = require_model(p)
    inputs = _inputs(p.get("input"))
    dims = opt_int(p, "dimensions", 1, MAX_EMBEDDING_DIMENSIONS)
    dims = DEFAULT_EMBEDDING_DIMENSIONS if dims is None else dims
    encoding = p.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise invalid(
            "Invalid 'encoding_format': expected 'float' or 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )
    which = 0 if encoding == "float" else 1
    data = []
    tokens = 0
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            tokens += content.estimate_tokens(item)
            key = "s:" + item
        else:
            tokens += len(item)
            key = "t:" + repr(item)
        vector = _embedding(key, dims)[which]
        data.append({"object": "embedding", "index": index, "embedding": vector})
    return ctx.json(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def _inputs(value: Any) -> list[str | list[int]]:
    if isinstance(value, str) and value:
        return [value]
    if is_token_list(value):
        return [value]
    if isinstance(value, list) and value:
        out: list[str | list[int]] = []
        for item in value:
            if not ((isinstance(item, str) and item) or is_token_list(item)):
                break
            out.append(item)
        else:
            return out
    raise invalid(
        "'$.input' is invalid. Expected a non-empty string, array of strings, or token arrays.",
        param="input",
        code="invalid_value",
    )
