"""The Embeddings spec (``gateway.apis``)."""

from __future__ import annotations

from gateway import apis
from gateway.apis import RequestInfo, Usage


def test_parse_embeddings() -> None:
    info = apis.EMBEDDINGS.parse({"model": "text-embedding-3-small", "input": "x"})
    assert info == RequestInfo(
        api=apis.EMBEDDINGS,
        model="text-embedding-3-small",
        stream=False,
        max_output_tokens=None,
        output_limit_field=None,
        reasoning_effort=None,
        include_usage=False,
        n=1,
        temperature=None,
    )


def test_usage_embeddings() -> None:
    assert apis.EMBEDDINGS.usage({"prompt_tokens": 5, "total_tokens": 5}) == Usage(
        prompt_tokens=5, total_tokens=5
    )
