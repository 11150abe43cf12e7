"""openai-python through the gateway on the mock upstream's richer features: tool loops,
structured output, files and audio."""

from __future__ import annotations

import io
import json
import wave
from typing import Any, Literal, cast

from pydantic import BaseModel

from tests.interop.python_clients import client
from tests.interop.stack import Stack

MODEL = "gpt-4o-mini"
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
# Plain dicts, as a team would write them (the SDK's TypedDicts are for static checking only).
TOOLS: Any = [WEATHER_TOOL]


class Event(BaseModel):
    name: str
    day: Literal["mon", "tue", "wed"]
    guests: int


def test_chat_tool_loop(stack: Stack) -> None:
    sdk = client(stack)
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = sdk.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)

    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'})
    second = sdk.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls


def test_chat_tool_call_streams_argument_deltas(stack: Stack) -> None:
    stream = client(stack).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=TOOLS,
        tool_choice=cast(Any, {"type": "function", "function": {"name": "get_weather"}}),
        stream=True,
    )
    pieces: list[str] = []
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.function and delta.function.arguments:
                    pieces.append(delta.function.arguments)
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert isinstance(json.loads("".join(pieces))["city"], str)


def test_responses_tool_loop(stack: Stack) -> None:
    sdk = client(stack)
    tool: Any = {"type": "function", **WEATHER_TOOL["function"]}
    first = sdk.responses.create(model=MODEL, input="Weather in Lima?", tools=[tool])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    turns: Any = [
        {"role": "user", "content": "Weather in Lima?"},
        calls[0].model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "18C"},
    ]
    second = sdk.responses.create(model=MODEL, tools=[tool], input=turns)
    assert second.output_text
    assert all(item.type != "function_call" for item in second.output)


def test_structured_output_parse(stack: Stack) -> None:
    completion = client(stack).chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Plan a party."}],
        response_format=Event,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Event)
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_responses_structured_output_parse(stack: Stack) -> None:
    response = client(stack).responses.parse(model=MODEL, input="Plan a party.", text_format=Event)
    assert isinstance(response.output_parsed, Event)


def test_files_upload_and_download(stack: Stack) -> None:
    sdk = client(stack)
    content = b'{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
    created = sdk.files.create(file=("batch.jsonl", content), purpose="batch")
    assert created.filename == "batch.jsonl" and created.bytes == len(content)
    assert sdk.files.retrieve(created.id).id == created.id
    assert sdk.files.content(created.id).read() == content


def _silent_wav() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"\0\0" * 800)
    return out.getvalue()


def test_transcription(stack: Stack) -> None:
    result = client(stack).audio.transcriptions.create(
        model="whisper-1", file=("silence.wav", _silent_wav())
    )
    assert isinstance(result.text, str)
