"""Embeddings (``POST /embeddings``): prompt tokens only, deterministic, always cacheable."""

from __future__ import annotations

from typing import Any

from gateway.apis import fields
from gateway.apis.base import ApiSpec, CacheOptions, CacheRefusal, RequestInfo


class EmbeddingsApi(ApiSpec):
    name = "embeddings"
    path = "/embeddings"
    metered = True

    def parse(self, body: object) -> RequestInfo:
        body = fields.require_object(body)
        return RequestInfo(
            api=self,
            model=fields.model(body, required=True),
            stream=False,
            max_output_tokens=None,
            output_limit_field=None,
            reasoning_effort=None,
            include_usage=False,
            n=1,
            temperature=None,
        )

    def cache_refusal(self, body: dict[str, Any], options: CacheOptions) -> CacheRefusal | None:
        return None


EMBEDDINGS = EmbeddingsApi()
