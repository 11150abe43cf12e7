"""Responses (``POST /responses``)."""

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
from gateway.apis.usage import Usage
from gateway.errors import GatewayError, render_typed_sse_event

#: The API refuses ``max_output_tokens`` below 16: never clamp a request under it.
MIN_OUTPUT_TOKENS = 16
#: ``incomplete`` and ``failed`` end a stream too, but only ``completed`` is a whole answer.
TERMINAL_EVENTS = frozenset({b"response.completed", b"response.incomplete", b"response.failed"})
COMPLETED_EVENT = b"response.completed"


class ResponsesApi(ApiSpec):
    name = "responses"
    path = "/responses"
    metered = True
    stream_format = StreamFormat.TYPED
    usage_keys = ("input", "output")
    produces_output = True
    sampled = True
    effort_param = "reasoning.effort"

    def parse(self, body: object) -> RequestInfo:
        body = fields.require_object(body)
        model = fields.model(body, required=True)
        stream = fields.stream(body)
        fields.opt_dict(body, "stream_options")  # no include_usage here; just type-check
        reasoning = fields.opt_dict(body, "reasoning")
        effort = (
            fields.opt_effort(reasoning, "effort", "reasoning.effort")
            if reasoning is not None
            else None
        )
        return RequestInfo(
            api=self,
            model=model,
            stream=stream,
            max_output_tokens=fields.output_limit(body, "max_output_tokens"),
            output_limit_field="max_output_tokens",
            reasoning_effort=effort,
            include_usage=False,
            n=1,
            temperature=fields.opt_number(body, "temperature"),
            service_tier=fields.opt_string(body, "service_tier"),
        )

    def with_reasoning_effort(
        self, info: RequestInfo, body: dict[str, Any], effort: str
    ) -> dict[str, Any]:
        super().with_reasoning_effort(info, body, effort)
        reasoning = body.get("reasoning")
        if isinstance(reasoning, dict):
            if reasoning.get("effort") == effort:
                return body
            reasoning = dict(reasoning)  # nested copy: the caller's dict stays untouched
        else:
            reasoning = {}
        reasoning["effort"] = effort
        return {**body, "reasoning": reasoning}

    def runs_in_background(self, info: RequestInfo, body: dict[str, Any]) -> bool:
        # Streamed or not: the run goes on upstream after this request ends.
        return body.get("background") is True

    def min_output_tokens(self, profile: ModelLimits) -> int:
        return max(profile.min_output_tokens, MIN_OUTPUT_TOKENS)

    def cache_refusal(self, body: dict[str, Any], options: CacheOptions) -> CacheRefusal | None:
        if (
            body.get("previous_response_id") is not None
            or body.get("conversation") is not None
            or bool(body.get("background"))
        ):
            return "stateful"
        if not options.responses_with_store and body.get("store") is not False:
            return "store"  # stored by default: a replay would not create the stored response
        return None

    def json_complete(self, obj: dict[str, Any]) -> bool:
        # e.g. ``incomplete`` when cut by max_output_tokens: the same rule as for streams.
        return obj.get("status") == "completed"

    def is_terminal_event(self, kind: bytes) -> bool:
        return kind in TERMINAL_EVENTS

    def stream_usage(self, event: dict[str, Any]) -> Usage | None:
        response = event.get("response")
        return self.usage(response.get("usage")) if isinstance(response, dict) else None

    def is_cacheable_end(self, kind: bytes | None) -> bool:
        return kind == COMPLETED_EVENT

    def stream_error_event(self, error: GatewayError, sequence_number: int) -> bytes:
        return render_typed_sse_event(error, sequence_number)


RESPONSES = ResponsesApi()
