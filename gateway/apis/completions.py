"""Legacy Completions (``POST /completions``)."""

from __future__ import annotations

from typing import Any

from gateway.apis import fields
from gateway.apis.base import (
    ApiSpec,
    CacheOptions,
    CacheRefusal,
    ModelLimits,
    RequestInfo,
    StreamFormat,
)
from gateway.apis.chat import request_stream_usage

#: OpenAI's default output limit for this API when the request sets none.
DEFAULT_MAX_TOKENS = 16


class CompletionsApi(ApiSpec):
    name = "completions"
    path = "/completions"
    metered = True
    stream_format = StreamFormat.DATA_ONLY
    produces_output = True
    sampled = True

    def parse(self, body: object) -> RequestInfo:
        body = fields.require_object(body)
        model = fields.model(body, required=True)
        stream = fields.stream(body)
        n = fields.choices(body) or 1
        # OpenAI accepts best_of 0..20; 0 must not be rejected here, it just does not raise n.
        best_of = fields.choices(body, "best_of", lo=0) or 0
        return RequestInfo(
            api=self,
            model=model,
            stream=stream,
            max_output_tokens=fields.output_limit(body, "max_tokens"),
            output_limit_field="max_tokens",
            reasoning_effort=None,
            include_usage=fields.include_usage(body, stream),
            n=max(n, best_of),
            temperature=fields.opt_number(body, "temperature"),
        )

    def with_usage_requested(self, info: RequestInfo, body: dict[str, Any]) -> dict[str, Any]:
        return request_stream_usage(info, body)

    def default_output_tokens(self, profile: ModelLimits) -> int:
        return DEFAULT_MAX_TOKENS

    def cache_refusal(self, body: dict[str, Any], options: CacheOptions) -> CacheRefusal | None:
        return None


COMPLETIONS = CompletionsApi()
