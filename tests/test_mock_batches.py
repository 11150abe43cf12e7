"""The mock's batches and background responses, through the official SDK."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from gateway.mock import MockUpstream
from tests.support.gateway_proc import UPSTREAM_KEY

NOW = {"x-mock-batch-delay-ms": "0"}
LATER = {"x-mock-batch-delay-ms": "600000"}


@pytest.fixture
async def client(upstream: MockUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=upstream.url, api_key=UPSTREAM_KEY, max_retries=0)
    yield sdk
    await sdk.close()


def chat_line(i: int, **body: Any) -> bytes:
    line = {
        "custom_id": f"r{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]} | body,
    }
    return json.dumps(line).encode() + b"\n"


async def upload(client: openai.AsyncOpenAI, data: bytes) -> str:
    return (await client.files.create(file=("in.jsonl", data), purpose="batch")).id


async def lines(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    raw = (await client.files.content(file_id)).read()
    return [json.loads(line) for line in raw.splitlines()]


async def test_a_batch_completes_with_per_line_usage(client: openai.AsyncOpenAI) -> None:
    data = b"".join(chat_line(i, max_tokens=100) for i in range(3)) + b"not json\n"
    file_id = await upload(client, data)
    created = await client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_headers=NOW,
    )
    assert created.status == "in_progress"
    done = await client.batches.retrieve(created.id)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == 3
    assert done.request_counts.failed == 1
    output = await lines(client, done.output_file_id)
    assert [line["custom_id"] for line in output] == ["r0", "r1", "r2"]
    assert all(line["response"]["body"]["usage"]["completion_tokens"] > 0 for line in output)
    (error,) = await lines(client, done.error_file_id)
    assert "Line 4" in error["error"]["message"]
    assert [b.id async for b in client.batches.list()] == [created.id]


async def test_a_cancelled_batch_keeps_what_finished(client: openai.AsyncOpenAI) -> None:
    file_id = await upload(client, chat_line(0))
    created = await client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_headers=LATER,
    )
    assert (await client.batches.retrieve(created.id)).status == "in_progress"
    cancelled = await client.batches.cancel(created.id)
    assert cancelled.status == "cancelled" and cancelled.output_file_id is None
    assert cancelled.request_counts is not None and cancelled.request_counts.completed == 0


async def test_a_background_response_goes_queued_to_completed(client: openai.AsyncOpenAI) -> None:
    queued = await client.responses.create(
        model="gpt-4o-mini",
        input="later",
        background=True,
        extra_headers={"x-mock-background-delay-ms": "600000"},
    )
    assert queued.status == "queued" and queued.usage is None
    assert (await client.responses.retrieve(queued.id)).status == "queued"
    cancelled = await client.responses.cancel(queued.id)
    assert cancelled.status == "cancelled" and cancelled.usage is not None
    assert cancelled.usage.output_tokens == 0
    quick = await client.responses.create(
        model="gpt-4o-mini",
        input="now",
        background=True,
        extra_headers={"x-mock-background-delay-ms": "0"},
    )
    done = await client.responses.retrieve(quick.id)
    assert done.status == "completed" and done.usage is not None and done.usage.output_tokens > 0
    assert (await client.responses.cancel(quick.id)).status == "completed"


async def test_a_background_response_streams_once_finished(client: openai.AsyncOpenAI) -> None:
    created = await client.responses.create(
        model="gpt-4o-mini",
        input="stream me",
        background=True,
        extra_headers={"x-mock-background-delay-ms": "50"},
    )
    stream = await client.responses.retrieve(created.id, stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage is not None


async def test_a_batch_cancelled_mid_way_keeps_its_finished_lines(
    client: openai.AsyncOpenAI,
) -> None:
    file_id = await upload(client, b"".join(chat_line(i, max_tokens=50) for i in range(10)))
    created = await client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_headers={"x-mock-batch-delay-ms": "3000"},
    )
    seen = await client.batches.retrieve(created.id)
    deadline = time.monotonic() + 10
    while seen.request_counts is None or seen.request_counts.completed == 0:
        assert time.monotonic() < deadline, "no line ever finished"
        seen = await client.batches.retrieve(created.id)
    assert seen.status == "in_progress" and seen.output_file_id is None  # counts grow as it runs
    cancelled = await client.batches.cancel(created.id)
    assert cancelled.status == "cancelled" and cancelled.request_counts is not None
    assert seen.request_counts.completed <= cancelled.request_counts.completed < 10
    output = await lines(client, cancelled.output_file_id)
    assert len(output) == cancelled.request_counts.completed
    assert [line["custom_id"] for line in output] == [f"r{i}" for i in range(len(output))]
    assert all(line["response"]["body"]["usage"]["completion_tokens"] > 0 for line in output)


async def test_poll_failures_fail_the_next_retrieves(client: openai.AsyncOpenAI) -> None:
    file_id = await upload(client, chat_line(0))
    created = await client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_headers={**LATER, "x-mock-batch-poll-failures": "2"},
    )
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await client.batches.retrieve(created.id)
    assert (await client.batches.retrieve(created.id)).status == "in_progress"


async def test_a_background_response_cancelled_while_running_reports_partial_usage(
    client: openai.AsyncOpenAI,
) -> None:
    full = 400
    created = await client.responses.create(
        model="gpt-4o-mini",
        input="take your time",
        background=True,
        extra_headers={"x-mock-background-delay-ms": "2000", "x-mock-completion-tokens": str(full)},
    )
    assert created.status == "queued"
    seen = await client.responses.retrieve(created.id)
    deadline = time.monotonic() + 10
    while seen.status == "queued":
        assert time.monotonic() < deadline, "it never started"
        seen = await client.responses.retrieve(created.id)
    assert seen.status == "in_progress" and seen.usage is None
    cancelled = await client.responses.cancel(created.id)
    assert cancelled.status == "cancelled" and cancelled.usage is not None
    assert 0 < cancelled.usage.output_tokens < full
    assert (
        cancelled.usage.total_tokens == cancelled.usage.input_tokens + cancelled.usage.output_tokens
    )
    again = await client.responses.retrieve(created.id)
    assert again.status == "cancelled" and again.usage == cancelled.usage
