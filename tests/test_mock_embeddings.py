"""The mock's embeddings: real sizes per model, ``dimensions``, and both encodings."""

from __future__ import annotations

import base64
import math
import time
from array import array
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from gateway.mock import MockUpstream
from tests.support.gateway_proc import UPSTREAM_KEY


@pytest.fixture
async def client(upstream: MockUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=upstream.url, api_key=UPSTREAM_KEY, max_retries=0)
    yield sdk
    await sdk.close()


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


@pytest.mark.parametrize(
    ("model", "dims"),
    [
        ("text-embedding-3-small", 1536),
        ("text-embedding-ada-002", 1536),
        ("text-embedding-3-large", 3072),
    ],
)
async def test_native_sizes_are_unit_vectors(
    client: openai.AsyncOpenAI, model: str, dims: int
) -> None:
    result = await client.embeddings.create(model=model, input="hello", encoding_format="float")
    vector = result.data[0].embedding
    assert len(vector) == dims
    assert abs(norm(vector) - 1.0) < 1e-5


async def test_dimensions_shorten_to_a_renormalised_prefix(client: openai.AsyncOpenAI) -> None:
    model = "text-embedding-3-large"
    full = await client.embeddings.create(model=model, input="x", encoding_format="float")
    short = await client.embeddings.create(
        model=model, input="x", dimensions=256, encoding_format="float"
    )
    head = full.data[0].embedding[:256]
    scale = norm(head)
    assert short.data[0].embedding == pytest.approx([v / scale for v in head], abs=1e-6)
    assert abs(norm(short.data[0].embedding) - 1.0) < 1e-5


async def test_base64_is_little_endian_float32_equal_to_float(upstream: MockUpstream) -> None:
    body = {"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 64}
    headers = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(
            upstream.url + "/embeddings", json={**body, "encoding_format": "base64"}
        ) as r:
            b64 = await r.json()
        async with session.post(upstream.url + "/embeddings", json=body) as r:
            floats = await r.json()
    for packed, plain in zip(b64["data"], floats["data"], strict=True):
        decoded = array("f", base64.b64decode(packed["embedding"]))
        assert decoded.tolist() == plain["embedding"]


async def test_bad_dimensions_are_refused(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="does not support specifying dimensions"):
        await client.embeddings.create(model="text-embedding-ada-002", input="x", dimensions=64)
    with pytest.raises(openai.BadRequestError) as too_big:
        await client.embeddings.create(model="text-embedding-3-small", input="x", dimensions=2000)
    assert too_big.value.param == "dimensions"


async def test_large_batches_stay_fast(client: openai.AsyncOpenAI) -> None:
    inputs = [f"text {i}" for i in range(256)]
    started = time.perf_counter()
    result = await client.embeddings.create(model="text-embedding-3-large", input=inputs)
    # A generous bound: it only catches a per-float Python loop creeping back in.
    assert time.perf_counter() - started < 10.0
    assert len(result.data) == 256 and len(result.data[255].embedding) == 3072
