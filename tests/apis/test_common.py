"""What every API spec shares (``gateway.apis``): classification, validation errors, output
limits and usage rules."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import apis, json_codec
from gateway.apis import MAX_OUTPUT_TOKENS, REASONING_EFFORTS, ApiSpec, Usage, classify
from gateway.errors import InvalidRequestError
from tests.apis.samples import CHAT_USAGE, RESPONSES_USAGE


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


def test_parse_bounds_accepted() -> None:
    info = apis.CHAT.parse({"model": "m", "max_completion_tokens": MAX_OUTPUT_TOKENS})
    assert info.max_output_tokens == MAX_OUTPUT_TOKENS
    assert apis.CHAT.parse({"model": "m", "max_tokens": 1}).max_output_tokens == 1


def test_parse_error_message_shape() -> None:
    with pytest.raises(InvalidRequestError) as exc:
        apis.CHAT.parse({"model": "m", "max_tokens": True})
    assert exc.value.message == (
        "Invalid type for 'max_tokens': expected an integer, but got a boolean instead."
    )
    body = exc.value.body()
    assert body["error"]["param"] == "max_tokens"
    assert body["error"]["type"] == "invalid_request_error"


def test_with_output_limit_never_loosens() -> None:
    body = {"model": "m", "max_completion_tokens": 20}
    assert apis.CHAT.with_output_limit(apis.CHAT.parse(body), body, 100) is body
    body = {"model": "m", "max_output_tokens": 20}
    assert apis.RESPONSES.with_output_limit(apis.RESPONSES.parse(body), body, 100) is body


def test_with_output_limit_null_field_is_set() -> None:
    body = {"model": "m", "max_completion_tokens": None, "max_tokens": None}
    out = apis.CHAT.with_output_limit(apis.CHAT.parse(body), body, 64)
    assert out == {"model": "m", "max_completion_tokens": 64, "max_tokens": None}


@pytest.mark.parametrize(
    ("api", "body"),
    [
        (apis.EMBEDDINGS, {"model": "m", "input": "x"}),
        (apis.IMAGES, {"prompt": "x"}),
        (apis.OTHER, {"model": "m"}),
    ],
)
def test_with_output_limit_no_field(api: ApiSpec, body: dict[str, Any]) -> None:
    assert api.with_output_limit(api.parse(body), body, 10) is body


def test_with_output_limit_rejects_nonpositive() -> None:
    body = {"model": "m"}
    with pytest.raises(ValueError):
        apis.CHAT.with_output_limit(apis.CHAT.parse(body), body, 0)


def test_with_reasoning_effort() -> None:
    body: dict[str, Any] = {"model": "m", "reasoning_effort": "high"}
    assert apis.CHAT.with_reasoning_effort(apis.CHAT.parse(body), body, "low") == {
        "model": "m",
        "reasoning_effort": "low",
    }
    assert body["reasoning_effort"] == "high"
    assert apis.CHAT.with_reasoning_effort(apis.CHAT.parse(body), body, "high") is body

    reasoning = {"effort": "high", "summary": "auto"}
    body = {"model": "m", "reasoning": reasoning}
    out = apis.RESPONSES.with_reasoning_effort(apis.RESPONSES.parse(body), body, "minimal")
    assert out["reasoning"] == {"effort": "minimal", "summary": "auto"}
    assert reasoning == {"effort": "high", "summary": "auto"}
    body = {"model": "m"}
    assert apis.RESPONSES.with_reasoning_effort(apis.RESPONSES.parse(body), body, "low") == {
        "model": "m",
        "reasoning": {"effort": "low"},
    }
    body = {"model": "m", "input": "x"}
    assert apis.EMBEDDINGS.with_reasoning_effort(apis.EMBEDDINGS.parse(body), body, "low") is body
    with pytest.raises(ValueError):
        apis.CHAT.with_reasoning_effort(apis.CHAT.parse(body), body, "turbo")


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
