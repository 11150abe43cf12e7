"""Unit tests for gateway.endpoints: classification, validation, rewriting, usage parsing."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import json_codec
from gateway.endpoints import (
    MAX_OUTPUT_TOKENS,
    REASONING_EFFORTS,
    Api,
    RequestInfo,
    Usage,
    classify,
    parse_request,
    usage_from_json,
    usage_from_object,
    with_output_limit,
    with_reasoning_effort,
    with_usage_requested,
)
from gateway.errors import InvalidRequestError

# ----------------------------------------------------------------------------- classify


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/chat/completions", Api.CHAT),
        ("/chat/completions/", Api.CHAT),
        ("/responses", Api.RESPONSES),
        ("/responses/", Api.RESPONSES),
        ("/completions", Api.COMPLETIONS),
        ("/embeddings", Api.EMBEDDINGS),
        ("/images/generations", Api.IMAGES),
        ("/images/generations/", Api.IMAGES),
        ("/chat/completions?x=1", Api.CHAT),
    ],
)
def test_classify_known(path: str, api: Api) -> None:
    assert classify("POST", path) is api
    assert classify("post", path) is api


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/chat/completions"),
        ("DELETE", "/responses"),
        ("GET", "/models"),
        ("POST", "/chat/completions//"),
        ("POST", "/chat/completions/abc"),
        ("POST", "/responses/resp_1/cancel"),
        ("POST", "/responses/input_tokens"),
        ("POST", "/images/edits"),
        ("POST", "/moderations"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/Chat/Completions"),
        ("POST", ""),
        ("POST", "/"),
    ],
)
def test_classify_other(method: str, path: str) -> None:
    assert classify(method, path) is Api.OTHER


def test_api_values() -> None:
    assert [a.value for a in Api] == [
        "chat_completions",
        "responses",
        "completions",
        "embeddings",
        "images_generations",
        "other",
    ]
    assert str(Api.CHAT) == "chat_completions"


# ----------------------------------------------------------------------------- parse_request


def test_parse_chat_full() -> None:
    info = parse_request(
        Api.CHAT,
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
        api=Api.CHAT,
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
    info = parse_request(Api.CHAT, {"model": "m", "messages": []})
    assert info == RequestInfo(
        api=Api.CHAT,
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
    info = parse_request(
        Api.CHAT,
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
    info = parse_request(Api.CHAT, {"model": "m", "max_tokens": 30})
    assert info.max_output_tokens == 30
    assert info.output_limit_field == "max_tokens"


@pytest.mark.parametrize(("mct", "mt", "expected"), [(50, 30, 30), (30, 50, 30), (40, 40, 40)])
def test_parse_chat_both_limits_smaller_binds(mct: int, mt: int, expected: int) -> None:
    info = parse_request(Api.CHAT, {"model": "m", "max_completion_tokens": mct, "max_tokens": mt})
    assert info.max_output_tokens == expected
    assert info.output_limit_field == "max_completion_tokens"


def test_parse_chat_include_usage_only_when_streaming() -> None:
    body = {"model": "m", "stream_options": {"include_usage": True}}
    assert parse_request(Api.CHAT, body).include_usage is False
    assert parse_request(Api.CHAT, {**body, "stream": True}).include_usage is True
    body2 = {"model": "m", "stream": True, "stream_options": {"include_obfuscation": False}}
    assert parse_request(Api.CHAT, body2).include_usage is False


def test_parse_completions() -> None:
    info = parse_request(
        Api.COMPLETIONS,
        {"model": "gpt-3.5-turbo-instruct", "prompt": "x", "max_tokens": 7, "n": 2, "best_of": 5},
    )
    assert info.max_output_tokens == 7
    assert info.output_limit_field == "max_tokens"
    assert info.n == 5
    assert info.reasoning_effort is None
    info = parse_request(Api.COMPLETIONS, {"model": "m", "n": 3, "best_of": 0})
    assert info.n == 3
    info = parse_request(Api.COMPLETIONS, {"model": "m"})
    assert (info.n, info.max_output_tokens, info.stream) == (1, None, False)
    info = parse_request(
        Api.COMPLETIONS, {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    )
    assert info.include_usage is True


def test_parse_responses() -> None:
    info = parse_request(
        Api.RESPONSES,
        {
            "model": "gpt-5-mini",
            "input": "Colour of the sky?",
            "reasoning": {"effort": "minimal", "summary": "auto"},
            "max_output_tokens": 200,
            "store": False,
            "stream": True,
            "stream_options": {"include_obfuscation": False},
            "temperature": 1.5,
        },
    )
    assert info == RequestInfo(
        api=Api.RESPONSES,
        model="gpt-5-mini",
        stream=True,
        max_output_tokens=200,
        output_limit_field="max_output_tokens",
        reasoning_effort="minimal",
        include_usage=False,
        n=1,
        temperature=1.5,
    )
    info = parse_request(Api.RESPONSES, {"model": "m", "reasoning": None})
    assert info.reasoning_effort is None
    info = parse_request(Api.RESPONSES, {"model": "m", "reasoning": {"summary": "auto"}})
    assert info.reasoning_effort is None


def test_parse_embeddings() -> None:
    info = parse_request(Api.EMBEDDINGS, {"model": "text-embedding-3-small", "input": "x"})
    assert info == RequestInfo(
        api=Api.EMBEDDINGS,
        model="text-embedding-3-small",
        stream=False,
        max_output_tokens=None,
        output_limit_field=None,
        reasoning_effort=None,
        include_usage=False,
        n=1,
        temperature=None,
    )


def test_parse_images() -> None:
    info = parse_request(Api.IMAGES, {"prompt": "a cat"})
    assert info.model is None
    assert info.n == 1
    assert info.output_limit_field is None
    info = parse_request(
        Api.IMAGES, {"prompt": "a cat", "model": "gpt-image-1", "n": 3, "stream": True}
    )
    assert (info.model, info.n, info.stream) == ("gpt-image-1", 3, True)
    assert parse_request(Api.IMAGES, {"prompt": "x", "model": None}).model is None


@pytest.mark.parametrize("effort", REASONING_EFFORTS)
def test_parse_every_effort(effort: str) -> None:
    assert (
        parse_request(Api.CHAT, {"model": "m", "reasoning_effort": effort}).reasoning_effort
        == effort
    )
    info = parse_request(Api.RESPONSES, {"model": "m", "reasoning": {"effort": effort}})
    assert info.reasoning_effort == effort


def test_reasoning_efforts_order() -> None:
    assert REASONING_EFFORTS == ("none", "minimal", "low", "medium", "high", "xhigh", "max")


@pytest.mark.parametrize(
    "api", [Api.CHAT, Api.RESPONSES, Api.COMPLETIONS, Api.EMBEDDINGS, Api.IMAGES]
)
@pytest.mark.parametrize("body", [[], "x", 1, None, True, [{"model": "m"}]])
def test_parse_non_object_body(api: Api, body: object) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        parse_request(api, body)
    assert exc.value.param is None
    assert "JSON object" in exc.value.message
    assert exc.value.status == 400


@pytest.mark.parametrize("api", [Api.CHAT, Api.RESPONSES, Api.COMPLETIONS, Api.EMBEDDINGS])
@pytest.mark.parametrize("body", [{}, {"model": None}])
def test_parse_missing_model(api: Api, body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        parse_request(api, body)
    assert exc.value.param == "model"


@pytest.mark.parametrize(
    "api", [Api.CHAT, Api.RESPONSES, Api.COMPLETIONS, Api.EMBEDDINGS, Api.IMAGES]
)
@pytest.mark.parametrize("model", ["", 1, True, ["m"], {"id": "m"}])
def test_parse_bad_model(api: Api, model: object) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        parse_request(api, {"model": model})
    assert exc.value.param == "model"


_BAD: list[tuple[Api, str, object]] = []
for _api, _field in [
    (Api.CHAT, "max_completion_tokens"),
    (Api.CHAT, "max_tokens"),
    (Api.COMPLETIONS, "max_tokens"),
    (Api.RESPONSES, "max_output_tokens"),
]:
    for _value in [True, False, 0, -1, 1.5, 10.0, "10", MAX_OUTPUT_TOKENS + 1, 10**30, [1], {}]:
        _BAD.append((_api, _field, _value))
for _api, _field in [(Api.CHAT, "n"), (Api.COMPLETIONS, "n"), (Api.IMAGES, "n")]:
    for _value in [True, 0, -3, 2.0, "2", 10**9]:
        _BAD.append((_api, _field, _value))
for _value in [True, -1, 1.0, "3"]:
    _BAD.append((Api.COMPLETIONS, "best_of", _value))
for _api in (Api.CHAT, Api.COMPLETIONS, Api.RESPONSES, Api.IMAGES):
    for _value in [1, 0, "true", "false", [], {}]:
        _BAD.append((_api, "stream", _value))
for _api in (Api.CHAT, Api.COMPLETIONS, Api.RESPONSES):
    for _value in [True, "0.5", [0.5], {}]:
        _BAD.append((_api, "temperature", _value))
    for _value in [True, "x", [], 1]:
        _BAD.append((_api, "stream_options", _value))
for _value in ["extreme", "LOW", "", 1, True, ["low"], {}]:
    _BAD.append((Api.CHAT, "reasoning_effort", _value))
for _value in ["low", 1, True, []]:
    _BAD.append((Api.RESPONSES, "reasoning", _value))


@pytest.mark.parametrize(("api", "field", "value"), _BAD)
def test_parse_wrong_field(api: Api, field: str, value: object) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        parse_request(api, {"model": "m", field: value})
    assert exc.value.param == field
    assert field in exc.value.message


@pytest.mark.parametrize("value", ["extreme", 1, True, [], {}])
def test_parse_wrong_responses_effort(value: object) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        parse_request(Api.RESPONSES, {"model": "m", "reasoning": {"effort": value}})
    assert exc.value.param == "reasoning.effort"


@pytest.mark.parametrize("value", [1, "yes", [], {}])
def test_parse_wrong_include_usage(value: object) -> None:
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": value}}
    with pytest.raises(InvalidRequestError) as exc:
        parse_request(Api.CHAT, body)
    assert exc.value.param == "stream_options.include_usage"


def test_parse_bounds_accepted() -> None:
    info = parse_request(Api.CHAT, {"model": "m", "max_completion_tokens": MAX_OUTPUT_TOKENS})
    assert info.max_output_tokens == MAX_OUTPUT_TOKENS
    assert parse_request(Api.CHAT, {"model": "m", "max_tokens": 1}).max_output_tokens == 1


def test_parse_ignores_fields_of_other_apis() -> None:
    # The gateway only validates what it reads for that API; the upstream owns the rest.
    assert parse_request(Api.EMBEDDINGS, {"model": "m", "stream": "x", "n": "y"}).stream is False
    info = parse_request(Api.RESPONSES, {"model": "m", "n": "x", "reasoning_effort": 5})
    assert info.n == 1
    assert parse_request(Api.IMAGES, {"temperature": "hot"}).temperature is None


def test_parse_error_message_shape() -> None:
    with pytest.raises(InvalidRequestError) as exc:
        parse_request(Api.CHAT, {"model": "m", "max_tokens": True})
    assert exc.value.message == (
        "Invalid type for 'max_tokens': expected an integer, but got a boolean instead."
    )
    body = exc.value.body()
    assert body["error"]["param"] == "max_tokens"
    assert body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body",
    [None, [], "x", 5, {}, {"model": 1}, {"model": ""}, {"stream": "x", "n": -1, "model": None}],
)
def test_parse_other_never_raises(body: object) -> None:
    info = parse_request(Api.OTHER, body)
    assert info.api is Api.OTHER
    assert info.model is None
    assert info.stream is False
    assert info.n == 1
    assert info.output_limit_field is None


def test_parse_other_reads_model() -> None:
    assert (
        parse_request(Api.OTHER, {"model": "omni-moderation-latest"}).model
        == "omni-moderation-latest"
    )


# ----------------------------------------------------------------------------- rewriting


def _info(api: Api, body: dict[str, Any]) -> RequestInfo:
    return parse_request(api, body)


def test_with_output_limit_chat_default_field() -> None:
    body = {"model": "m", "messages": []}
    out = with_output_limit(_info(Api.CHAT, body), body, 100)
    assert out == {"model": "m", "messages": [], "max_completion_tokens": 100}
    assert body == {"model": "m", "messages": []}  # input untouched


def test_with_output_limit_chat_max_tokens_only() -> None:
    body = {"model": "m", "max_tokens": 500}
    out = with_output_limit(_info(Api.CHAT, body), body, 100)
    assert out == {"model": "m", "max_tokens": 100}


def test_with_output_limit_chat_both_fields() -> None:
    body = {"model": "m", "max_tokens": 500, "max_completion_tokens": 800}
    out = with_output_limit(_info(Api.CHAT, body), body, 100)
    assert out == {"model": "m", "max_tokens": 100, "max_completion_tokens": 100}
    body = {"model": "m", "max_tokens": 50, "max_completion_tokens": 800}
    out = with_output_limit(_info(Api.CHAT, body), body, 100)
    # The client's own tighter bound stays, and the written field never exceeds it.
    assert out == {"model": "m", "max_tokens": 50, "max_completion_tokens": 50}


def test_with_output_limit_never_loosens() -> None:
    body = {"model": "m", "max_completion_tokens": 20}
    assert with_output_limit(_info(Api.CHAT, body), body, 100) is body
    body = {"model": "m", "max_output_tokens": 20}
    assert with_output_limit(_info(Api.RESPONSES, body), body, 100) is body


def test_with_output_limit_null_field_is_set() -> None:
    body = {"model": "m", "max_completion_tokens": None, "max_tokens": None}
    out = with_output_limit(_info(Api.CHAT, body), body, 64)
    assert out == {"model": "m", "max_completion_tokens": 64, "max_tokens": None}


def test_with_output_limit_completions_and_responses() -> None:
    body: dict[str, Any] = {"model": "m", "prompt": "x"}
    assert with_output_limit(_info(Api.COMPLETIONS, body), body, 9) == {**body, "max_tokens": 9}
    body = {"model": "m", "input": "x", "max_output_tokens": 1000}
    assert with_output_limit(_info(Api.RESPONSES, body), body, 300) == {
        **body,
        "max_output_tokens": 300,
    }


@pytest.mark.parametrize(
    ("api", "body"),
    [
        (Api.EMBEDDINGS, {"model": "m", "input": "x"}),
        (Api.IMAGES, {"prompt": "x"}),
        (Api.OTHER, {"model": "m"}),
    ],
)
def test_with_output_limit_no_field(api: Api, body: dict[str, Any]) -> None:
    assert with_output_limit(_info(api, body), body, 10) is body


def test_with_output_limit_rejects_nonpositive() -> None:
    body = {"model": "m"}
    with pytest.raises(ValueError):
        with_output_limit(_info(Api.CHAT, body), body, 0)


def test_with_usage_requested_preserves_options() -> None:
    body = {"model": "m", "stream": True, "stream_options": {"include_obfuscation": False}}
    out = with_usage_requested(_info(Api.CHAT, body), body)
    assert out["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert body["stream_options"] == {"include_obfuscation": False}  # nested dict not mutated


def test_with_usage_requested_cases() -> None:
    body: dict[str, Any] = {"model": "m", "stream": True}
    out = with_usage_requested(_info(Api.CHAT, body), body)
    assert out == {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    body = {"model": "m", "stream": True, "stream_options": None}
    out = with_usage_requested(_info(Api.COMPLETIONS, body), body)
    assert out["stream_options"] == {"include_usage": True}
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": False}}
    assert with_usage_requested(_info(Api.CHAT, body), body)["stream_options"] == {
        "include_usage": True
    }
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    assert with_usage_requested(_info(Api.CHAT, body), body) is body
    body = {"model": "m"}  # not streaming: stream_options would be rejected upstream
    assert with_usage_requested(_info(Api.CHAT, body), body) is body
    body = {"model": "m", "stream": True}
    assert with_usage_requested(_info(Api.RESPONSES, body), body) is body


def test_with_reasoning_effort() -> None:
    body: dict[str, Any] = {"model": "m", "reasoning_effort": "high"}
    assert with_reasoning_effort(_info(Api.CHAT, body), body, "low") == {
        "model": "m",
        "reasoning_effort": "low",
    }
    assert body["reasoning_effort"] == "high"
    assert with_reasoning_effort(_info(Api.CHAT, body), body, "high") is body

    reasoning = {"effort": "high", "summary": "auto"}
    body = {"model": "m", "reasoning": reasoning}
    out = with_reasoning_effort(_info(Api.RESPONSES, body), body, "minimal")
    assert out["reasoning"] == {"effort": "minimal", "summary": "auto"}
    assert reasoning == {"effort": "high", "summary": "auto"}
    body = {"model": "m"}
    assert with_reasoning_effort(_info(Api.RESPONSES, body), body, "low") == {
        "model": "m",
        "reasoning": {"effort": "low"},
    }
    body = {"model": "m", "input": "x"}
    assert with_reasoning_effort(_info(Api.EMBEDDINGS, body), body, "low") is body
    with pytest.raises(ValueError):
        with_reasoning_effort(_info(Api.CHAT, body), body, "turbo")


# ----------------------------------------------------------------------------- usage

CHAT_USAGE = {
    "prompt_tokens": 24,
    "completion_tokens": 70,
    "total_tokens": 94,
    "prompt_tokens_details": {"cached_tokens": 8, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 64,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
RESPONSES_USAGE = {
    "input_tokens": 11,
    "input_tokens_details": {"cached_tokens": 3},
    "output_tokens": 70,
    "output_tokens_details": {"reasoning_tokens": 64},
    "total_tokens": 81,
}
IMAGES_USAGE = {
    "input_tokens": 40,
    "input_tokens_details": {"text_tokens": 40, "image_tokens": 0},
    "output_tokens": 1056,
    "output_tokens_details": {"image_tokens": 1056, "text_tokens": 0},
    "total_tokens": 1096,
}


def test_usage_chat_and_completions() -> None:
    expected = Usage(
        prompt_tokens=24,
        completion_tokens=70,
        reasoning_tokens=64,
        cached_prompt_tokens=8,
        total_tokens=94,
    )
    assert usage_from_object(Api.CHAT, CHAT_USAGE) == expected
    assert usage_from_object(Api.COMPLETIONS, CHAT_USAGE) == expected


def test_usage_chat_without_details() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert usage_from_object(Api.CHAT, usage) == Usage(5, 2, 0, 0, 7)
    usage2: dict[str, Any] = {
        **usage,
        "prompt_tokens_details": None,
        "completion_tokens_details": {},
    }
    assert usage_from_object(Api.CHAT, usage2) == Usage(5, 2, 0, 0, 7)


def test_usage_responses() -> None:
    assert usage_from_object(Api.RESPONSES, RESPONSES_USAGE) == Usage(11, 70, 64, 3, 81)
    bare = {"input_tokens": 11, "output_tokens": 4, "total_tokens": 15}
    assert usage_from_object(Api.RESPONSES, bare) == Usage(11, 4, 0, 0, 15)


def test_usage_embeddings() -> None:
    assert usage_from_object(Api.EMBEDDINGS, {"prompt_tokens": 5, "total_tokens": 5}) == Usage(
        prompt_tokens=5, total_tokens=5
    )


def test_usage_images() -> None:
    assert usage_from_object(Api.IMAGES, IMAGES_USAGE) == Usage(40, 1056, 0, 0, 1096)
    # The streaming event's older ImagesUsage has no output_tokens_details.
    old = {"input_tokens": 40, "input_tokens_details": {"text_tokens": 40}, "output_tokens": 10}
    assert usage_from_object(Api.IMAGES, {**old, "total_tokens": 50}) == Usage(40, 10, 0, 0, 50)


def test_usage_other_guesses_shape() -> None:
    assert usage_from_object(Api.OTHER, RESPONSES_USAGE) == Usage(11, 70, 64, 3, 81)
    run = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert usage_from_object(Api.OTHER, run) == Usage(3, 4, 0, 0, 7)


@pytest.mark.parametrize("value", [None, [], "x", 3, True])
def test_usage_not_an_object(value: object) -> None:
    assert usage_from_object(Api.CHAT, value) is None


def test_usage_garbage_values_are_zero() -> None:
    usage = {
        "prompt_tokens": "5",
        "completion_tokens": 2.5,
        "total_tokens": True,
        "prompt_tokens_details": {"cached_tokens": -4},
        "completion_tokens_details": {"reasoning_tokens": None},
    }
    assert usage_from_object(Api.CHAT, usage) == Usage(0, 0, 0, 0, 0)


def test_usage_missing_total_is_sum() -> None:
    assert usage_from_object(Api.CHAT, {"prompt_tokens": 3, "completion_tokens": 4}) == Usage(
        3, 4, 0, 0, 7
    )
    assert usage_from_object(Api.RESPONSES, {"input_tokens": 3, "output_tokens": 4}) == Usage(
        3, 4, 0, 0, 7
    )


def test_usage_from_json() -> None:
    body = json_codec.dumps(
        {"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "usage": CHAT_USAGE}
    )
    assert usage_from_json(Api.CHAT, body) == Usage(24, 70, 64, 8, 94)
    body = json_codec.dumps({"id": "resp_1", "object": "response", "usage": RESPONSES_USAGE})
    assert usage_from_json(Api.RESPONSES, body) == Usage(11, 70, 64, 3, 81)
    body = json_codec.dumps({"object": "list", "data": [], "usage": {"prompt_tokens": 5}})
    assert usage_from_json(Api.EMBEDDINGS, body) == Usage(prompt_tokens=5, total_tokens=5)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"null",
        b"[]",
        b'"usage"',
        b"\xff\xfe",
        b'{"usage": null}',
        b'{"status":"queued","usage":null}',
        b'{"no":"usage"}',
        b"[" * 100_000,
    ],
)
def test_usage_from_json_garbage(body: bytes) -> None:
    assert usage_from_json(Api.CHAT, body) is None
    assert usage_from_json(Api.RESPONSES, body) is None
