"""Image generation (``POST /images/generations``): usage in ``input``/``output`` shape."""

from __future__ import annotations

from typing import Any

from gateway.apis import fields
from gateway.apis.base import ApiSpec, CacheOptions, CacheRefusal, RequestInfo, StreamFormat

_COMPLETED_SUFFIX = b".completed"


class ImagesApi(ApiSpec):
    name = "images_generations"
    path = "/images/generations"
    metered = True
    stream_format = StreamFormat.TYPED
    usage_keys = ("input", "output")

    def parse(self, body: object) -> RequestInfo:
        body = fields.require_object(body)
        return RequestInfo(
            api=self,
            model=fields.model(body, required=False),  # OpenAI defaults to dall-e-2
            stream=fields.stream(body),
            max_output_tokens=None,
            output_limit_field=None,
            reasoning_effort=None,
            include_usage=False,
            n=fields.choices(body) or 1,
            temperature=None,
        )

    def cache_refusal(self, body: dict[str, Any], options: CacheOptions) -> CacheRefusal | None:
        # Sampled even at fixed settings, and large: cached only when a deployment opts in.
        return None if options.images else "images"

    def is_terminal_event(self, kind: bytes) -> bool:
        return kind.endswith(_COMPLETED_SUFFIX)

    def is_cacheable_end(self, kind: bytes | None) -> bool:
        return kind is not None and kind.endswith(_COMPLETED_SUFFIX)


IMAGES = ImagesApi()
