"""``GET /v1/gateway/usage``: a team's quota rules with what is used, reserved and left."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway import json_codec
from gateway.pipeline.proxy import authenticate
from gateway.quota.service import RuleUsage
from gateway.state import STATE


async def handle_usage(request: web.Request) -> web.Response:
    """``GET /v1/gateway/usage``: the calling team's rules with what is used and left."""
    state = request.app[STATE]
    config = state.config
    principal = await authenticate(request, state, config)
    rules = config.quota_rules(principal.team)
    usage = await state.quotas.usage(principal.team, rules)
    body = {
        "object": "gateway.usage",
        "team": principal.team,
        "rules": [usage_entry(u) for u in usage],
    }
    return web.Response(body=json_codec.dumps(body), content_type="application/json")


def usage_entry(usage: RuleUsage) -> dict[str, Any]:
    return {
        "metric": usage.rule.metric,
        "window": usage.rule.window,
        "models": usage.rule.models,
        "limit": usage.rule.limit,
        "used": usage.used,
        "reserved": usage.reserved,
        "remaining": usage.remaining,
        "window_start": _iso(usage.window_start),
        "resets_at": _iso(usage.window_end),
    }


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
