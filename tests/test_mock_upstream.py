"""The mock upstream, checked through the official SDK (and raw HTTP where the wire matters)."""

from __future__ import annotations

import asyncio
import base64

import aiohttp
import openai
import pytest

from gateway import json_codec
from gateway.mock import MockUpstream, start_mock_upstream

CHAT = [{"role": "user", "content": "What colour is the sky?"}]


@pytest.fixture
async def mock():
    server = await start_mock_upstream(port=0)
    yield server
    await server.close()


@pytest.fixture
async def client(mock: MockUpstream):
    sdk = openai.AsyncOpenAI(base_url=mock.url, api_key="sk-mock", max_retries=0)
    yield sdk
    await sdk.close()


async def raw_sse(mock: MockUpstream, path: str, body: dict) -> list[bytes]:
    """The ``data:`` payloads of a stream, exactly as sent."""
    headers = {"Authorization": "Bearer sk-mock"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(mock.url + path, json=body, headers=headers) as resp,
    ):
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        raw = await resp.read()
    return [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]


async def test_chat_non_stream_is_deterministic_and_has_openai_headers(mock, client):
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=CHAT)
    completion = raw.parse()
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["openai-organization"] == "mock-org"
    assert "x-ratelimit-remaining-tokens" in raw.headers
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage.completion_tokens == 12 == len(completion.choices[0].message.content.split())
    assert usage.prompt_tokens == len("What colour is the sky?") // 4
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert usage.prompt_tokens_details.cached_tokens == 0
    again = await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    assert again.choices[0].message.content == completion.choices[0].message.content
    recorded = mock.requests[-1]
    assert recorded.path == "/v1/chat/completions"
    assert recorded.headers["authorization"] == "Bearer sk-mock"
    assert recorded.json["model"] == "gpt-4o-mini"


async def test_chat_stream_without_usage(mock, client):
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    whole = await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    assert text == whole.choices[0].message.content
    wire = await raw_sse(
        mock, "/chat/completions", {"model": "m", "messages": CHAT, "stream": True}
    )
    assert wire[-1] == b"[DONE]"
    assert all(b'"usage"' not in data and b", " not in data for data in wire)


async def test_chat_stream_include_usage(mock, client):
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=CHAT,
        stream=True,
        stream_options={"include_usage": True},
        n=2,
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    deltas = [c for c in chunks[:-1] if c.choices[0].delta.content]
    assert chunks[-1].usage.completion_tokens == len(deltas) == 24
    body = {
        "model": "m",
        "messages": CHAT,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    wire = (await raw_sse(mock, "/chat/completions", body))[:-1]
    assert all(data.endswith(b',"usage":null}') for data in wire[:-1])
    assert json_codec.loads(wire[-1])["choices"] == []


async def test_output_limit_and_reasoning_tokens(client):
    capped = await client.chat.completions.create(
        model="gpt-4o-mini", messages=CHAT, max_completion_tokens=5
    )
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage.completion_tokens == 5
    reasoning = await client.chat.completions.create(model="o3-mini", messages=CHAT)
    details = reasoning.usage.completion_tokens_details
    assert details.reasoning_tokens == 16
    assert reasoning.usage.completion_tokens == 16 + 12
    starved = await client.chat.completions.create(
        model="o3-mini",
        messages=CHAT,
        max_completion_tokens=10,
        extra_headers={"x-mock-reasoning-tokens": "40"},
    )
    assert starved.usage.completion_tokens == 10
    assert starved.usage.completion_tokens_details.reasoning_tokens == 10
    assert starved.choices[0].message.content == ""
    assert starved.choices[0].finish_reason == "length"


async def test_responses_non_stream_and_stream(client):
    response = await client.responses.create(model="gpt-5-mini", input="Hello there")
    assert response.status == "completed"
    assert len(response.output_text.split()) == 12
    assert response.usage.output_tokens_details.reasoning_tokens == 16
    assert response.usage.output_tokens == 28
    stream = await client.responses.create(model="gpt-5-mini", input="Hello there", stream=True)
    events = [event async for event in stream]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == response.output_text
    assert events[-1].response.usage.total_tokens == response.usage.total_tokens


async def test_responses_incomplete_at_limit(client):
    stream = await client.responses.create(
        model="gpt-4o-mini", input="Hello", max_output_tokens=3, stream=True
    )
    events = [event async for event in stream]
    assert events[-1].type == "response.incomplete"
    final = events[-1].response
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.usage.output_tokens == 3


async def test_legacy_completions(client):
    completion = await client.completions.create(
        model="gpt-3.5-turbo-instruct",
        prompt="Say hi",
        extra_headers={"x-mock-completion-tokens": "30"},
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 16  # OpenAI's default max_tokens
    stream = await client.completions.create(
        model="gpt-3.5-turbo-instruct",
        prompt="Say hi",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 12
    streamed = "".join(c.choices[0].text for c in chunks[:-1])
    assert len(streamed.split()) == 12
    assert completion.choices[0].text.startswith(streamed)  # same prompt, same words


async def test_embeddings_float_and_base64_agree(client):
    inputs = ["alpha", "beta"]
    floats = await client.embeddings.create(
        model="text-embedding-3-small", input=inputs, encoding_format="float"
    )
    b64 = await client.embeddings.create(model="text-embedding-3-small", input=inputs)
    assert [d.embedding for d in floats.data] == [d.embedding for d in b64.data]
    assert floats.data[0].embedding != floats.data[1].embedding
    assert abs(sum(v * v for v in floats.data[0].embedding) - 1.0) < 1e-5
    sized = await client.embeddings.create(
        model="text-embedding-3-small", input=[[1, 2, 3]], dimensions=32
    )
    assert len(sized.data[0].embedding) == 32
    assert sized.usage.prompt_tokens == sized.usage.total_tokens == 3


async def test_models_and_images(mock, client):
    ids = {model.id async for model in client.models.list()}
    bare = openai.AsyncOpenAI(base_url=mock.root_url, api_key="sk-mock", max_retries=0)
    assert {model.id async for model in bare.models.list()} == ids  # no /v1 prefix
    await bare.close()
    assert {"gpt-4o-mini", "gpt-5-mini", "o3-mini", "text-embedding-3-small"} <= ids
    assert (await client.models.retrieve("o3-mini")).id == "o3-mini"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")
    images = await client.images.generate(model="gpt-image-1", prompt="a cat", n=2)
    assert len(images.data) == 2
    assert base64.b64decode(images.data[0].b64_json).startswith(b"\x89PNG\r\n\x1a\n")
    assert images.usage.total_tokens > 0
    dalle = await client.images.generate(model="dall-e-3", prompt="a cat")
    assert dalle.usage is None


async def test_errors(mock, client):
    bad = openai.AsyncOpenAI(base_url=mock.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth:
        await bad.models.list()
    assert auth.value.code == "invalid_api_key"
    await bad.close()
    with pytest.raises(openai.InternalServerError) as server:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=CHAT, extra_headers={"x-mock-status": "500"}
        )
    assert server.value.request_id.startswith("req_")
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=CHAT, extra_headers={"x-mock-status": "429"}
        )
    assert limited.value.response.headers["retry-after"] == "1"
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": "Bearer sk-mock"}
        async with session.post(mock.url + "/chat/completions", data=b"{", headers=headers) as r:
            assert r.status == 400
            assert (await r.json())["error"]["type"] == "invalid_request_error"
        async with session.get(mock.root_url + "/v1/nowhere", headers=headers) as r:
            assert r.status == 404
            assert set((await r.json())["error"]) == {"message", "type", "param", "code"}


async def test_drop_after_chunks(client):
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=CHAT,
        stream=True,
        extra_headers={"x-mock-drop-after-chunks": "3"},
    )
    received = []
    # The SDK wraps the HTTP library's "incomplete chunked read" even while iterating.
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk)
    assert len(received) <= 3
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=CHAT, extra_headers={"x-mock-drop-after-chunks": "0"}
        )


async def test_gate_holds_stream_after_first_chunk(mock, client):
    gate = mock.gate("g1")
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=CHAT, stream=True, extra_headers={"x-mock-gate": "g1"}
    )
    chunks = aiter(stream)
    # The first chunk arrives while the upstream is still parked on the gate.
    first = await asyncio.wait_for(anext(chunks), timeout=2)
    assert gate.first_chunk_sent.is_set() and not gate.release_event.is_set()
    assert first.choices[0].delta.role == "assistant"
    gate.release()
    rest = [chunk async for chunk in chunks]
    assert rest[-1].choices[0].finish_reason == "stop"
