"""The passthrough APIs (OTHER) spec (``gateway.apis``)."""

from __future__ import annotations

import pytest

from gateway import apis
from gateway.apis import Usage, classify
from tests.apis.samples import RESPONSES_USAGE


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


def test_parse_ignores_fields_of_other_apis() -> None:
    # The gateway only validates what it reads for that API; the upstream owns the rest.
    assert apis.EMBEDDINGS.parse({"model": "m", "stream": "x", "n": "y"}).stream is False
    info = apis.RESPONSES.parse({"model": "m", "n": "x", "reasoning_effort": 5})
    assert info.n == 1
    assert apis.IMAGES.parse({"temperature": "hot"}).temperature is None


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


def test_usage_other_guesses_shape() -> None:
    assert apis.OTHER.usage(RESPONSES_USAGE) == Usage(11, 70, 64, 3, 81)
    run = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert apis.OTHER.usage(run) == Usage(3, 4, 0, 0, 7)
