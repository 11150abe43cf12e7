"""openai-node against the gateway: node/scenarios.mjs runs every scenario in one process; the
tests here assert on the JSON it prints.

The tests wait for ``npm ci`` (the ``node_sdk`` fixture); conftest gives them a pytest timeout
above its bound."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.interop.npm import NODE_RUN_TIMEOUT_SECONDS
from tests.interop.recording import parse_sse
from tests.interop.stack import CAPPED_TEAMS, Stack
from tests.support.openapi import validate

# The real models' sizes (OpenAI's documentation), not whatever the mock happens to return.
EMBEDDING_SIZES = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}
SCENARIOS = [
    "models",
    "chat",
    "reasoning",
    "images",
    "timeout",
    "chat_stream",
    "chat_stream_cut",
    "responses",
    "responses_stream",
    "responses_stream_cut",
    "embeddings",
    "errors",
    "quota",
    "retries",
    "embeddings_dimensions",
    "tools",
    "structured",
    "files",
    "transcription",
]


@pytest.fixture(scope="module")
def node_results(node_sdk: Path, stack: Stack) -> dict[str, Any]:
    teams = ["ml", "web", *[t for t, sdk in CAPPED_TEAMS.items() if sdk == "node"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["INTEROP_BASE_URL"] = stack.url
    env["INTEROP_TOKENS"] = json.dumps({team: stack.token(team) for team in teams})
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run(
        [node, "scenarios.mjs", *SCENARIOS],
        cwd=node_sdk,
        env=env,
        capture_output=True,
        text=True,
        timeout=NODE_RUN_TIMEOUT_SECONDS,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results: dict[str, Any] = json.loads(done.stdout)
    return results


def value(results: dict[str, Any], name: str) -> Any:
    result = results[name]
    assert result["ok"], result["error"]
    return result["value"]


def test_models_list(node_results: dict[str, Any]) -> None:
    assert "gpt-4o-mini" in value(node_results, "models")["ids"]


def test_chat(node_results: dict[str, Any]) -> None:
    got = value(node_results, "chat")
    assert got["finish"] == "stop" and got["content"]
    usage = got["usage"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_reasoning_usage(node_results: dict[str, Any]) -> None:
    got = value(node_results, "reasoning")
    assert got["chat"] and got["responses"]


def test_images(node_results: dict[str, Any]) -> None:
    got = value(node_results, "images")
    assert got["b64"] > 0 and got["usage"]["total_tokens"] > 0


def test_client_timeout(node_results: dict[str, Any]) -> None:
    assert value(node_results, "timeout")["error"]["name"] == "APIConnectionTimeoutError"


def test_chat_stream_with_and_without_usage(node_results: dict[str, Any]) -> None:
    got = value(node_results, "chat_stream")
    with_usage, plain = got["withUsage"], got["plain"]
    assert with_usage["text"] and with_usage["usageChunks"] == 1
    last = with_usage["last"]
    assert last["choices"] == 0 and last["usage"]["completion_tokens"] > 0
    assert plain["chunks"] > 1 and plain["usageChunks"] == 0
    assert plain["text"] == with_usage["text"]


def test_chat_stream_cut_by_upstream_raises(node_results: dict[str, Any]) -> None:
    got = value(node_results, "chat_stream_cut")
    assert got["received"] == 5
    assert got["error"] is not None and got["error"]["isAPIError"], got["error"]


def test_responses(node_results: dict[str, Any]) -> None:
    got = value(node_results, "responses")
    assert got["status"] == "completed" and got["text"]
    usage = got["usage"]
    assert usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_responses_stream(node_results: dict[str, Any]) -> None:
    got = value(node_results, "responses_stream")
    assert got["types"][0] == "response.created" and got["types"][-1] == "response.completed"
    assert "response.output_text.delta" in got["types"]
    assert got["sequence"] == sorted(set(got["sequence"]))
    assert got["usage"]["output_tokens"] > 0 and got["usage"]["input_tokens"] > 0


def test_responses_stream_cut_ends_with_a_responses_error_event(
    node_results: dict[str, Any],
) -> None:
    # Like openai-python, openai-node yields a Responses `error` event as a typed event (it
    # throws only on chat-style `{"error": {...}}` data).
    got = value(node_results, "responses_stream_cut")
    events = got["events"]
    assert len(events) == 6 and all(e["type"] != "response.completed" for e in events)
    last = events[-1]
    assert last["type"] == "error" and last["sequence_number"] == events[-2]["sequence_number"] + 1
    assert last["code"] and last["message"] and "param" in last

    raw = parse_sse(got["raw"].encode())
    assert [e.event for e in raw] == [e["type"] for e in events]
    assert raw[-1].event == "error" and json.loads(raw[-1].data) == last
    validate(last, "ResponseErrorEvent")  # the official spec's schema


def test_embeddings_have_the_models_sizes(node_results: dict[str, Any]) -> None:
    got = value(node_results, "embeddings")
    assert set(got) == set(EMBEDDING_SIZES)
    for model, sizes in got.items():
        # "default": the SDK asked for base64 and decoded it to floats itself.
        assert sizes["default"] == sizes["float"] == EMBEDDING_SIZES[model], model
        assert sizes["same"], model  # both encodings decode to the same vector
        assert sizes["usage"]["prompt_tokens"] > 0


def test_embeddings_dimensions(node_results: dict[str, Any]) -> None:
    got = value(node_results, "embeddings_dimensions")
    assert got == {"text-embedding-3-small": 256, "text-embedding-3-large": 1024}


def test_error_types(node_results: dict[str, Any]) -> None:
    got = value(node_results, "errors")
    assert got["auth"]["name"] == "AuthenticationError" and got["auth"]["status"] == 401
    assert got["auth"]["code"] == "invalid_api_key"
    assert got["permission"]["name"] == "PermissionDeniedError"
    assert got["permission"]["status"] == 403
    assert got["badRequest"]["name"] == "BadRequestError" and got["badRequest"]["status"] == 400


def test_quota_exceeded_is_rate_limit_error(node_results: dict[str, Any]) -> None:
    got = value(node_results, "quota")
    assert got["first"] is None
    assert got["second"]["name"] == "RateLimitError" and got["second"]["status"] == 429


def test_server_errors_are_retried_through_the_gateway(node_results: dict[str, Any]) -> None:
    got = value(node_results, "retries")
    assert got["error"]["name"] == "InternalServerError" and got["error"]["status"] == 500
    assert got["attempts"] == 2


def test_tool_loop(node_results: dict[str, Any]) -> None:
    got = value(node_results, "tools")
    assert got["first"]["finish"] == "tool_calls" and got["first"]["name"] == "get_weather"
    arguments = json.loads(got["first"]["arguments"])
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
    assert got["second"]["finish"] == "stop" and got["second"]["content"]
    runner = got["runner"]
    assert len(runner["called"]) == 1 and isinstance(runner["called"][0]["city"], str)
    assert runner["finalContent"]


def test_structured_output_parse(node_results: dict[str, Any]) -> None:
    got = value(node_results, "structured")
    for parsed in (got["parsed"], got["responses"]):  # chat `parse` and Responses `parse`
        assert set(parsed) == {"name", "day", "guests"}
        assert isinstance(parsed["name"], str) and parsed["day"] in {"mon", "tue", "wed"}
        assert isinstance(parsed["guests"], int)


def test_files_upload_and_download(node_results: dict[str, Any]) -> None:
    got = value(node_results, "files")
    assert got["same"]
    assert got["created"]["id"] == got["retrieved"]["id"]
    assert got["created"]["purpose"] == "batch" and got["created"]["filename"] == "batch.jsonl"


def test_transcription(node_results: dict[str, Any]) -> None:
    assert isinstance(value(node_results, "transcription")["text"], str)
