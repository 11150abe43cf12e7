"""The Responses spec (``gateway.apis``)."""

from __future__ import annotations

import pytest

from gateway import apis, json_codec
from gateway.apis import RequestInfo, Usage
from gateway.errors import InvalidRequestError, UpstreamUnavailableError
from tests.apis.samples import RESPONSES_USAGE


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


@pytest.mark.parametrize("value", ["extreme", 1, True, [], {}])
def test_parse_wrong_responses_effort(value: object) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        apis.RESPONSES.parse({"model": "m", "reasoning": {"effort": value}})
    assert exc.value.param == "reasoning.effort"


def test_usage_responses() -> None:
    assert apis.RESPONSES.usage(RESPONSES_USAGE) == Usage(11, 70, 64, 3, 81)
    bare = {"input_tokens": 11, "output_tokens": 4, "total_tokens": 15}
    assert apis.RESPONSES.usage(bare) == Usage(11, 4, 0, 0, 15)


class _Options:
    responses_with_store = False
    images = False


class _Profile:
    default_output_tokens = 4096
    min_output_tokens = 1


def test_responses_cache_output_and_stream_rules() -> None:
    api = apis.RESPONSES
    assert api.cache_refusal({"previous_response_id": "resp_1"}, _Options()) == "stateful"
    assert api.cache_refusal({"background": True, "store": False}, _Options()) == "stateful"
    assert api.cache_refusal({}, _Options()) == "store"  # stored by default
    assert api.cache_refusal({"store": False}, _Options()) is None
    assert api.json_complete({"status": "completed"})
    assert not api.json_complete({"status": "incomplete"})
    assert api.min_output_tokens(_Profile()) == 16  # the API refuses less
    assert api.default_output_tokens(_Profile()) == 4096
    assert api.is_terminal_event(b"response.failed")
    assert api.is_cacheable_end(b"response.completed")
    assert not api.is_cacheable_end(b"response.incomplete")


def test_responses_stream_error_event_is_the_spec_error_event() -> None:
    event = apis.RESPONSES.stream_error_event(UpstreamUnavailableError("cut"), 7)
    head, _, data = event.partition(b"\ndata: ")
    assert head == b"event: error" and data.endswith(b"\n\n")
    assert json_codec.loads(data) == {
        "type": "error",
        "sequence_number": 7,
        "code": "upstream_unavailable",
        "message": "cut",
        "param": None,
    }
