"""The mock's answers validate against the official OpenAPI component schemas.

One request per shape the mock can give (plain, tools, structured, streamed, ...); every
JSON body, stream chunk and Responses stream event is checked against its schema.
"""

from __future__ import annotations

import base64
from array import array
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema
import pytest

from gateway import json_codec
from gateway.mock import MockUpstream
from gateway.mock.images import PNG_B64
from tests.support.gateway_proc import UPSTREAM_KEY
from tests.support.openapi import stream_event_schemas, validate

USER = [{"role": "user", "content": "What colour is the sky?"}]
PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
CHAT_TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": PARAMS}}]
RESPONSE_TOOLS = [{"type": "function", "name": "weather", "parameters": PARAMS, "strict": True}]
SCHEMA = {
    "type": "object",
    "properties": {"colour": {"type": "string", "enum": ["blue", "grey"]}},
    "required": ["colour"],
    "additionalProperties": False,
}
CHAT_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "c", "schema": SCHEMA, "strict": True},
}
TEXT_FORMAT = {"type": "json_schema", "name": "c", "schema": SCHEMA, "strict": True}

CHATS: dict[str, dict[str, Any]] = {
    "plain": {},
    "n2_limited": {"n": 2, "max_completion_tokens": 4},
    "reasoning": {"model": "o3-mini"},
    "tools": {"tools": CHAT_TOOLS},
    "named_tool": {
        "tools": CHAT_TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
    },
    "structured": {"response_format": CHAT_FORMAT},
    "json_object": {"response_format": {"type": "json_object"}},
}
RESPONSES: dict[str, dict[str, Any]] = {
    "plain": {},
    "reasoning": {"model": "gpt-5-mini", "reasoning": {"effort": "low"}},
    "incomplete": {"max_output_tokens": 3},
    "reasoning_only": {"model": "o4-mini", "max_output_tokens": 5},
    "tools": {"tools": RESPONSE_TOOLS},
    "tool_output": {
        "tools": RESPONSE_TOOLS,
        "input": [
            {"role": "user", "content": "weather?"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ],
    },
    "structured": {"text": {"format": TEXT_FORMAT}, "instructions": "Answer in JSON."},
}


def drop_null(obj: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``obj`` without ``keys`` that are null: for the few fields the real API sends as null
    though the spec types them as non-null (``usage`` of an in-progress response,
    ``expires_at`` and ``status_details`` of a file), and the mock copies the real API."""
    return {k: v for k, v in obj.items() if not (k in keys and v is None)}


class Api:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
        async with self.session.request(method, self.url + path, **kwargs) as resp:
            return resp.status, await resp.read()

    async def json(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        got, body = await self.call(method, path, **kwargs)
        assert got == status, body[:300]
        return json_codec.loads(body)

    async def sse(self, path: str, body: dict[str, Any]) -> list[Any]:
        got, raw = await self.call("POST", path, json={**body, "stream": True})
        assert got == 200
        data = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
        return [json_codec.loads(d) for d in data if d != b"[DONE]"]


@pytest.fixture
async def api(upstream: MockUpstream) -> AsyncIterator[Api]:
    headers = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        yield Api(session, upstream.url)


def upload(**fields: Any) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in fields.items():
        if isinstance(value, bytes):
            form.add_field(name, value, filename=f"{name}.bin")
        else:
            form.add_field(name, str(value))
    return form


@pytest.mark.parametrize("case", CHATS)
async def test_chat_completion_and_chunks(api: Api, case: str) -> None:
    body = {"model": "gpt-4o-mini", "messages": USER, **CHATS[case]}
    validate(await api.json("POST", "/chat/completions", json=body), "CreateChatCompletionResponse")
    chunks = await api.sse("/chat/completions", {**body, "stream_options": {"include_usage": True}})
    assert chunks[-1]["usage"] is not None
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")


@pytest.mark.parametrize("case", RESPONSES)
async def test_response_object_and_every_event(api: Api, case: str) -> None:
    body = {"model": "gpt-4o-mini", "input": "Hello there", **RESPONSES[case]}
    validate(await api.json("POST", "/responses", json=body), "Response")
    by_type = stream_event_schemas()
    events = await api.sse("/responses", body)
    for event in events:
        assert event["type"] in by_type, event["type"]
        if isinstance(event.get("response"), dict):
            event["response"] = drop_null(event["response"], "usage")
        validate(event, by_type[event["type"]])
        validate(event, "ResponseStreamEvent")


async def test_completions(api: Api) -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": ["a", "b"], "n": 2}
    validate(await api.json("POST", "/completions", json=body), "CreateCompletionResponse")
    chunks = await api.sse("/completions", body)
    # The spec has no chunk schema for legacy completions: only chunks with a finish reason
    # (not the streamed null) and at least one choice fit the non-stream one.
    for chunk in chunks:
        if chunk["choices"] and chunk["choices"][0]["finish_reason"] is not None:
            validate(chunk, "CreateCompletionResponse")


@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_embeddings(api: Api, encoding: str) -> None:
    body = {"model": "text-embedding-3-small", "input": ["a", "b"], "encoding_format": encoding}
    result = await api.json("POST", "/embeddings", json=body)
    if encoding == "base64":
        # The spec only types the float form; the base64 one is that array, packed.
        for item in result["data"]:
            item["embedding"] = array("f", base64.b64decode(item["embedding"])).tolist()
    validate(result, "CreateEmbeddingResponse")


async def test_images(api: Api) -> None:
    for model in ("dall-e-3", "gpt-image-1"):
        body = {"model": model, "prompt": "a cat"}
        validate(await api.json("POST", "/images/generations", json=body), "ImagesResponse")
    for event in await api.sse("/images/generations", {"model": "gpt-image-1", "prompt": "x"}):
        validate(event, "ImageGenCompletedEvent")
    png = base64.b64decode(PNG_B64)
    edit = upload(model="gpt-image-1", prompt="a hat", image=png)
    validate(await api.json("POST", "/images/edits", data=edit), "ImagesResponse")
    streamed = upload(model="gpt-image-1", prompt="a hat", image=png, stream="true")
    status, raw = await api.call("POST", "/images/edits", data=streamed)
    assert status == 200
    for line in raw.split(b"\n"):
        if line.startswith(b"data: "):
            validate(json_codec.loads(line[6:]), "ImageEditCompletedEvent")
    variation = upload(image=png, n=2)
    validate(await api.json("POST", "/images/variations", data=variation), "ImagesResponse")


async def test_models(api: Api) -> None:
    validate(await api.json("GET", "/models"), "ListModelsResponse")
    validate(await api.json("GET", "/models/gpt-4o-mini"), "Model")


async def test_files(api: Api) -> None:
    created = await api.json("POST", "/files", data=upload(purpose="batch", file=b"{}\n"))
    validate(drop_null(created, "status_details", "expires_at"), "OpenAIFile")
    listed = await api.json("GET", "/files")
    listed["data"] = [drop_null(f, "status_details", "expires_at") for f in listed["data"]]
    validate(listed, "ListFilesResponse")
    fetched = await api.json("GET", f"/files/{created['id']}")
    validate(drop_null(fetched, "status_details", "expires_at"), "OpenAIFile")
    validate(await api.json("DELETE", f"/files/{created['id']}"), "DeleteFileResponse")


async def test_moderations(api: Api) -> None:
    body = {"input": ["hello", "there"]}
    validate(await api.json("POST", "/moderations", json=body), "CreateModerationResponse")


async def test_audio(api: Api) -> None:
    audio = b"\x00" * 40_000
    for model in ("gpt-4o-transcribe", "whisper-1"):
        result = await api.json(
            "POST", "/audio/transcriptions", data=upload(model=model, file=audio)
        )
        validate(result, "CreateTranscriptionResponseJson")
    streamed = upload(model="gpt-4o-mini-transcribe", file=audio, stream="true")
    status, raw = await api.call("POST", "/audio/transcriptions", data=streamed)
    assert status == 200
    events = [json_codec.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1]["type"] == "transcript.text.done"
    for event in events:
        validate(event, "CreateTranscriptionResponseStreamEvent")
    verbose = upload(model="whisper-1", file=audio, response_format="verbose_json")
    result = await api.json("POST", "/audio/transcriptions", data=verbose)
    validate(result, "CreateTranscriptionResponseVerboseJson")
    translated = await api.json(
        "POST", "/audio/translations", data=upload(model="whisper-1", file=audio)
    )
    validate(translated, "CreateTranslationResponseJson")


async def test_stored_responses_and_conversations(api: Api) -> None:
    body = {"model": "gpt-4o-mini", "input": RESPONSES["tool_output"]["input"]}
    created = await api.json("POST", "/responses", json=body)
    validate(await api.json("GET", f"/responses/{created['id']}"), "Response")
    items = await api.json("GET", f"/responses/{created['id']}/input_items")
    validate(items, "ResponseItemList")
    conversation = await api.json("POST", "/conversations", json={"metadata": {"k": "v"}})
    validate(conversation, "ConversationResource")
    deleted = await api.json("DELETE", f"/conversations/{conversation['id']}")
    validate(deleted, "DeletedConversationResource")


async def test_errors(api: Api) -> None:
    validate(await api.json("GET", "/files/file-nope", status=404), "ErrorResponse")
    headers = {"x-mock-status": "429"}
    error = await api.json("POST", "/chat/completions", status=429, json={}, headers=headers)
    validate(error, "ErrorResponse")


def test_the_validator_rejects_what_the_spec_forbids() -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate({"object": "list"}, "ListModelsResponse")
    with pytest.raises(jsonschema.ValidationError):
        validate({"type": "response.output_text.delta", "delta": 1}, "ResponseStreamEvent")
