"""openai-python clients on the interop gateway, closed after each test (conftest), so their
pooled connections do not surface later as unclosed-socket warnings in another test."""

from __future__ import annotations

from typing import Any

import httpx2 as httpx
import openai

from tests.interop.recording import RecordingTransport
from tests.interop.stack import Stack

_open: list[openai.OpenAI] = []


def client(stack: Stack, team: str = "ml", **kw: Any) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    kw.setdefault("api_key", stack.token(team))
    sdk = openai.OpenAI(base_url=stack.url, **kw)
    _open.append(sdk)
    return sdk


def recording_client(stack: Stack, **kw: Any) -> tuple[openai.OpenAI, RecordingTransport]:
    transport = RecordingTransport()
    return client(stack, http_client=httpx.Client(transport=transport), **kw), transport


def close_all() -> None:
    while _open:
        _open.pop().close()
