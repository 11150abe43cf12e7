"""Unit tests for gateway.sse.StreamMeter on realistic OpenAI streams."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable
from typing import Any

import pytest

from gateway import apis, json_codec
from gateway.apis import ApiSpec, Usage
from gateway.sse import StreamMeter

# ----------------------------------------------------------------------------- stream builders

HEAD = {
    "id": "chatcmpl-9xYz",
    "object": "chat.completion.chunk",
    "created": 1764067200,
    "model": "gpt-4o-mini-2024-07-18",
    "service_tier": "default",
    "system_fingerprint": "fp_0a1b2c3d4e",
}
CHAT_USAGE = {
    "prompt_tokens": 24,
    "completion_tokens": 9,
    "total_tokens": 33,
    "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 3,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
CHAT_EXPECTED = Usage(
    prompt_tokens=24,
    completion_tokens=9,
    reasoning_tokens=3,
    cached_prompt_tokens=4,
    total_tokens=33,
)

# Content that tries to fool the byte searches: inside a JSON string every quote is escaped.
TRICKY = 'Write ,"usage":null and "usage":{"prompt_tokens":1} and data: [DONE]\n\n ok'


def chat_deltas() -> list[tuple[dict[str, Any], str | None]]:
    """(choice, obfuscation) pairs, in the order OpenAI streams them."""
    return [
        (
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "", "refusal": None},
                "logprobs": None,
                "finish_reason": None,
            },
            "Xq3",
        ),
        ({"index": 0, "delta": {"content": "Blue."}, "logprobs": None, "finish_reason": None}, "p"),
        ({"index": 0, "delta": {"content": TRICKY}, "logprobs": None, "finish_reason": None}, "zz"),
        (
            {"index": 0, "delta": {"content": "été ✓"}, "logprobs": None, "finish_reason": None},
            None,
        ),
        ({"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}, None),
    ]


def chat_stream(*, include_usage: bool, sep: bytes = b"\n\n", usage_space: bool = False) -> bytes:
    """Exactly what OpenAI sends for the same completion with or without include_usage."""
    events: list[bytes] = []
    for choice, obfuscation in chat_deltas():
        chunk: dict[str, Any] = {**HEAD, "choices": [choice]}
        if include_usage:
            chunk["usage"] = None
        if obfuscation is not None:
            chunk["obfuscation"] = obfuscation
        events.append(b"data: " + json_codec.dumps(chunk))
    if include_usage:
        last = json_codec.dumps({**HEAD, "choices": [], "usage": CHAT_USAGE})
        if usage_space:
            last = last.replace(b'"usage":{', b'"usage": {')
        events.append(b"data: " + last)
    events.append(b"data: [DONE]")
    return b"".join(e + sep for e in events)


def completions_stream(*, include_usage: bool) -> bytes:
    head = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "gpt-3.5-turbo-instruct",
    }
    events = []
    for text, reason in [("Hello", None), (" world", None), ("", "length")]:
        chunk: dict[str, Any] = {
            **head,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": reason}],
        }
        if include_usage:
            chunk["usage"] = None
        events.append(b"data: " + json_codec.dumps(chunk) + b"\n\n")
    if include_usage:
        usage = {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
        events.append(
            b"data: " + json_codec.dumps({**head, "choices": [], "usage": usage}) + b"\n\n"
        )
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


RESPONSES_USAGE = {
    "input_tokens": 11,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 70,
    "output_tokens_details": {"reasoning_tokens": 64},
    "total_tokens": 81,
}


def responses_stream(
    terminal: str = "response.completed", usage: object = RESPONSES_USAGE
) -> bytes:
    resp = {"id": "resp_1", "object": "response", "status": "in_progress", "usage": None}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": resp}),
        ("response.in_progress", {"response": resp}),
        (
            "response.output_item.added",
            {"output_index": 1, "item": {"type": "message", "id": "msg_1", "content": []}},
        ),
        ("response.output_text.delta", {"item_id": "msg_1", "delta": TRICKY}),
        (
            "response.output_text.delta",
            {"item_id": "msg_1", "delta": 'event: response.completed\n"usage":{}'},
        ),
        ("response.output_text.done", {"item_id": "msg_1", "text": "Blue."}),
        (
            terminal,
            {
                "response": {
                    "id": "resp_1",
                    "object": "response",
                    "status": terminal.split(".")[1],
                    "output": [{"type": "message", "content": [{"text": "Blue."}]}],
                    "usage": usage,
                }
            },
        ),
    ]
    out = []
    for seq, (kind, payload) in enumerate(events):
        data = json_codec.dumps({"type": kind, "sequence_number": seq, **payload})
        out.append(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n")
    return b"".join(out)


def images_stream() -> bytes:
    partial: dict[str, Any] = {
        "type": "image_generation.partial_image",
        "b64_json": "QUJD" * 5000,
        "partial_image_index": 0,
    }
    done: dict[str, Any] = {
        "type": "image_generation.completed",
        "b64_json": "QUJD" * 5000,
        "usage": {
            "input_tokens": 40,
            "input_tokens_details": {"text_tokens": 40},
            "output_tokens": 1056,
            "total_tokens": 1096,
        },
    }
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + json_codec.dumps(e) + b"\n\n"
        for e in (partial, done)
    )


def crlf(stream: bytes) -> bytes:
    return stream.replace(b"\n", b"\r\n")


def cr(stream: bytes) -> bytes:
    return stream.replace(b"\n", b"\r")


def run(meter: StreamMeter, pieces: Iterable[bytes]) -> bytes:
    out = [meter.feed(p) for p in pieces]
    out.append(meter.flush())
    return b"".join(out)


def whole(api: ApiSpec, stream: bytes, *, hide: bool) -> tuple[bytes, StreamMeter]:
    meter = StreamMeter(api, hide_usage=hide)
    return run(meter, [stream]), meter


def bytewise(api: ApiSpec, stream: bytes, *, hide: bool) -> tuple[bytes, StreamMeter]:
    meter = StreamMeter(api, hide_usage=hide)
    return run(meter, [stream[i : i + 1] for i in range(len(stream))]), meter


def random_pieces(stream: bytes, rng: random.Random, cuts: int) -> list[bytes]:
    points = sorted(rng.sample(range(1, len(stream)), min(cuts, len(stream) - 1)))
    bounds = [0, *points, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


# ----------------------------------------------------------------------------- chat


def test_builders_match_contract_shape() -> None:
    with_usage = chat_stream(include_usage=True)
    without = chat_stream(include_usage=False)
    assert b',"usage":null,"obfuscation":"Xq3"}\n\n' in with_usage
    assert b'"choices":[],"usage":{"prompt_tokens":24,' in with_usage
    assert b'"usage"' not in without.replace(b'\\"usage\\"', b"")
    assert with_usage.endswith(b"data: [DONE]\n\n")


def test_chat_passthrough_with_usage() -> None:
    stream = chat_stream(include_usage=True)
    out, meter = whole(apis.CHAT, stream, hide=False)
    assert out == stream
    assert meter.usage == CHAT_EXPECTED
    assert meter.done is True
    assert meter.events == 7


def test_chat_hide_usage_gives_the_stream_without_include_usage() -> None:
    out, meter = whole(apis.CHAT, chat_stream(include_usage=True), hide=True)
    assert out == chat_stream(include_usage=False)
    assert meter.usage == CHAT_EXPECTED
    assert meter.done is True
    assert meter.events == 7  # the hidden chunk was still seen


def test_chat_hide_keeps_string_content() -> None:
    out, _ = whole(apis.CHAT, chat_stream(include_usage=True), hide=True)
    decoded = [
        json_codec.loads(line[6:]) for line in out.split(b"\n\n") if line.startswith(b"data: {")
    ]
    assert decoded[2]["choices"][0]["delta"]["content"] == TRICKY
    assert all("usage" not in d for d in decoded)


def test_chat_without_include_usage_has_no_usage() -> None:
    stream = chat_stream(include_usage=False)
    for hide in (False, True):
        out, meter = whole(apis.CHAT, stream, hide=hide)
        assert out == stream
        assert meter.usage is None
        assert meter.done is True


def test_chat_usage_with_space() -> None:
    stream = chat_stream(include_usage=True, usage_space=True)
    out, meter = whole(apis.CHAT, stream, hide=False)
    assert out == stream
    assert meter.usage == CHAT_EXPECTED
    out, meter = whole(apis.CHAT, stream, hide=True)
    assert out == chat_stream(include_usage=False)
    assert meter.usage == CHAT_EXPECTED


@pytest.mark.parametrize("convert", [crlf, cr], ids=["crlf", "cr"])
def test_chat_other_line_endings(convert: Any) -> None:
    # TRICKY holds an escaped "\n" (backslash n), never a raw newline, so conversion is safe.
    stream = convert(chat_stream(include_usage=True))
    out, meter = whole(apis.CHAT, stream, hide=False)
    assert out == stream
    assert meter.usage == CHAT_EXPECTED
    assert meter.done
    assert meter.events == 7
    out, meter = whole(apis.CHAT, stream, hide=True)
    assert out == convert(chat_stream(include_usage=False))
    assert meter.usage == CHAT_EXPECTED
    out2, meter2 = bytewise(apis.CHAT, stream, hide=True)
    assert out2 == out
    assert meter2.usage == CHAT_EXPECTED


def test_chat_bytewise_equals_whole() -> None:
    for hide in (False, True):
        stream = chat_stream(include_usage=True)
        expected, _ = whole(apis.CHAT, stream, hide=hide)
        out, meter = bytewise(apis.CHAT, stream, hide=hide)
        assert out == expected
        assert meter.usage == CHAT_EXPECTED
        assert meter.done
        assert meter.events == 7


def test_feed_releases_only_complete_events() -> None:
    meter = StreamMeter(apis.CHAT, hide_usage=False)
    assert meter.feed(b"data: {") == b""
    assert meter.feed(b'"a":1}\n') == b""
    assert meter.feed(b"\ndata: [DO") == b'data: {"a":1}\n\n'
    assert meter.done is False
    assert meter.feed(b"NE]\n\n") == b"data: [DONE]\n\n"
    assert meter.done is True
    assert meter.feed(b"") == b""
    assert meter.flush() == b""


def test_hot_path_returns_chunk_itself() -> None:
    meter = StreamMeter(apis.CHAT, hide_usage=False)
    chunk = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
    assert meter.feed(chunk) is chunk


def test_done_detection() -> None:
    for done in (b"data: [DONE]\n\n", b"data:[DONE]\n\n", b": ping\ndata: [DONE]\n\n"):
        meter = StreamMeter(apis.CHAT, hide_usage=True)
        assert meter.feed(done) == done
        assert meter.done
    meter = StreamMeter(apis.CHAT, hide_usage=False)
    meter.feed(b'data: {"choices":[{"delta":{"content":"data: [DONE]"}}]}\n\n')
    assert not meter.done
    meter = StreamMeter(apis.CHAT, hide_usage=False)
    meter.feed(b"data: [DONE]")  # no blank line yet: not an event
    assert not meter.done


def test_cut_stream() -> None:
    stream = chat_stream(include_usage=True)
    cut = stream.index(b'data: {"id":"chatcmpl-9xYz","object":"chat.completion.chunk"', 600) + 40
    for hide in (False, True):
        meter = StreamMeter(apis.CHAT, hide_usage=hide)
        out = meter.feed(stream[:cut])
        tail = meter.flush()
        assert tail == stream[stream.rindex(b"\n\n", 0, cut) + 2 : cut]  # held, unchanged
        assert out.endswith(b"\n\n")
        assert tail.startswith(b"data: {") and not tail.endswith(b"\n\n")
        assert meter.usage is None
        assert meter.done is False
    meter = StreamMeter(apis.CHAT, hide_usage=False)
    assert meter.feed(stream[:cut]) + meter.flush() == stream[:cut]


def test_cut_before_done_keeps_usage() -> None:
    stream = chat_stream(include_usage=True)
    cut = stream.rindex(b"data: [DONE]")  # the first one is string content
    out, meter = whole(apis.CHAT, stream[:cut], hide=True)
    assert out == chat_stream(include_usage=False)[: -len(b"data: [DONE]\n\n")]
    assert meter.usage == CHAT_EXPECTED
    assert meter.done is False


def test_malformed_usage_event_is_forwarded_unchanged() -> None:
    bad = b'data: {"choices":[],"usage":{"prompt_tokens":3,\n\n'
    for hide in (False, True):
        stream = b'data: {"choices":[{"delta":{}}],"usage":null}\n\n' + bad + b"data: [DONE]\n\n"
        out, meter = whole(apis.CHAT, stream, hide=hide)
        expected = stream.replace(b',"usage":null', b"") if hide else stream
        assert out == expected
        assert meter.usage is None
        assert meter.done


def test_non_object_usage_values() -> None:
    stream = b'data: {"choices":[],"usage":{}}\n\ndata: {"choices":[],"usage":[1]}\n\n'
    out, meter = whole(apis.CHAT, stream, hide=False)
    assert out == stream
    assert meter.usage == Usage()  # {} is a usage object with no counts


def test_usage_chunk_with_choices_is_kept() -> None:
    # Continuous-usage servers attach usage to content chunks: never drop content.
    event = (
        b'data: {"choices":[{"delta":{"content":"hi"}}],'
        b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}\n\n'
    )
    out, meter = whole(apis.CHAT, event, hide=True)
    assert out == event
    assert meter.usage == Usage(1, 1, 0, 0, 2)


def test_usage_null_as_first_key() -> None:
    out, _ = whole(apis.CHAT, b'data: {"usage":null,"choices":[]}\n\n', hide=True)
    assert out == b'data: {"choices":[]}\n\n'


def test_comments_pass_through() -> None:
    stream = chat_stream(include_usage=True)
    first = stream.index(b"\n\n") + 2
    with_comments = b": keep-alive\n\n" + stream[:first] + b": ping\n\n" + stream[first:]
    out, meter = whole(apis.CHAT, with_comments, hide=False)
    assert out == with_comments
    assert meter.events == 7
    out, meter = whole(apis.CHAT, with_comments, hide=True)
    plain = chat_stream(include_usage=False)
    pfirst = plain.index(b"\n\n") + 2
    assert out == b": keep-alive\n\n" + plain[:pfirst] + b": ping\n\n" + plain[pfirst:]


def test_stray_blank_lines_are_kept() -> None:
    stream = b'data: {"a":1}\n\n\n\ndata: {"b":2}\n\n'
    out, meter = whole(apis.CHAT, stream, hide=True)
    assert out == stream
    assert meter.events == 2


def test_hide_is_ignored_outside_chat() -> None:
    stream = b'data: {"x":1,"usage":null}\n\n'
    out, _ = whole(apis.RESPONSES, stream, hide=True)
    assert out == stream


def test_completions_stream() -> None:
    out, meter = whole(apis.COMPLETIONS, completions_stream(include_usage=True), hide=True)
    assert out == completions_stream(include_usage=False)
    assert meter.usage == Usage(2, 3, 0, 0, 5)
    assert meter.done


# ----------------------------------------------------------------------------- responses


def test_responses_stream() -> None:
    stream = responses_stream()
    out, meter = whole(apis.RESPONSES, stream, hide=False)
    assert out == stream
    assert meter.usage == Usage(11, 70, 64, 0, 81)
    assert meter.done
    assert meter.events == 7


def test_responses_stream_bytewise_and_crlf() -> None:
    for stream in (responses_stream(), crlf(responses_stream())):
        out, meter = bytewise(apis.RESPONSES, stream, hide=False)
        assert out == stream
        assert meter.usage == Usage(11, 70, 64, 0, 81)
        assert meter.done


def test_responses_incomplete_and_failed() -> None:
    _, meter = whole(apis.RESPONSES, responses_stream("response.incomplete"), hide=False)
    assert meter.done
    assert meter.usage == Usage(11, 70, 64, 0, 81)
    _, meter = whole(apis.RESPONSES, responses_stream("response.failed", usage=None), hide=False)
    assert meter.done
    assert meter.usage is None


def test_responses_cut() -> None:
    stream = responses_stream()
    cut = stream.index(b"event: response.completed")
    out, meter = whole(apis.RESPONSES, stream[:cut], hide=False)
    assert out == stream[:cut]
    assert not meter.done
    assert meter.usage is None


def test_responses_error_event_is_not_done() -> None:
    stream = (
        b"event: error\n"
        b'data: {"type":"error","code":"x","message":"m","param":null,"sequence_number":3}\n\n'
    )
    out, meter = whole(apis.RESPONSES, stream, hide=False)
    assert out == stream
    assert not meter.done


def test_responses_malformed_terminal() -> None:
    stream = (
        b"event: response.completed\n"
        b'data: {"type":"response.completed","response":{"usage":{"input_tokens":1\n\n'
    )
    out, meter = whole(apis.RESPONSES, stream, hide=False)
    assert out == stream
    assert meter.done
    assert meter.usage is None


def test_responses_without_event_lines() -> None:
    # A compatible server that omits ``event:`` lines: types come from the data.
    stream = b"".join(
        line + b"\n\n"
        for line in responses_stream().split(b"\n\n")
        if line
        for line in [line.split(b"\n", 1)[1]]
    )
    assert b"event:" not in stream.replace(b"event: response.completed\\n", b"")
    out, meter = whole(apis.RESPONSES, stream, hide=False)
    assert out == stream
    assert meter.done
    assert meter.usage == Usage(11, 70, 64, 0, 81)
    # ...and one that does not put ``type`` first either.
    odd = (
        b'data: {"sequence_number":9,"response":{"usage":{"input_tokens":2,"output_tokens":3}},'
        b'"type":"response.completed"}\n\n'
    )
    out, meter = whole(apis.RESPONSES, odd, hide=False)
    assert out == odd
    assert meter.done
    assert meter.usage == Usage(2, 3, 0, 0, 5)


def test_resumed_responses_stream_as_other() -> None:
    stream = responses_stream()
    out, meter = whole(apis.OTHER, stream, hide=False)
    assert out == stream
    assert meter.done
    assert meter.usage == Usage(11, 70, 64, 0, 81)


def test_other_stream_with_done() -> None:
    stream = (
        b"event: thread.run.step.completed\n"
        b'data: {"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}\n\n'
        b"event: thread.run.completed\n"
        b'data: {"usage":{"prompt_tokens":5,"completion_tokens":6,"total_tokens":11}}\n\n'
        b"event: done\ndata: [DONE]\n\n"
    )
    out, meter = whole(apis.OTHER, stream, hide=True)
    assert out == stream
    assert meter.usage == Usage(5, 6, 0, 0, 11)
    assert meter.done


# ----------------------------------------------------------------------------- images


def test_images_stream() -> None:
    stream = images_stream()
    for out, meter in (
        whole(apis.IMAGES, stream, hide=False),
        bytewise(apis.IMAGES, stream, hide=False),
    ):
        assert out == stream
        assert meter.done
        assert meter.usage == Usage(40, 1056, 0, 0, 1096)
        assert meter.events == 2


def test_images_partial_only() -> None:
    stream = images_stream()
    cut = stream.index(b"event: image_generation.completed")
    _, meter = whole(apis.IMAGES, stream[:cut], hide=False)
    assert not meter.done
    assert meter.usage is None


# ----------------------------------------------------------------------------- properties

STREAMS = [
    (apis.CHAT, chat_stream(include_usage=True)),
    (apis.CHAT, crlf(chat_stream(include_usage=True))),
    (apis.CHAT, cr(chat_stream(include_usage=True))),
    (apis.COMPLETIONS, completions_stream(include_usage=True)),
    (apis.RESPONSES, responses_stream()),
    (apis.RESPONSES, crlf(responses_stream())),
    (apis.IMAGES, images_stream()),
    (apis.CHAT, b": keep-alive\n\n" + chat_stream(include_usage=True)[:-7]),  # cut mid-event
]


@pytest.mark.parametrize(("api", "stream"), STREAMS)
@pytest.mark.parametrize("hide", [False, True])
def test_random_splits_equal_whole(api: ApiSpec, stream: bytes, hide: bool) -> None:
    expected, reference = whole(api, stream, hide=hide)
    rng = random.Random(0)
    for trial in range(200):
        cuts = rng.choice([1, 2, 5, 20, 100, 1000])
        pieces = random_pieces(stream, rng, cuts)
        assert b"".join(pieces) == stream
        meter = StreamMeter(api, hide_usage=hide)
        out = run(meter, pieces)
        assert out == expected, trial
        assert meter.usage == reference.usage
        assert meter.done == reference.done
        assert meter.events == reference.events


def test_every_single_split_point() -> None:
    stream = chat_stream(include_usage=True)
    expected, _ = whole(apis.CHAT, stream, hide=True)
    for i in range(len(stream) + 1):
        meter = StreamMeter(apis.CHAT, hide_usage=True)
        assert run(meter, [stream[:i], stream[i:]]) == expected, i
        assert meter.usage == CHAT_EXPECTED


def test_large_event_in_small_pieces() -> None:
    # A multi-megabyte image event arriving in network-sized pieces stays linear and exact.
    big = (
        b"event: image_generation.partial_image\n"
        b'data: {"type":"image_generation.partial_image","b64_json":"'
        + b"A" * 3_000_000
        + b'"}\n\n'
    )
    meter = StreamMeter(apis.IMAGES, hide_usage=False)
    pieces = [big[i : i + 1024] for i in range(0, len(big), 1024)]
    outs = [meter.feed(p) for p in pieces]
    assert all(o == b"" for o in outs[:-1])
    assert outs[-1] == big
    assert meter.events == 1


def test_other_transcription_stream() -> None:
    stream = (
        b'data: {"type":"transcript.text.delta","delta":"Hi"}\n\n'
        b'data: {"type":"transcript.text.done","text":"Hi","usage":{"type":"tokens",'
        b'"input_tokens":7,"output_tokens":2,"total_tokens":9}}\n\n'
    )
    out, meter = whole(apis.OTHER, stream, hide=False)
    assert out == stream
    assert meter.done
    assert meter.usage == Usage(7, 2, 0, 0, 9)
