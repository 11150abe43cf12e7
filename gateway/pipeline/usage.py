"""``GET /v1/gateway/usage``: a team's quota rules (and the caller's own per-user rules) with
what is used, reserved and left."""

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
    body: dict[str, Any] = {
        "object": "gateway.usage",
        "team": principal.team,
        "rules": [usage_entry(u) for u in usage],
    }
    user_rules = config.user_quota_rules(principal.team)
    if user_rules and principal.user is not None:
        # The caller's own caps only: a user sees no one else's use.
        mine = await state.quotas.usage(principal.team, user_rules, user=principal.user)
        body["user"] = principal.user
        body["user_rules"] = [usage_entry(u) for u in mine]
    return web.Response(body=json_codec.dumps(body), content_type="application/json")


def usage_entry(usage: RuleUsage) -> dict[str, Any]:
    """One rule's window; amounts in the rule's unit (USD for cost_usd)."""
    rule = usage.rule
    return {
        "metric": rule.metric,
        "window": rule.window,
        "models": rule.models,
        "limit": rule.limit,
        "used": rule.readable(usage.used),
        "reserved": rule.readable(usage.reserved),
        "remaining": rule.readable(usage.remaining),
        "window_start": _iso(usage.window_start),
        "resets_at": _iso(usage.window_end),
    }


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
