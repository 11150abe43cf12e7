"""``GET /models`` and ``GET /models/{id}``."""

from __future__ import annotations

from aiohttp import web

from gateway import json_codec
from gateway.mock.errors import not_found
from gateway.mock.hooks import Ctx

_MODEL_IDS = (
    ("gpt-4o-mini", 1721172741),
    ("gpt-4o", 1715367049),
    ("gpt-4.1-mini", 1744318173),
    ("gpt-5-mini", 1754425928),
    ("gpt-5", 1754425777),
    ("o3-mini", 1737146383),
    ("o4-mini", 1744225351),
    ("gpt-3.5-turbo-instruct", 1692901427),
    ("text-embedding-3-small", 1705948997),
    ("text-embedding-3-large", 1705953180),
    ("gpt-image-1", 1745517030),
    ("dall-e-3", 1698785189),
)
MODELS = {
    mid: {"id": mid, "object": "model", "created": created, "owned_by": "system"}
    for mid, created in _MODEL_IDS
}
_MODELS_BODY = json_codec.dumps({"object": "list", "data": list(MODELS.values())})


async def list_models(ctx: Ctx) -> web.StreamResponse:
    return ctx.json_body(_MODELS_BODY)


async def get_model(ctx: Ctx) -> web.StreamResponse:
    model_id = ctx.request.match_info["model_id"]
    model = MODELS.get(model_id)
    if model is None:
        raise not_found(
            f"The model `{model_id}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    return ctx.json(model)
