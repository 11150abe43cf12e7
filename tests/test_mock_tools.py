"""The mock's tool calls and structured outputs, through the official SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import openai
import pytest

from gateway.mock import MockUpstream
from tests.support.gateway_proc import UPSTREAM_KEY

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["c", "f"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
ASK = [{"role": "user", "content": "Weather in Paris?"}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": ["integer", "null"]},
        "pets": {"type": "array", "items": {"$ref": "#/$defs/pet"}, "minItems": 1},
    },
    "required": ["name", "age", "pets"],
    "additionalProperties": False,
    "$defs": {
        "pet": {
            "type": "object",
            "properties": {"species": {"type": "string", "enum": ["cat", "dog"]}},
            "required": ["species"],
            "additionalProperties": False,
        }
    },
}


@pytest.fixture
async def client(upstream: MockUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=upstream.url, api_key=UPSTREAM_KEY, max_retries=0)
    yield sdk
    await sdk.close()


async def test_chat_auto_calls_a_tool_then_answers_the_tool_result(
    client: openai.AsyncOpenAI,
) -> None:
    first = await client.chat.completions.create(model="gpt-4o-mini", messages=ASK, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)
    assert first.usage is not None and first.usage.completion_tokens > 0
    follow_up: list[Any] = [
        *ASK,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"},
    ]
    second = await client.chat.completions.create(
        model="gpt-4o-mini", messages=follow_up, tools=TOOLS
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls


@pytest.mark.parametrize(
    ("tool_choice", "called"),
    [
        ("none", None),
        ("required", "get_weather"),
        ({"type": "function", "function": {"name": "get_time"}}, "get_time"),
    ],
)
async def test_chat_tool_choice(client: openai.AsyncOpenAI, tool_choice: Any, called: Any) -> None:
    result = await client.chat.completions.create(
        model="gpt-4o-mini", messages=ASK, tools=TOOLS, tool_choice=tool_choice
    )
    calls = result.choices[0].message.tool_calls
    assert (calls[0].function.name if calls else None) == called


async def test_chat_unknown_named_tool_is_refused(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="nope"):
        await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=ASK,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )


async def test_chat_tool_call_streams_like_openai(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=ASK,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    head = (deltas[0].tool_calls or [])[0]
    assert deltas[0].role == "assistant"
    assert head.id and head.type == "function" and head.function is not None
    assert head.function.name == "get_weather" and head.function.arguments == ""
    parts = [(d.tool_calls or [])[0].function for d in deltas[1:] if d.tool_calls]
    assert all(p is not None and p.name is None for p in parts)
    arguments = "".join(p.arguments or "" for p in parts if p is not None)
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMS)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(parts)
    whole = await client.chat.completions.create(model="gpt-4o-mini", messages=ASK, tools=TOOLS)
    assert (whole.choices[0].message.tool_calls or [])[0].function.arguments == arguments


async def test_chat_structured_outputs(client: openai.AsyncOpenAI) -> None:
    fmt: Any = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": True},
    }
    result = await client.chat.completions.create(
        model="gpt-4o-mini", messages=ASK, response_format=fmt
    )
    text = result.choices[0].message.content or ""
    jsonschema.validate(json.loads(text), PERSON)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=ASK, response_format=fmt, stream=True
    )
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert streamed == text
    loose = await client.chat.completions.create(
        model="gpt-4o-mini", messages=ASK, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(loose.choices[0].message.content or ""), dict)


async def test_chat_structured_output_cut_at_the_limit(client: openai.AsyncOpenAI) -> None:
    result = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=ASK,
        max_completion_tokens=2,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
    )
    assert result.choices[0].finish_reason == "length"
    assert len(result.choices[0].message.content or "") <= 8


RESPONSE_TOOLS: list[Any] = [
    {"type": "function", "name": "get_weather", "parameters": WEATHER_PARAMS, "strict": True}
]


async def test_responses_function_call_round_trip(client: openai.AsyncOpenAI) -> None:
    first = await client.responses.create(
        model="gpt-4o-mini", input="Weather in Paris?", tools=RESPONSE_TOOLS
    )
    (call,) = first.output
    assert call.type == "function_call" and call.status == "completed"
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER_PARAMS)
    assert [t.name for t in first.tools if t.type == "function"] == ["get_weather"]
    second = await client.responses.create(
        model="gpt-4o-mini",
        tools=RESPONSE_TOOLS,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call_output", "call_id": call.call_id, "output": "18C"},
        ],
    )
    assert second.output[0].type == "message" and second.output_text


async def test_responses_function_call_stream_events(client: openai.AsyncOpenAI) -> None:
    stream = await client.responses.create(
        model="gpt-4o-mini", input="Weather?", tools=RESPONSE_TOOLS, stream=True
    )
    events = [event async for event in stream]
    types = [e.type for e in events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert types[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert "".join(deltas) == done.arguments and done.name == "get_weather"
    jsonschema.validate(json.loads(done.arguments), WEATHER_PARAMS)


async def test_responses_structured_output(client: openai.AsyncOpenAI) -> None:
    fmt: Any = {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
    result = await client.responses.create(model="gpt-4o-mini", input="Who?", text={"format": fmt})
    jsonschema.validate(json.loads(result.output_text), PERSON)
    assert result.text is not None and result.text.format is not None
    assert result.text.format.type == "json_schema"
