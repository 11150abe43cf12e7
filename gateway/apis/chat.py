"""Chat Completions (``POST /chat/completions``)."""

from __future__ import annotations

from typing import Any

from gateway.apis import fields
from gateway.apis.base import ApiSpec, CacheOptions, CacheRefusal, RequestInfo, StreamFormat


class ChatApi(ApiSpec):
    name = "chat_completions"
    path = "/chat/completions"
    metered = True
    stream_format = StreamFormat.DATA_ONLY
    produces_output = True
    sampled = True
    effort_param = "reasoning_effort"

    def parse(self, body: object) -> RequestInfo:
        body = fields.require_object(body)
        model = fields.model(body, required=True)
        stream = fields.stream(body)
        max_completion = fields.output_limit(body, "max_completion_tokens")
        max_tokens = fields.output_limit(body, "max_tokens")
        field = "max_completion_tokens"
        limit = max_completion
        if max_tokens is not None:
            if max_completion is None:
                field, limit = "max_tokens", max_tokens
            else:
                limit = min(max_completion, max_tokens)
        return RequestInfo(
            api=self,
            model=model,
            stream=stream,
            max_output_tokens=limit,
            output_limit_field=field,
            reasoning_effort=fields.opt_effort(body, "reasoning_effort", "reasoning_effort"),
            include_usage=fields.include_usage(body, stream),
            n=fields.choices(body) or 1,
            temperature=fields.opt_number(body, "temperature"),
            service_tier=fields.opt_string(body, "service_tier"),
        )

    def with_output_limit(
        self, info: RequestInfo, body: dict[str, Any], limit: int
    ) -> dict[str, Any]:
        out = super().with_output_limit(info, body, limit)
        if info.max_output_tokens is not None:
            limit = min(limit, info.max_output_tokens)
        # Both fields set: the upstream enforces both, so lowering only one would not bind.
        other = (
            body.get("max_tokens") if info.output_limit_field == "max_completion_tokens" else None
        )
        if type(other) is int and other > limit:
            out = {**out, "max_tokens": limit}
        return out

    def with_usage_requested(self, info: RequestInfo, body: dict[str, Any]) -> dict[str, Any]:
        return request_stream_usage(info, body)

    def with_reasoning_effort(
        self, info: RequestInfo, body: dict[str, Any], effort: str
    ) -> dict[str, Any]:
        super().with_reasoning_effort(info, body, effort)
        if body.get("reasoning_effort") == effort:
            return body
        return {**body, "reasoning_effort": effort}

    def cache_refusal(self, body: dict[str, Any], options: CacheOptions) -> CacheRefusal | None:
        if not options.responses_with_store and body.get("store") is True:
            return "store"  # stored completions are visible in the dashboard: not a replay
        return None


def request_stream_usage(info: RequestInfo, body: dict[str, Any]) -> dict[str, Any]:
    """Make a DATA_ONLY stream end with a usage chunk, so the gateway can meter it.

    Other ``stream_options`` keys (``include_obfuscation``) are kept: they change what the
    client receives, and the gateway must not.
    """
    if not info.stream:
        return body
    options = body.get("stream_options")
    if isinstance(options, dict):
        if options.get("include_usage") is True:
            return body
        options = dict(options)
    else:
        options = {}
    options["include_usage"] = True
    return {**body, "stream_options": options}


CHAT = ChatApi()
