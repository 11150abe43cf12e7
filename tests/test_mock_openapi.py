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
    ``expires_at`` and ``status_details`` of a file, a batch's files and timestamps not reached
    yet, as in the spec's own batch example), and the mock copies the real API."""
    return {k: v for k, v in obj.items() if not (k in keys and v is None)}


# A batch's fields the real API sends as null until they apply (the spec's example does too).
BATCH_NULLS = (
    "errors",
    "output_file_id",
    "error_file_id",
    *(f"{step}_at" for step in ("finalizing", "completed", "failed", "expired")),
    *(f"{step}_at" for step in ("cancelling", "cancelled")),
)
NOW = {"x-mock-batch-delay-ms": "0", "x-mock-background-delay-ms": "0"}
LATER = {"x-mock-batch-delay-ms": "600000", "x-mock-background-delay-ms": "600000"}


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

    async def sse(self, path: str, body: dict[str, Any] | None = None) -> list[Any]:
        """The events of a stream: POSTed with ``"stream": true``, or a GET without a body."""
        if body is None:
            got, raw = await self.call("GET", path)
        else:
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


def validate_events(events: list[Any]) -> None:
    """Each Responses stream event against its own schema and the ``ResponseStreamEvent`` union."""
    by_type = stream_event_schemas()
    for event in events:
        assert event["type"] in by_type, event["type"]
        if isinstance(event.get("response"), dict):
            event["response"] = drop_null(event["response"], "usage")
        validate(event, by_type[event["type"]])
        validate(event, "ResponseStreamEvent")


@pytest.mark.parametrize("case", RESPONSES)
async def test_response_object_and_every_event(api: Api, case: str) -> None:
    body = {"model": "gpt-4o-mini", "input": "Hello there", **RESPONSES[case]}
    validate(await api.json("POST", "/responses", json=body), "Response")
    validate_events(await api.sse("/responses", body))


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
    path = f"/conversations/{conversation['id']}"
    validate(await api.json("GET", path), "ConversationResource")
    updated = await api.json("POST", path, json={"metadata": {"k": "w", "x": "y"}})
    validate(updated, "ConversationResource")
    assert updated["metadata"] == {"k": "w", "x": "y"}
    validate(await api.json("DELETE", path), "DeletedConversationResource")
    validate(await api.json("GET", path, status=404), "ErrorResponse")


async def test_background_responses_retrieve_cancel_and_delete(api: Api) -> None:
    body = {"model": "gpt-4o-mini", "input": "Hello there", "background": True}
    queued = await api.json("POST", "/responses", json=body, headers=LATER)
    assert queued["status"] == "queued" and queued["usage"] is None
    validate(drop_null(queued, "usage"), "Response")
    path = f"/responses/{queued['id']}"
    validate(drop_null(await api.json("GET", path), "usage"), "Response")
    cancelled = await api.json("POST", path + "/cancel")
    assert cancelled["status"] == "cancelled"
    validate(cancelled, "Response")
    validate(await api.json("GET", path), "Response")

    done = await api.json("POST", "/responses", json=body, headers=NOW)
    path = f"/responses/{done['id']}"
    retrieved = await api.json("GET", path)
    assert retrieved["status"] == "completed"
    validate(retrieved, "Response")
    events = await api.sse(path + "?stream=true")
    assert events[-1]["type"] == "response.completed"
    validate_events(events)
    # The spec gives the delete answer no schema, only this example's shape.
    deleted = await api.json("DELETE", path)
    assert deleted == {"id": done["id"], "object": "response", "deleted": True}
    validate(await api.json("DELETE", path, status=404), "ErrorResponse")
    validate(await api.json("POST", path + "/cancel", status=404), "ErrorResponse")

    stored = await api.json("POST", "/responses", json={"model": "gpt-4o-mini", "input": "x"})
    refused = await api.json("POST", f"/responses/{stored['id']}/cancel", status=400)
    validate(refused, "ErrorResponse")


def batch_line(i: int) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": USER}
    line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json_codec.dumps(line) + b"\n"


async def batch_answers(api: Api) -> dict[str, Any]:
    """A batch's create, retrieve (completed), list and cancel answers, as the mock sends them."""
    data = batch_line(0) + batch_line(1)
    file = await api.json("POST", "/files", data=upload(purpose="batch", file=data))
    body = {
        "input_file_id": file["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    created = await api.json("POST", "/batches", json=body, headers=NOW)
    retrieved = await api.json("GET", f"/batches/{created['id']}")
    assert retrieved["status"] == "completed"
    later = await api.json("POST", "/batches", json=body, headers=LATER)
    cancelled = await api.json("POST", f"/batches/{later['id']}/cancel")
    assert cancelled["status"] == "cancelled"
    listed = await api.json("GET", "/batches")
    assert [b["id"] for b in listed["data"]] == [later["id"], created["id"]]
    return {"created": created, "retrieved": retrieved, "cancelled": cancelled, "list": listed}


def fitted_batch(batch: dict[str, Any], *, keep_usage: bool) -> dict[str, Any]:
    fitted = drop_null(batch, *BATCH_NULLS)
    if not keep_usage:
        fitted.pop("usage", None)
    return fitted


async def test_batches_create_retrieve_list_cancel(api: Api) -> None:
    # Usage is checked against the spec on its own (below), and only its totals here.
    answers = await batch_answers(api)
    for name in ("created", "retrieved", "cancelled"):
        validate(fitted_batch(answers[name], keep_usage=False), "Batch")
    listed = answers["list"]
    listed["data"] = [fitted_batch(b, keep_usage=False) for b in listed["data"]]
    validate(listed, "ListBatchesResponse")
    usage = answers["retrieved"]["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_finished_batch_usage(api: Api) -> None:
    answers = await batch_answers(api)
    for name in ("retrieved", "cancelled"):
        validate(fitted_batch(answers[name], keep_usage=True), "Batch")


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
