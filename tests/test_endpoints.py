"""Unit tests for gateway.endpoints: classification, validation, rewriting, usage parsing."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import apis, json_codec
from gateway.apis import MAX_OUTPUT_TOKENS, REASONING_EFFORTS, ApiSpec, RequestInfo, Usage, classify
from gateway.errors import InvalidRequestError


def with_output_limit(info: RequestInfo, body: dict[str, Any], *args: Any) -> dict[str, Any]:
    return info.api.with_output_limit(info, body, *args)


def with_reasoning_effort(info: RequestInfo, body: dict[str, Any], *args: Any) -> dict[str, Any]:
    return info.api.with_reasoning_effort(info, body, *args)


def with_usage_requested(info: RequestInfo, body: dict[str, Any], *args: Any) -> dict[str, Any]:
    return info.api.with_usage_requested(info, body, *args)


# ----------------------------------------------------------------------------- classify


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/chat/completions", apis.CHAT),
        ("/chat/completions/", apis.CHAT),
        ("/responses", apis.RESPONSES),
        ("/responses/", apis.RESPONSES),
        ("/completions", apis.COMPLETIONS),
        ("/embeddings", apis.EMBEDDINGS),
        ("/images/generations", apis.IMAGES),
        ("/images/generations/", apis.IMAGES),
        ("/chat/completions?x=1", apis.CHAT),
    ],
)
def test_classify_known(path: str, api: ApiSpec) -> None:
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
    assert classify(method, path) is apis.OTHER


def test_api_values() -> None:
    assert [a.name for a in (*apis.METERED, apis.OTHER)] == [
        "chat_completions",
        "responses",
        "completions",
        "embeddings",
        "images_generations",
        "other",
    ]
    assert repr(apis.CHAT) == "<api chat_completions>"


# ----------------------------------------------------------------------------- parse_request


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


def test_parse_responses() -> None:
    info = apis.RESPONSES.parse(
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
        api=apis.RESPONSES,
        model="gpt-5-mini",
        stream=True,
        max_output_tokens=200,
        output_limit_field="max_output_tokens",
        reasoning_effort="minimal",
        include_usage=False,
        n=1,
        temperature=1.5,
    )
    info = apis.RESPONSES.parse({"model": "m", "reasoning": None})
    assert info.reasoning_effort is None
    info = apis.RESPONSES.parse({"model": "m", "reasoning": {"summary": "auto"}})
    assert info.reasoning_effort is None


def test_parse_embeddings() -> None:
    info = apis.EMBEDDINGS.parse({"model": "text-embedding-3-small", "input": "x"})
    assert info == RequestInfo(
        api=apis.EMBEDDINGS,
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
    info = apis.IMAGES.parse({"prompt": "a cat"})
    assert info.model is None
    assert info.n == 1
    assert info.output_limit_field is None
    info = apis.IMAGES.parse({"prompt": "a cat", "model": "gpt-image-1", "n": 3, "stream": True})
    assert (info.model, info.n, info.stream) == ("gpt-image-1", 3, True)
    assert apis.IMAGES.parse({"prompt": "x", "model": None}).model is None


@pytest.mark.parametrize("effort", REASONING_EFFORTS)
def test_parse_every_effort(effort: str) -> None:
    assert apis.CHAT.parse({"model": "m", "reasoning_effort": effort}).reasoning_effort == effort
    info = apis.RESPONSES.parse({"model": "m", "reasoning": {"effort": effort}})
    assert info.reasoning_effort == effort


def test_reasoning_efforts_order() -> None:
    assert REASONING_EFFORTS == ("none", "minimal", "low", "medium", "high", "xhigh", "max")


@pytest.mark.parametrize(
    "api", [apis.CHAT, apis.RESPONSES, apis.COMPLETIONS, apis.EMBEDDINGS, apis.IMAGES]
)
@pytest.mark.parametrize("body", [[], "x", 1, None, True, [{"model": "m"}]])
def test_parse_non_object_body(api: ApiSpec, body: object) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        api.parse(body)
    assert exc.value.param is None
    assert "JSON object" in exc.value.message
    assert exc.value.status == 400


@pytest.mark.parametrize("api", [apis.CHAT, apis.RESPONSES, apis.COMPLETIONS, apis.EMBEDDINGS])
@pytest.mark.parametrize("body", [{}, {"model": None}])
def test_parse_missing_model(api: ApiSpec, body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        api.parse(body)
    assert exc.value.param == "model"


@pytest.mark.parametrize(
    "api", [apis.CHAT, apis.RESPONSES, apis.COMPLETIONS, apis.EMBEDDINGS, apis.IMAGES]
)
@pytest.mark.parametrize("model", ["", 1, True, ["m"], {"id": "m"}])
def test_parse_bad_model(api: ApiSpec, model: object) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        api.parse({"model": model})
    assert exc.value.param == "model"


_BAD: list[tuple[ApiSpec, str, object]] = []
for _api, _field in [
    (apis.CHAT, "max_completion_tokens"),
    (apis.CHAT, "max_tokens"),
    (apis.COMPLETIONS, "max_tokens"),
    (apis.RESPONSES, "max_output_tokens"),
]:
    for _value in [True, False, 0, -1, 1.5, 10.0, "10", MAX_OUTPUT_TOKENS + 1, 10**30, [1], {}]:
        _BAD.append((_api, _field, _value))
for _api, _field in [(apis.CHAT, "n"), (apis.COMPLETIONS, "n"), (apis.IMAGES, "n")]:
    for _value in [True, 0, -3, 2.0, "2", 10**9]:
        _BAD.append((_api, _field, _value))
for _value in [True, -1, 1.0, "3"]:
    _BAD.append((apis.COMPLETIONS, "best_of", _value))
for _api in (apis.CHAT, apis.COMPLETIONS, apis.RESPONSES, apis.IMAGES):
    for _value in [1, 0, "true", "false", [], {}]:
        _BAD.append((_api, "stream", _value))
for _api in (apis.CHAT, apis.COMPLETIONS, apis.RESPONSES):
    for _value in [True, "0.5", [0.5], {}]:
        _BAD.append((_api, "temperature", _value))
    for _value in [True, "x", [], 1]:
        _BAD.append((_api, "stream_options", _value))
for _value in ["extreme", "LOW", "", 1, True, ["low"], {}]:
    _BAD.append((apis.CHAT, "reasoning_effort", _value))
for _value in ["low", 1, True, []]:
    _BAD.append((apis.RESPONSES, "reasoning", _value))


@pytest.mark.parametrize(("api", "field", "value"), _BAD)
def test_parse_wrong_field(api: ApiSpec, field: str, value: object) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        api.parse({"model": "m", field: value})
    assert exc.value.param == field
    assert field in exc.value.message


@pytest.mark.parametrize("value", ["extreme", 1, True, [], {}])
def test_parse_wrong_responses_effort(value: object) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        apis.RESPONSES.parse({"model": "m", "reasoning": {"effort": value}})
    assert exc.value.param == "reasoning.effort"


@pytest.mark.parametrize("value", [1, "yes", [], {}])
def test_parse_wrong_include_usage(value: object) -> None:
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": value}}
    with pytest.raises(InvalidRequestError) as exc:
        apis.CHAT.parse(body)
    assert exc.value.param == "stream_options.include_usage"


def test_parse_bounds_accepted() -> None:
    info = apis.CHAT.parse({"model": "m", "max_completion_tokens": MAX_OUTPUT_TOKENS})
    assert info.max_output_tokens == MAX_OUTPUT_TOKENS
    assert apis.CHAT.parse({"model": "m", "max_tokens": 1}).max_output_tokens == 1


def test_parse_ignores_fields_of_other_apis() -> None:
    # The gateway only validates what it reads for that API; the upstream owns the rest.
    assert apis.EMBEDDINGS.parse({"model": "m", "stream": "x", "n": "y"}).stream is False
    info = apis.RESPONSES.parse({"model": "m", "n": "x", "reasoning_effort": 5})
    assert info.n == 1
    assert apis.IMAGES.parse({"temperature": "hot"}).temperature is None


def test_parse_error_message_shape() -> None:
    with pytest.raises(InvalidRequestError) as exc:
        apis.CHAT.parse({"model": "m", "max_tokens": True})
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
    info = apis.OTHER.parse(body)
    assert info.api is apis.OTHER
    assert info.model is None
    assert info.stream is False
    assert info.n == 1
    assert info.output_limit_field is None


def test_parse_other_reads_model() -> None:
    assert apis.OTHER.parse({"model": "omni-moderation-latest"}).model == "omni-moderation-latest"


# ----------------------------------------------------------------------------- rewriting


def _info(api: ApiSpec, body: dict[str, Any]) -> RequestInfo:
    return api.parse(body)


def test_with_output_limit_chat_default_field() -> None:
    body = {"model": "m", "messages": []}
    out = with_output_limit(_info(apis.CHAT, body), body, 100)
    assert out == {"model": "m", "messages": [], "max_completion_tokens": 100}
    assert body == {"model": "m", "messages": []}  # input untouched


def test_with_output_limit_chat_max_tokens_only() -> None:
    body = {"model": "m", "max_tokens": 500}
    out = with_output_limit(_info(apis.CHAT, body), body, 100)
    assert out == {"model": "m", "max_tokens": 100}


def test_with_output_limit_chat_both_fields() -> None:
    body = {"model": "m", "max_tokens": 500, "max_completion_tokens": 800}
    out = with_output_limit(_info(apis.CHAT, body), body, 100)
    assert out == {"model": "m", "max_tokens": 100, "max_completion_tokens": 100}
    body = {"model": "m", "max_tokens": 50, "max_completion_tokens": 800}
    out = with_output_limit(_info(apis.CHAT, body), body, 100)
    # The client's own tighter bound stays, and the written field never exceeds it.
    assert out == {"model": "m", "max_tokens": 50, "max_completion_tokens": 50}


def test_with_output_limit_never_loosens() -> None:
    body = {"model": "m", "max_completion_tokens": 20}
    assert with_output_limit(_info(apis.CHAT, body), body, 100) is body
    body = {"model": "m", "max_output_tokens": 20}
    assert with_output_limit(_info(apis.RESPONSES, body), body, 100) is body


def test_with_output_limit_null_field_is_set() -> None:
    body = {"model": "m", "max_completion_tokens": None, "max_tokens": None}
    out = with_output_limit(_info(apis.CHAT, body), body, 64)
    assert out == {"model": "m", "max_completion_tokens": 64, "max_tokens": None}


def test_with_output_limit_completions_and_responses() -> None:
    body: dict[str, Any] = {"model": "m", "prompt": "x"}
    assert with_output_limit(_info(apis.COMPLETIONS, body), body, 9) == {**body, "max_tokens": 9}
    body = {"model": "m", "input": "x", "max_output_tokens": 1000}
    assert with_output_limit(_info(apis.RESPONSES, body), body, 300) == {
        **body,
        "max_output_tokens": 300,
    }


@pytest.mark.parametrize(
    ("api", "body"),
    [
        (apis.EMBEDDINGS, {"model": "m", "input": "x"}),
        (apis.IMAGES, {"prompt": "x"}),
        (apis.OTHER, {"model": "m"}),
    ],
)
def test_with_output_limit_no_field(api: ApiSpec, body: dict[str, Any]) -> None:
    assert with_output_limit(_info(api, body), body, 10) is body


def test_with_output_limit_rejects_nonpositive() -> None:
    body = {"model": "m"}
    with pytest.raises(ValueError):
        with_output_limit(_info(apis.CHAT, body), body, 0)


def test_with_usage_requested_preserves_options() -> None:
    body = {"model": "m", "stream": True, "stream_options": {"include_obfuscation": False}}
    out = with_usage_requested(_info(apis.CHAT, body), body)
    assert out["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert body["stream_options"] == {"include_obfuscation": False}  # nested dict not mutated


def test_with_usage_requested_cases() -> None:
    body: dict[str, Any] = {"model": "m", "stream": True}
    out = with_usage_requested(_info(apis.CHAT, body), body)
    assert out == {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    body = {"model": "m", "stream": True, "stream_options": None}
    out = with_usage_requested(_info(apis.COMPLETIONS, body), body)
    assert out["stream_options"] == {"include_usage": True}
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": False}}
    assert with_usage_requested(_info(apis.CHAT, body), body)["stream_options"] == {
        "include_usage": True
    }
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    assert with_usage_requested(_info(apis.CHAT, body), body) is body
    body = {"model": "m"}  # not streaming: stream_options would be rejected upstream
    assert with_usage_requested(_info(apis.CHAT, body), body) is body
    body = {"model": "m", "stream": True}
    assert with_usage_requested(_info(apis.RESPONSES, body), body) is body


def test_with_reasoning_effort() -> None:
    body: dict[str, Any] = {"model": "m", "reasoning_effort": "high"}
    assert with_reasoning_effort(_info(apis.CHAT, body), body, "low") == {
        "model": "m",
        "reasoning_effort": "low",
    }
    assert body["reasoning_effort"] == "high"
    assert with_reasoning_effort(_info(apis.CHAT, body), body, "high") is body

    reasoning = {"effort": "high", "summary": "auto"}
    body = {"model": "m", "reasoning": reasoning}
    out = with_reasoning_effort(_info(apis.RESPONSES, body), body, "minimal")
    assert out["reasoning"] == {"effort": "minimal", "summary": "auto"}
    assert reasoning == {"effort": "high", "summary": "auto"}
    body = {"model": "m"}
    assert with_reasoning_effort(_info(apis.RESPONSES, body), body, "low") == {
        "model": "m",
        "reasoning": {"effort": "low"},
    }
    body = {"model": "m", "input": "x"}
    assert with_reasoning_effort(_info(apis.EMBEDDINGS, body), body, "low") is body
    with pytest.raises(ValueError):
        with_reasoning_effort(_info(apis.CHAT, body), body, "turbo")


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


def test_usage_responses() -> None:
    assert apis.RESPONSES.usage(RESPONSES_USAGE) == Usage(11, 70, 64, 3, 81)
    bare = {"input_tokens": 11, "output_tokens": 4, "total_tokens": 15}
    assert apis.RESPONSES.usage(bare) == Usage(11, 4, 0, 0, 15)


def test_usage_embeddings() -> None:
    assert apis.EMBEDDINGS.usage({"prompt_tokens": 5, "total_tokens": 5}) == Usage(
        prompt_tokens=5, total_tokens=5
    )


def test_usage_images() -> None:
    assert apis.IMAGES.usage(IMAGES_USAGE) == Usage(40, 1056, 0, 0, 1096)
    # The streaming event's older ImagesUsage has no output_tokens_details.
    old = {"input_tokens": 40, "input_tokens_details": {"text_tokens": 40}, "output_tokens": 10}
    assert apis.IMAGES.usage({**old, "total_tokens": 50}) == Usage(40, 10, 0, 0, 50)


def test_usage_other_guesses_shape() -> None:
    assert apis.OTHER.usage(RESPONSES_USAGE) == Usage(11, 70, 64, 3, 81)
    run = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert apis.OTHER.usage(run) == Usage(3, 4, 0, 0, 7)


@pytest.mark.parametrize("value", [None, [], "x", 3, True])
def test_usage_not_an_object(value: object) -> None:
    assert apis.CHAT.usage(value) is None


def test_usage_garbage_values_are_zero() -> None:
    usage = {
        "prompt_tokens": "5",
        "completion_tokens": 2.5,
        "total_tokens": True,
        "prompt_tokens_details": {"cached_tokens": -4},
        "completion_tokens_details": {"reasoning_tokens": None},
    }
    assert apis.CHAT.usage(usage) == Usage(0, 0, 0, 0, 0)


def test_usage_missing_total_is_sum() -> None:
    assert apis.CHAT.usage({"prompt_tokens": 3, "completion_tokens": 4}) == Usage(3, 4, 0, 0, 7)
    assert apis.RESPONSES.usage({"input_tokens": 3, "output_tokens": 4}) == Usage(3, 4, 0, 0, 7)


def test_usage_from_json() -> None:
    body = json_codec.dumps(
        {"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "usage": CHAT_USAGE}
    )
    assert apis.CHAT.usage_from_json(body) == Usage(24, 70, 64, 8, 94)
    body = json_codec.dumps({"id": "resp_1", "object": "response", "usage": RESPONSES_USAGE})
    assert apis.RESPONSES.usage_from_json(body) == Usage(11, 70, 64, 3, 81)
    body = json_codec.dumps({"object": "list", "data": [], "usage": {"prompt_tokens": 5}})
    assert apis.EMBEDDINGS.usage_from_json(body) == Usage(prompt_tokens=5, total_tokens=5)


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
    assert apis.CHAT.usage_from_json(body) is None
    assert apis.RESPONSES.usage_from_json(body) is None
