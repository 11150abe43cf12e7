"""``POST /moderations``: nothing is ever flagged; scores are small and deterministic."""

from __future__ import annotations

import zlib
from typing import Any

from aiohttp import web

from gateway.mock.content import hex_id
from gateway.mock.errors import invalid
from gateway.mock.hooks import Ctx
from gateway.mock.params import collect_text

CATEGORIES = (
    "hate",
    "hate/threatening",
    "harassment",
    "harassment/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


async def moderations(ctx: Ctx) -> web.StreamResponse:
    p = ctx.payload
    raw = p.get("input")
    if isinstance(raw, str):
        inputs: list[Any] = [raw]
    elif isinstance(raw, list) and raw:
        # A list of strings is one result each; multi-modal parts are one input together.
        inputs = raw if all(isinstance(i, str) for i in raw) else [raw]
    else:
        raise invalid(
            "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    model = p.get("model") or "omni-moderation-latest"
    return ctx.json(
        {"id": hex_id("modr-"), "model": model, "results": [_result(i) for i in inputs]}
    )


def _result(item: Any) -> dict[str, Any]:
    parts: list[str] = []
    collect_text(item, parts)
    base = zlib.crc32("".join(parts).encode())
    scores = {c: ((base >> (i % 24)) % 997 + 1) / 1_000_000 for i, c in enumerate(CATEGORIES)}
    return {
        "flagged": False,
        "categories": dict.fromkeys(CATEGORIES, False),
        "category_scores": scores,
        "category_applied_input_types": {c: ["text"] for c in CATEGORIES},
    }
