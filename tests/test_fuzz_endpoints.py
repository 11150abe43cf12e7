"""Property tests: what the gateway reads from a request body can never crash it.

``parse_request`` sees every metered request's decoded JSON before anything else acts on it.
Whatever a client sends, it must either return a ``RequestInfo`` the quota and cache code can
trust (bounded integers, a non-empty model string...) or raise ``InvalidRequestError`` (an
OpenAI-shaped 400); anything else would be a 500. The rewriters that run afterwards
(output limit, include_usage, reasoning effort) must never raise on what parse accepted,
never mutate the client's body (it is also the cache key), and produce a body the gateway
itself would accept with the limit binding.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import apis, json_codec
from gateway.apis import (
    BAD_JSON,
    MAX_CHOICES,
    MAX_OUTPUT_TOKENS,
    REASONING_EFFORTS,
    ApiSpec,
)
from gateway.errors import InvalidRequestError

FIELDS = [
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "temperature",
    "n",
    "best_of",
    "reasoning",
    "reasoning_effort",
    "messages",
    "input",
    "prompt",
    "store",
    "previous_response_id",
    "user",
    "metadata",
]

# Values chosen to sit on every boundary parse_request checks (bool vs int, the bounds, huge
# integers Python's float() cannot take, NaN, nested option objects of the wrong shape).
EDGES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    2**31,
    2**63,
    10**400,
    -(10**400),
    0.0,
    1.5,
    -0.0,
    float("nan"),
    float("inf"),
    "",
    "gpt-4o-mini",
    "o3-mini",
    "high",
    "max",
    "1",
    [],
    {},
    [{"model": "gpt-4o"}],
    {"include_usage": True},
    {"include_usage": "yes"},
    {"include_usage": 1},
    {"effort": "high"},
    {"effort": 3},
    {"effort": None},
    MAX_OUTPUT_TOKENS,
    MAX_OUTPUT_TOKENS + 1,
    MAX_CHOICES,
    MAX_CHOICES + 1,
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
field_values = st.sampled_from(EDGES) | json_values
bodies = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), field_values, max_size=9)
APIS = [*apis.METERED, apis.OTHER]


def _check_error(exc: InvalidRequestError) -> None:
    body = exc.body()
    assert exc.status == 400
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(exc.message, str) and exc.message


@settings(max_examples=200, deadline=None)
@given(api=st.sampled_from(APIS), body=bodies | json_values)
def test_parse_request_accepts_or_raises_invalid_request_only(api: ApiSpec, body: Any) -> None:
    before = repr(body)  # repr, not ==: NaN never equals itself
    try:
        info = api.parse(body)
    except InvalidRequestError as exc:
        _check_error(exc)
        assert api is not apis.OTHER  # passthrough bodies are never rejected
        return
    assert repr(body) == before
    assert info.api is api
    assert info.model is None or (isinstance(info.model, str) and info.model)
    assert type(info.stream) is bool
    limit = info.max_output_tokens
    assert limit is None or (type(limit) is int and 1 <= limit <= MAX_OUTPUT_TOKENS)
    assert type(info.n) is int and 1 <= info.n <= MAX_CHOICES
    assert info.temperature is None or type(info.temperature) is float
    assert info.reasoning_effort is None or info.reasoning_effort in REASONING_EFFORTS
    assert not info.include_usage or info.stream
    if api is apis.OTHER:
        return

    # The rewriters: never raise on an accepted body, never mutate it, and the gateway
    # accepts what they produce, with the written limit binding.
    for cap in (1, 7, MAX_OUTPUT_TOKENS):
        out = info.api.with_output_limit(info, body, cap)
        assert repr(body) == before
        again = api.parse(out)
        if info.output_limit_field is not None:
            assert again.max_output_tokens is not None and again.max_output_tokens <= cap
            if limit is not None:
                assert again.max_output_tokens == min(cap, limit)  # never loosened
    out = info.api.with_usage_requested(info, body)
    assert repr(body) == before
    again = api.parse(out)
    if info.stream and api in (apis.CHAT, apis.COMPLETIONS):
        assert again.include_usage
    for effort in REASONING_EFFORTS:
        out = info.api.with_reasoning_effort(info, body, effort)
        assert repr(body) == before
        again = api.parse(out)
        if api in (apis.CHAT, apis.RESPONSES):
            assert again.reasoning_effort == effort


@settings(max_examples=200, deadline=None)
@given(api=st.sampled_from(APIS), raw=st.binary(max_size=200) | st.text(max_size=200))
def test_raw_bytes_decode_or_fail_with_what_the_handler_catches(api: ApiSpec, raw: Any) -> None:
    """The handler turns exactly ``BAD_JSON`` into a 400; nothing else may escape decoding."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    try:
        body = json_codec.loads(data)
    except BAD_JSON:
        return
    try:
        api.parse(body)
    except InvalidRequestError as exc:
        _check_error(exc)


def _encodable(value: Any) -> bool:
    try:
        json_codec.dumps(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(api=st.sampled_from(APIS), body=bodies)
def test_wire_round_trip_matches_direct_parse(api: ApiSpec, body: dict[str, Any]) -> None:
    """What arrives over the wire (encoded by a client, decoded by the gateway) is judged the
    same way as the value itself: the decode step adds no new failure mode."""
    if not _encodable(body):
        return
    decoded = json_codec.loads(json_codec.dumps(body))
    try:
        api.parse(decoded)
    except InvalidRequestError as exc:
        _check_error(exc)


usage_keys = st.sampled_from(
    [
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "input_tokens",
        "output_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
        "input_tokens_details",
        "output_tokens_details",
        "reasoning_tokens",
        "cached_tokens",
    ]
)
usage_objects = st.recursive(
    st.sampled_from(EDGES) | scalars,
    lambda children: st.dictionaries(usage_keys | st.text(max_size=4), children, max_size=6),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(api=st.sampled_from(APIS), usage=usage_objects | json_values)
def test_usage_extraction_never_raises_and_never_refunds(api: ApiSpec, usage: Any) -> None:
    found = api.usage(usage)
    if found is None:
        assert not isinstance(usage, dict)
        return
    for value in (
        found.prompt_tokens,
        found.completion_tokens,
        found.reasoning_tokens,
        found.cached_prompt_tokens,
        found.total_tokens,
    ):
        assert type(value) is int and value >= 0  # garbage is zero, never a negative charge
    if _encodable({"usage": usage}):
        assert api.usage_from_json(json_codec.dumps({"usage": usage})) == found


@settings(max_examples=200, deadline=None)
@given(api=st.sampled_from(APIS), raw=st.binary(max_size=300))
def test_usage_from_arbitrary_response_bytes_never_raises(api: ApiSpec, raw: bytes) -> None:
    api.usage_from_json(raw)
    api.usage_from_json(b'{"usage":' + raw + b"}")


def test_huge_integer_temperature_is_a_400_not_a_crash() -> None:
    """A boundary pinned explicitly (random search rarely draws it): ``float(10**400)``
    raised OverflowError, a 500. orjson never produces such an integer (it decodes big numbers
    as floats), but the stdlib fallback of ``json_codec`` does, and ``parse_request`` promises
    InvalidRequestError for any body. Fixed in ``endpoints._opt_number``."""
    for value in (10**400, -(10**400)):
        try:
            info = apis.CHAT.parse({"model": "m", "temperature": value})
        except InvalidRequestError as exc:
            _check_error(exc)
            assert exc.param == "temperature"
        else:
            raise AssertionError(f"accepted temperature {info.temperature!r}")
