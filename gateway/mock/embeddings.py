"""``POST /embeddings``: deterministic unit vectors of the real sizes, float or base64."""

from __future__ import annotations

import base64
import hashlib
import math
import sys
from array import array
from functools import lru_cache
from itertools import repeat
from operator import mul
from typing import Any

from aiohttp import web

from gateway.mock import content
from gateway.mock.errors import invalid
from gateway.mock.hooks import Ctx
from gateway.mock.params import is_token_list, opt_int, require_model

# (native dimensions, whether ``dimensions`` may shorten it), as OpenAI documents them.
MODEL_DIMENSIONS: dict[str, tuple[int, bool]] = {
    "text-embedding-3-small": (1536, True),
    "text-embedding-3-large": (3072, True),
    "text-embedding-ada-002": (1536, False),
}
# Models the mock does not know get the common size and any ``dimensions`` up to the cap.
DEFAULT_EMBEDDING_DIMENSIONS = 1536
MAX_EMBEDDING_DIMENSIONS = 8192


@lru_cache(maxsize=1024)
def _vector(key: str, dims: int) -> array[float]:
    """A unit float32 vector from SHAKE-128 of the input.

    SHAKE output is prefix-stable, so a shortened vector is the renormalised prefix of the
    full one, like the text-embedding-3 models. ``map`` over C callables keeps 3072 floats
    cheap; a plain Python loop per float would dominate a load test.
    """
    raw = array("h", hashlib.shake_128(key.encode()).digest(2 * dims))
    if sys.byteorder == "big":
        raw.byteswap()
    scale = 1.0 / (math.hypot(*raw) or 1.0)
    return array("f", map(mul, raw, repeat(scale)))


def _encode(vector: array[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        # float32-rounded values, so the float and base64 encodings decode equal.
        return vector.tolist()
    if sys.byteorder == "big":
        vector = array("f", vector)
        vector.byteswap()
    return base64.b64encode(vector.tobytes()).decode()


def _dimensions(model: str, payload: dict[str, Any]) -> int:
    native, shortenable = MODEL_DIMENSIONS.get(model, (DEFAULT_EMBEDDING_DIMENSIONS, True))
    high = native if model in MODEL_DIMENSIONS else MAX_EMBEDDING_DIMENSIONS
    dims = opt_int(payload, "dimensions", 1, high)
    if dims is None:
        return native
    if not shortenable and dims != native:
        raise invalid(
            "This model does not support specifying dimensions.",
            param="dimensions",
            code="invalid_value",
        )
    return dims


async def embeddings(ctx: Ctx) -> web.StreamResponse:
    p = ctx.payload
    model = require_model(p)
    inputs = _inputs(p.get("input"))
    dims = _dimensions(model, p)
    encoding = p.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise invalid(
            "Invalid 'encoding_format': expected 'float' or 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )
    data = []
    tokens = 0
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            tokens += content.estimate_tokens(item)
            key = "s:" + item
        else:
            tokens += len(item)
            key = "t:" + repr(item)
        vector = _encode(_vector(key, dims), encoding)
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
