"""The Chat Completions spec (``gateway.apis``)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import apis
from gateway.apis import RequestInfo, Usage
from gateway.errors import InvalidRequestError
from tests.apis.samples import CHAT_USAGE


def test_parse_chat_full() -> None:
    info = apis.CHAT.parse(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 50,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "reasoning_effort": "low",
            "n": 2,
        },
    )
    assert info == RequestInfo(
        api=apis.CHAT,
        model="gpt-4o-mini",
        stream=True,
        max_output_tokens=50,
        output_limit_field="max_completion_tokens",
        reasoning_effort="low",
        include_usage=True,
        n=2,
        temperature=0.0,
    )
    assert isinstance(info.temperature, float)


def test_parse_chat_defaults() -> None:
    info = apis.CHAT.parse({"model": "m", "messages": []})
    assert info == RequestInfo(
        api=apis.CHAT,
        model="m",
        stream=False,
        max_output_tokens=None,
        output_limit_field="max_completion_tokens",
        reasoning_effort=None,
        include_usage=False,
        n=1,
        temperature=None,
    )


def test_parse_chat_nulls_are_defaults() -> None:
    info = apis.CHAT.parse(
        {
            "model": "m",
            "stream": None,
            "max_completion_tokens": None,
            "max_tokens": None,
            "n": None,
            "temperature": None,
            "stream_options": None,
            "reasoning_effort": None,
        },
    )
    assert info.stream is False
    assert info.max_output_tokens is None
    assert info.output_limit_field == "max_completion_tokens"
    assert info.n == 1


def test_parse_chat_only_max_tokens() -> None:
    info = apis.CHAT.parse({"model": "m", "max_tokens": 30})
    assert info.max_output_tokens == 30
    assert info.output_limit_field == "max_tokens"


@pytest.mark.parametrize(("mct", "mt", "expected"), [(50, 30, 30), (30, 50, 30), (40, 40, 40)])
def test_parse_chat_both_limits_smaller_binds(mct: int, mt: int, expected: int) -> None:
    info = apis.CHAT.parse({"model": "m", "max_completion_tokens": mct, "max_tokens": mt})
    assert info.max_output_tokens == expected
    assert info.output_limit_field == "max_completion_tokens"


def test_parse_chat_include_usage_only_when_streaming() -> None:
    body = {"model": "m", "stream_options": {"include_usage": True}}
    assert apis.CHAT.parse(body).include_usage is False
    assert apis.CHAT.parse({**body, "stream": True}).include_usage is True
    body2 = {"model": "m", "stream": True, "stream_options": {"include_obfuscation": False}}
    assert apis.CHAT.parse(body2).include_usage is False


@pytest.mark.parametrize("value", [1, "yes", [], {}])
def test_parse_wrong_include_usage(value: object) -> None:
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": value}}
    with pytest.raises(InvalidRequestError) as exc:
        apis.CHAT.parse(body)
    assert exc.value.param == "stream_options.include_usage"


def test_with_output_limit_chat_default_field() -> None:
    body = {"model": "m", "messages": []}
    out = apis.CHAT.with_output_limit(apis.CHAT.parse(body), body, 100)
    assert out == {"model": "m", "messages": [], "max_completion_tokens": 100}
    assert body == {"model": "m", "messages": []}  # input untouched


def test_with_output_limit_chat_max_tokens_only() -> None:
    body = {"model": "m", "max_tokens": 500}
    out = apis.CHAT.with_output_limit(apis.CHAT.parse(body), body, 100)
    assert out == {"model": "m", "max_tokens": 100}


def test_with_output_limit_chat_both_fields() -> None:
    body = {"model": "m", "max_tokens": 500, "max_completion_tokens": 800}
    out = apis.CHAT.with_output_limit(apis.CHAT.parse(body), body, 100)
    assert out == {"model": "m", "max_tokens": 100, "max_completion_tokens": 100}
    body = {"model": "m", "max_tokens": 50, "max_completion_tokens": 800}
    out = apis.CHAT.with_output_limit(apis.CHAT.parse(body), body, 100)
    # The client's own tighter bound stays, and the written field never exceeds it.
    assert out == {"model": "m", "max_tokens": 50, "max_completion_tokens": 50}


def test_with_usage_requested_preserves_options() -> None:
    body = {"model": "m", "stream": True, "stream_options": {"include_obfuscation": False}}
    out = apis.CHAT.with_usage_requested(apis.CHAT.parse(body), body)
    assert out["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert body["stream_options"] == {"include_obfuscation": False}  # nested dict not mutated


def test_with_usage_requested_cases() -> None:
    body: dict[str, Any] = {"model": "m", "stream": True}
    out = apis.CHAT.with_usage_requested(apis.CHAT.parse(body), body)
    assert out == {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    body = {"model": "m", "stream": True, "stream_options": None}
    out = apis.COMPLETIONS.with_usage_requested(apis.COMPLETIONS.parse(body), body)
    assert out["stream_options"] == {"include_usage": True}
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": False}}
    assert apis.CHAT.with_usage_requested(apis.CHAT.parse(body), body)["stream_options"] == {
        "include_usage": True
    }
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    assert apis.CHAT.with_usage_requested(apis.CHAT.parse(body), body) is body
    body = {"model": "m"}  # not streaming: stream_options would be rejected upstream
    assert apis.CHAT.with_usage_requested(apis.CHAT.parse(body), body) is body
    body = {"model": "m", "stream": True}
    assert apis.RESPONSES.with_usage_requested(apis.RESPONSES.parse(body), body) is body


def test_usage_chat_and_completions() -> None:
    expected = Usage(
        prompt_tokens=24,
        completion_tokens=70,
        reasoning_tokens=64,
        cached_prompt_tokens=8,
        total_tokens=94,
    )
    assert apis.CHAT.usage(CHAT_USAGE) == expected
    assert apis.COMPLETIONS.usage(CHAT_USAGE) == expected


def test_usage_chat_without_details() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert apis.CHAT.usage(usage) == Usage(5, 2, 0, 0, 7)
    usage2: dict[str, Any] = {
        **usage,
        "prompt_tokens_details": None,
        "completion_tokens_details": {},
    }
    assert apis.CHAT.usage(usage2) == Usage(5, 2, 0, 0, 7)
