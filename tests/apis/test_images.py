"""The Image generation spec (``gateway.apis``)."""

from __future__ import annotations

from gateway import apis
from gateway.apis import Usage

IMAGES_USAGE = {
    "input_tokens": 40,
    "input_tokens_details": {"text_tokens": 40, "image_tokens": 0},
    "output_tokens": 1056,
    "output_tokens_details": {"image_tokens": 1056, "text_tokens": 0},
    "total_tokens": 1096,
}


def test_parse_images() -> None:
    info = apis.IMAGES.parse({"prompt": "a cat"})
    assert info.model is None
    assert info.n == 1
    assert info.output_limit_field is None
    info = apis.IMAGES.parse({"prompt": "a cat", "model": "gpt-image-1", "n": 3, "stream": True})
    assert (info.model, info.n, info.stream) == ("gpt-image-1", 3, True)
    assert apis.IMAGES.parse({"prompt": "x", "model": None}).model is None


def test_usage_images() -> None:
    assert apis.IMAGES.usage(IMAGES_USAGE) == Usage(40, 1056, 0, 0, 1096)
    # The streaming event's older ImagesUsage has no output_tokens_details.
    old = {"input_tokens": 40, "input_tokens_details": {"text_tokens": 40}, "output_tokens": 10}
    assert apis.IMAGES.usage({**old, "total_tokens": 50}) == Usage(40, 10, 0, 0, 50)
