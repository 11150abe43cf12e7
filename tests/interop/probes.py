"""What the running mock upstream can do, asked of the mock itself (not through the gateway).

Tools, structured output, files and audio are being added to the mock; until they land, the
tests that need them skip with the reason below instead of failing on lorem text or a 404.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from tests.support.gateway_proc import UPSTREAM_KEY

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
EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "day": {"type": "string", "enum": ["mon", "tue", "wed"]},
        "guests": {"type": "integer"},
    },
    "required": ["name", "day", "guests"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class MockFeatures:
    tools: bool
    structured_output: bool
    files: bool
    transcriptions: bool
    embedding_dimensions_param: bool

    def require(self, feature: str) -> None:
        """Skip the calling test when the mock lacks ``feature``."""
        import pytest

        if not getattr(self, feature):
            pytest.skip(f"the mock upstream does not support {feature} yet (branch house-mock)")


def _call(base_url: str, path: str, body: bytes, content_type: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        base_url + path,
        data=body,
        headers={"Authorization": f"Bearer {UPSTREAM_KEY}", "Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def _post_json(base_url: str, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
    return _call(base_url, path, json.dumps(payload).encode(), "application/json")


def _multipart(fields: dict[str, str], file_field: str, filename: str, data: bytes) -> bytes:
    boundary = "interop-probe-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        + data
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def _multipart_ok(base_url: str, path: str, fields: dict[str, str], filename: str) -> bool:
    body = _multipart(fields, "file", filename, b"probe")
    content_type = "multipart/form-data; boundary=interop-probe-boundary"
    status, _ = _call(base_url, path, body, content_type)
    return status != 404


def probe(mock_url: str) -> MockFeatures:
    messages = [{"role": "user", "content": "probe"}]
    _, tools = _post_json(
        mock_url,
        "/chat/completions",
        {"model": "gpt-4o-mini", "messages": messages, "tools": [WEATHER_TOOL]},
    )
    _, structured = _post_json(
        mock_url,
        "/chat/completions",
        {
            "model": "gpt-4o-mini",
            "messages": messages,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "event", "schema": EVENT_SCHEMA, "strict": True},
            },
        },
    )
    _, embedded = _post_json(
        mock_url,
        "/embeddings",
        {"model": "text-embedding-3-small", "input": "probe", "dimensions": 4},
    )
    return MockFeatures(
        tools=bool(tools and tools["choices"][0]["message"].get("tool_calls")),
        structured_output=bool(structured) and _is_json_object(structured),
        files=_multipart_ok(mock_url, "/files", {"purpose": "user_data"}, "probe.txt"),
        transcriptions=_multipart_ok(
            mock_url, "/audio/transcriptions", {"model": "whisper-1"}, "probe.wav"
        ),
        embedding_dimensions_param=bool(embedded) and len(embedded["data"][0]["embedding"]) == 4,
    )


def _is_json_object(completion: dict[str, Any]) -> bool:
    try:
        value = json.loads(completion["choices"][0]["message"]["content"] or "")
    except ValueError:
        return False
    return isinstance(value, dict)


def mock_embedding_size(mock_url: str, model: str) -> int:
    """The vector size the mock itself returns for ``model`` (the gateway must not change it)."""
    status, body = _post_json(mock_url, "/embeddings", {"model": model, "input": "size"})
    assert status == 200, body
    return len(body["data"][0]["embedding"])
