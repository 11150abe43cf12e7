"""The legacy Completions spec (``gateway.apis``)."""

from __future__ import annotations

from typing import Any

from gateway import apis


def test_parse_completions() -> None:
    info = apis.COMPLETIONS.parse(
        {"model": "gpt-3.5-turbo-instruct", "prompt": "x", "max_tokens": 7, "n": 2, "best_of": 5},
    )
    assert info.max_output_tokens == 7
    assert info.output_limit_field == "max_tokens"
    assert info.n == 5
    assert info.reasoning_effort is None
    info = apis.COMPLETIONS.parse({"model": "m", "n": 3, "best_of": 0})
    assert info.n == 3
    info = apis.COMPLETIONS.parse({"model": "m"})
    assert (info.n, info.max_output_tokens, info.stream) == (1, None, False)
    info = apis.COMPLETIONS.parse(
        {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    )
    assert info.include_usage is True


def test_with_output_limit_completions_and_responses() -> None:
    body: dict[str, Any] = {"model": "m", "prompt": "x"}
    assert apis.COMPLETIONS.with_output_limit(apis.COMPLETIONS.parse(body), body, 9) == {
        **body,
        "max_tokens": 9,
    }
    body = {"model": "m", "input": "x", "max_output_tokens": 1000}
    assert apis.RESPONSES.with_output_limit(apis.RESPONSES.parse(body), body, 300) == {
        **body,
        "max_output_tokens": 300,
    }


class _Profile:
    default_output_tokens = 4096
    min_output_tokens = 1


def test_completions_default_output_is_the_apis_own() -> None:
    assert apis.COMPLETIONS.default_output_tokens(_Profile()) == 16  # OpenAI's default
    assert apis.CHAT.default_output_tokens(_Profile()) == 4096


def test_completions_stream_usage_is_opt_in_like_chat() -> None:
    info = apis.COMPLETIONS.parse({"model": "m", "prompt": "x", "stream": True})
    assert info.hides_usage
    body = apis.COMPLETIONS.with_usage_requested(info, {"model": "m", "stream": True})
    assert body["stream_options"] == {"include_usage": True}
