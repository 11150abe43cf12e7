"""openai-python against the gateway: everyday calls, streams, cuts and error types."""

from __future__ import annotations

import base64
import json
import math
import time
from typing import Any

import httpx2 as httpx
import openai
import pytest

from tests.interop.python_clients import client, recording_client
from tests.interop.recording import parse_sse
from tests.interop.stack import Stack
from tests.support.openapi import validate

MODEL = "gpt-4o-mini"
MESSAGES: list[Any] = [{"role": "user", "content": "Name three colours."}]
CUT = {"x-mock-drop-after-chunks": "5"}
# The real models' sizes (OpenAI's documentation), not whatever the mock happens to return.
EMBEDDING_SIZES = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}


def test_models_list(stack: Stack) -> None:
    ids = [model.id for model in client(stack).models.list()]
    assert MODEL in ids


def test_chat(stack: Stack) -> None:
    completion = client(stack).chat.completions.create(model=MODEL, messages=MESSAGES)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.content, str) and choice.message.content
    usage = completion.usage
    assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_reasoning_usage(stack: Stack) -> None:
    sdk = client(stack)
    chat = sdk.chat.completions.create(model="o3-mini", messages=MESSAGES)
    assert chat.usage is not None and chat.usage.completion_tokens_details is not None
    assert chat.usage.completion_tokens_details.reasoning_tokens
    response = sdk.responses.create(model="o3-mini", input="Think first.")
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens > 0


def test_images(stack: Stack) -> None:
    result = client(stack).images.generate(model="gpt-image-1", prompt="a dot", size="1024x1024")
    assert result.data and result.data[0].b64_json
    assert result.usage is not None and result.usage.total_tokens > 0


def test_client_timeout(stack: Stack) -> None:
    with pytest.raises(openai.APITimeoutError):
        client(stack, timeout=0.2).chat.completions.create(
            model=MODEL, messages=MESSAGES, extra_headers={"x-mock-first-byte-delay-ms": "1000"}
        )


def test_chat_stream_with_and_without_usage(stack: Stack) -> None:
    sdk = client(stack)
    chunks = list(
        sdk.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1] and chunks[-1].choices == []
    assert with_usage[0].usage is not None and with_usage[0].usage.completion_tokens > 0

    plain = list(sdk.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    assert len(plain) > 1 and all(c.usage is None for c in plain)
    assert "".join(c.choices[0].delta.content or "" for c in plain if c.choices) == text


async def test_async_chat_stream(stack: Stack) -> None:
    sdk = openai.AsyncOpenAI(base_url=stack.url, api_key=stack.token(), max_retries=0)
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    await sdk.close()


def test_chat_stream_cut_by_upstream_raises(stack: Stack) -> None:
    stream = client(stack).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, extra_headers=CUT
    )
    received = 0
    with pytest.raises(openai.APIError):
        for _ in stream:
            received += 1
    assert received == 5


def test_responses(stack: Stack) -> None:
    response = client(stack).responses.create(model=MODEL, input="Name three colours.")
    assert response.status == "completed"
    assert response.output_text
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_responses_stream(stack: Stack) -> None:
    events = list(client(stack).responses.create(model=MODEL, input="Colours?", stream=True))
    types = [event.type for event in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.output_text.delta" in types
    numbers = [event.sequence_number for event in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    completed = events[-1]
    assert completed.type == "response.completed"
    usage = completed.response.usage
    assert usage is not None and usage.output_tokens > 0 and usage.input_tokens > 0


def test_responses_stream_cut_ends_with_a_responses_error_event(stack: Stack) -> None:
    # openai-python raises APIError only for chat-style `{"error": {...}}` data; a Responses
    # `error` event is a typed event it yields (ResponseErrorEvent), as for the real API.
    sdk, transport = recording_client(stack)
    stream = sdk.responses.create(model=MODEL, input="cut", stream=True, extra_headers=CUT)
    events = list(stream)
    assert len(events) == 6 and all(e.type != "response.completed" for e in events)
    last = events[-1]
    assert isinstance(last, openai.types.responses.ResponseErrorEvent)
    assert last.sequence_number == events[-2].sequence_number + 1
    assert last.code and last.message

    raw = parse_sse(bytes(transport.bodies[-1]))
    assert [e.event for e in raw] == [e.type for e in events]
    assert raw[-1].event == "error"
    error = json.loads(raw[-1].data)
    validate(error, "ResponseErrorEvent")  # the official spec's schema
    assert set(error) == {"type", "sequence_number", "code", "message", "param"}
    assert error == {
        "type": "error",
        "sequence_number": last.sequence_number,
        "code": last.code,
        "message": last.message,
        "param": None,
    }


def test_responses_stream_helper_refuses_a_cut_stream(stack: Stack) -> None:
    with client(stack).responses.stream(model=MODEL, input="cut", extra_headers=CUT) as stream:
        types = [event.type for event in stream]
        assert types[-1] == "error"
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            stream.get_final_response()


def test_embeddings_have_the_models_sizes(stack: Stack) -> None:
    sdk = client(stack)
    for model, size in EMBEDDING_SIZES.items():
        floats = sdk.embeddings.create(model=model, input="size", encoding_format="float")
        assert len(floats.data[0].embedding) == size, model
        assert floats.usage.prompt_tokens > 0
        packed = sdk.embeddings.create(model=model, input="size", encoding_format="base64")
        raw: Any = packed.data[0].embedding  # the SDK returns what was asked for: a string
        assert isinstance(raw, str) and len(base64.b64decode(raw)) == 4 * size, model
        # The SDK's default (base64 on the wire, decoded to floats by the SDK) comes out whole.
        decoded = sdk.embeddings.create(model=model, input="size")
        assert decoded.data[0].embedding == floats.data[0].embedding, model
    batch = sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b", "c"])
    assert [d.index for d in batch.data] == [0, 1, 2]
    assert {len(d.embedding) for d in batch.data} == {EMBEDDING_SIZES["text-embedding-3-small"]}


@pytest.mark.parametrize(
    "model, dimensions", [("text-embedding-3-small", 256), ("text-embedding-3-large", 1024)]
)
def test_embeddings_dimensions(stack: Stack, model: str, dimensions: int) -> None:
    result = client(stack).embeddings.create(model=model, input="short", dimensions=dimensions)
    vector = result.data[0].embedding
    assert len(vector) == dimensions
    assert math.isclose(math.hypot(*vector), 1.0, rel_tol=1e-4)  # shortened, renormalised


def test_embeddings_batch_of_2048_inputs(stack: Stack) -> None:
    """The API's largest batch, through the gateway, metered as the upstream reported it."""
    inputs = [f"line {i} of the batch" for i in range(2048)]
    result = client(stack, "bulk").embeddings.create(model="text-embedding-3-small", input=inputs)
    assert [d.index for d in result.data] == list(range(2048))
    assert {len(d.embedding) for d in result.data} == {EMBEDDING_SIZES["text-embedding-3-small"]}
    assert len({tuple(d.embedding[:4]) for d in result.data}) == 2048  # one vector per input
    usage = result.usage
    assert usage.prompt_tokens >= 2048 and usage.total_tokens == usage.prompt_tokens
    assert bulk_prompt_tokens_used(stack, expect=usage.prompt_tokens) == usage.prompt_tokens


def bulk_prompt_tokens_used(stack: Stack, expect: float, within_seconds: float = 10.0) -> float:
    """The ``bulk`` team's settled prompt tokens per ``/v1/gateway/usage``, once it shows
    ``expect`` (a stream's settlement may land just after its last byte) or the time is up."""
    deadline = time.monotonic() + within_seconds
    headers = {"Authorization": f"Bearer {stack.token('bulk')}"}
    while True:
        body = httpx.get(stack.url + "/gateway/usage", headers=headers, timeout=10).json()
        (rule,) = [r for r in body["rules"] if r["metric"] == "prompt_tokens"]
        used = float(rule["used"])
        if used == expect or time.monotonic() > deadline:
            return used
        time.sleep(0.05)  # bounded poll of a counter, not synchronising test logic


def test_error_types(stack: Stack) -> None:
    bad = client(stack, api_key="not-a-token")
    with pytest.raises(openai.AuthenticationError) as auth:
        bad.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert auth.value.status_code == 401 and auth.value.code == "invalid_api_key"

    with pytest.raises(openai.PermissionDeniedError) as denied:
        client(stack, "web").chat.completions.create(model="gpt-5", messages=MESSAGES)
    assert denied.value.status_code == 403

    with pytest.raises(openai.BadRequestError) as bad_field:
        client(stack).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=-1)
    assert bad_field.value.status_code == 400
    assert isinstance(bad_field.value.body, dict) and bad_field.value.body.get("message")


def test_quota_exceeded_is_rate_limit_error(stack: Stack) -> None:
    capped = client(stack, "capped-py")
    capped.chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as info:
        capped.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert info.value.status_code == 429


def test_server_errors_are_retried_through_the_gateway(stack: Stack) -> None:
    sdk, transport = recording_client(stack, max_retries=1)
    with pytest.raises(openai.InternalServerError) as info:
        sdk.chat.completions.create(
            model=MODEL, messages=MESSAGES, extra_headers={"x-mock-status": "500"}
        )
    assert info.value.status_code == 500
    assert len(transport.bodies) == 2
