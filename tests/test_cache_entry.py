"""gateway.cache.entry: storage format, SSE recording and replay (real and hand-written streams)."""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest

from gateway import apis, json_codec
from gateway.apis import ApiSpec, Usage
from gateway.cache.entry import (
    CONTENT_HEADERS,
    FORMAT_VERSION,
    CachedResponse,
    content_headers,
    decode,
    encode,
    json_storable,
)
from gateway.cache.recorder import SseRecorder, replay_events
from gateway.mock import MockUpstream
from gateway.sse import StreamMeter
from tests.support.gateway_proc import UPSTREAM_KEY

USAGE = Usage(
    prompt_tokens=24,
    completion_tokens=9,
    reasoning_tokens=3,
    cached_prompt_tokens=4,
    total_tokens=33,
)
MESSAGES = [{"role": "user", "content": "Colour of the sky?"}]


async def fetch(
    upstream: MockUpstream, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """The raw bytes the mock upstream sends (everything that arrived, even if cut)."""
    all_headers = {"Authorization": f"Bearer {UPSTREAM_KEY}", **(headers or {})}
    received = bytearray()
    async with (
        aiohttp.ClientSession() as session,
        session.post(upstream.url + path, json=body, headers=all_headers) as resp,
    ):
        try:
            async for chunk in resp.content.iter_any():
                received += chunk
        except aiohttp.ClientPayloadError:
            pass  # cut by x-mock-drop-after-chunks
        return resp.status, dict(resp.headers), bytes(received)


class Recording:
    """A recorder on the relay's meter, fed as the relay feeds it (flushed at the end)."""

    def __init__(self, api: ApiSpec, *, max_bytes: int) -> None:
        self.meter = StreamMeter(api, hide_usage=False)
        self.recorder = SseRecorder(self.meter, max_bytes=max_bytes)

    def feed(self, chunk: bytes) -> None:
        self.meter.feed(chunk)

    @property
    def reason(self) -> str | None:
        return self.recorder.reason

    @property
    def usage(self) -> Usage | None:
        return self.recorder.usage

    def result(self) -> list[bytes] | None:
        self.meter.flush()
        return self.recorder.result()


def joined(parts: list[bytes] | None) -> bytes | None:
    return None if parts is None else b"".join(parts)


def record(
    api: ApiSpec, raw: bytes, *, max_bytes: int = 1 << 20, chunk_sizes: int = 0
) -> Recording:
    recorder = Recording(api, max_bytes=max_bytes)
    if chunk_sizes:
        rng = random.Random(chunk_sizes)
        pos = 0
        while pos < len(raw):
            step = rng.randint(1, chunk_sizes)
            recorder.feed(raw[pos : pos + step])
            pos += step
    else:
        recorder.feed(raw)
    return recorder


def relay(api: ApiSpec, raw: bytes, *, hide_usage: bool) -> bytes:
    """What the gateway's live relay sends a client for these upstream bytes."""
    meter = StreamMeter(api, hide_usage=hide_usage)
    return meter.feed(raw) + meter.flush()


def stream_entry(api: ApiSpec, events: Sequence[bytes]) -> CachedResponse:
    return CachedResponse(
        api=api,
        status=200,
        headers=(("content-type", "text/event-stream; charset=utf-8"),),
        created_at=1_764_067_200,
        events=events,
        usage=USAGE,
    )


# ------------------------------------------------------------------------------ encoding


def test_json_roundtrip_and_header_allow_list() -> None:
    body = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[],"usage":{}}'
    entry = CachedResponse(
        api=apis.CHAT,
        status=200,
        headers=(
            ("Content-Type", "application/json"),
            ("x-request-id", "req_1"),
            ("openai-processing-ms", "1032"),
            ("OpenAI-Version", "2020-10-01"),
            ("openai-model", "gpt-4o-mini-2024-07-18"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("content-length", "70"),
            ("set-cookie", "__cf_bm=x"),
            ("date", "Tue, 25 Nov 2025 10:00:00 GMT"),
        ),
        created_at=1_764_067_200,
        body=body,
        usage=USAGE,
    )
    assert entry.headers == (
        ("content-type", "application/json"),
        ("openai-version", "2020-10-01"),
        ("openai-model", "gpt-4o-mini-2024-07-18"),
    )
    assert {name for name, _ in entry.headers} <= CONTENT_HEADERS
    data = encode(entry)
    assert data[:4] == b"GWC" + bytes([FORMAT_VERSION])
    assert decode(data) == entry
    assert entry.content_bytes == len(body)
    assert not entry.is_stream
    assert entry.age(1_764_067_260.9) == 60
    assert entry.age(0) == 0


def test_stream_roundtrip_without_usage() -> None:
    events = [b"data: {}\n\n", b"data: \xc3\xa9t\xc3\xa9 \x00\xff\n\n", b"data: [DONE]\n\n"]
    entry = CachedResponse(
        api=apis.COMPLETIONS, status=200, headers=[("Content-Type", "text/event-stream")],
        created_at=5, events=events,
    )  # fmt: skip
    assert entry.events == tuple(events)
    assert entry.headers == (("content-type", "text/event-stream"),)
    decoded = decode(encode(entry))
    assert decoded == entry
    assert decoded is not None and decoded.usage is None and decoded.is_stream
    assert decoded.content_bytes == sum(map(len, events))


def test_empty_events_and_body_roundtrip() -> None:
    for entry in (
        CachedResponse(api=apis.EMBEDDINGS, status=200, headers=(), created_at=0, body=b""),
        CachedResponse(api=apis.RESPONSES, status=200, headers=(), created_at=0, events=[]),
    ):
        assert decode(encode(entry)) == entry


def test_body_xor_events() -> None:
    with pytest.raises(ValueError):
        CachedResponse(api=apis.CHAT, status=200, headers=(), created_at=0)
    with pytest.raises(ValueError):
        CachedResponse(api=apis.CHAT, status=200, headers=(), created_at=0, body=b"", events=[])


def _forge(meta: Any, content: bytes = b"", version: int = FORMAT_VERSION) -> bytes:
    meta_bytes = json_codec.dumps(meta)
    payload = len(meta_bytes).to_bytes(4, "big") + meta_bytes + content
    return b"GWC" + bytes([version]) + zlib.compress(payload)


GOOD_META = {
    "api": "chat_completions",
    "status": 200,
    "headers": [["content-type", "application/json"]],
    "created_at": 1,
    "usage": [1, 2, 0, 0, 3],
    "kind": "json",
    "sizes": [2],
}


def test_forged_good_meta_decodes() -> None:
    entry = decode(_forge(GOOD_META, b"{}"))
    assert entry is not None
    assert entry.body == b"{}"
    assert entry.usage == Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GWC",
        b"GWC\x01",
        b"not an entry at all",
        b"GWC\x01" + b"\x78\x9c garbage",
        _forge(GOOD_META, b"{}", version=2),
        _forge(GOOD_META, b"{}", version=0),
        _forge(GOOD_META, b"{}")[:-3],  # truncated zlib stream
        _forge(GOOD_META, b"{}") + b"trailing",
        _forge(GOOD_META, b"{}!"),  # sizes do not add up
        _forge(GOOD_META, b""),
        _forge({**GOOD_META, "api": "nope"}, b"{}"),
        _forge({**GOOD_META, "status": "200"}, b"{}"),
        _forge({**GOOD_META, "status": 42}, b"{}"),
        _forge({**GOOD_META, "created_at": -1}, b"{}"),
        _forge({**GOOD_META, "headers": [["a"]]}, b"{}"),
        _forge({**GOOD_META, "headers": [["a", 1]]}, b"{}"),
        _forge({**GOOD_META, "headers": {"a": "b"}}, b"{}"),
        _forge({**GOOD_META, "usage": [1, 2, 3]}, b"{}"),
        _forge({**GOOD_META, "usage": [1, 2, 3, 4, -5]}, b"{}"),
        _forge({**GOOD_META, "usage": [1, 2, 3, 4, True]}, b"{}"),
        _forge({**GOOD_META, "kind": "xml"}, b"{}"),
        _forge({**GOOD_META, "sizes": [1, 1]}, b"{}"),  # json with two parts
        _forge({**GOOD_META, "sizes": [-1, 3]}, b"{}"),
        _forge({**GOOD_META, "sizes": "2"}, b"{}"),
        _forge([1, 2, 3], b"{}"),
        b"GWC\x01" + zlib.compress(b"\x00\x00\x00\x09not json!"),
        b"GWC\x01" + zlib.compress(b"\xff\xff\xff\xff{}"),  # meta length beyond the payload
        b"GWC\x01" + zlib.compress(b"\x00\x00"),
    ],
)
def test_corrupt_is_none(data: bytes) -> None:
    assert decode(data) is None


def test_every_single_byte_flip_is_none_or_equal() -> None:
    entry = stream_entry(apis.CHAT, [b"data: {}\n\n", b"data: [DONE]\n\n"])
    data = encode(entry)
    for i in range(len(data)):
        corrupt = bytearray(data)
        corrupt[i] ^= 0x41
        result = decode(bytes(corrupt))  # must never raise
        assert result is None or isinstance(result, CachedResponse)


def test_decode_bounds_inflated_size() -> None:
    entry = CachedResponse(
        api=apis.EMBEDDINGS, status=200, headers=(), created_at=0, body=b"0" * 100_000
    )
    data = encode(entry)
    assert len(data) < 1000
    assert decode(data, max_decoded_bytes=50_000) is None
    assert decode(data, max_decoded_bytes=200_000) == entry


def test_content_headers_accepts_mapping_or_pairs() -> None:
    assert content_headers({"Content-Type": "a", "X-Request-Id": "b"}) == (("content-type", "a"),)
    assert content_headers([("OPENAI-VERSION", "v"), ("server", "cf")]) == (
        ("openai-version", "v"),
    )


# ------------------------------------------------------------------------------ json_storable


@pytest.mark.parametrize(
    ("api", "status", "body", "expected"),
    [
        (apis.CHAT, 200, b'{"choices":[],"usage":{}}', None),
        (apis.EMBEDDINGS, 200, b'{"data":[],"usage":{}}', None),
        (apis.CHAT, 400, b'{"error":{"message":"bad"}}', "status"),
        (apis.CHAT, 500, b"{}", "status"),
        (apis.CHAT, 200, b'{"error":{"message":"odd"}}', "invalid"),
        (apis.CHAT, 200, b"[1,2]", "invalid"),
        (apis.CHAT, 200, b"<html>", "invalid"),
        (apis.RESPONSES, 200, b'{"status":"completed","output":[]}', None),
        (apis.RESPONSES, 200, b'{"status":"incomplete","output":[]}', "incomplete"),
        (apis.RESPONSES, 200, b'{"status":"queued"}', "incomplete"),
        (apis.CHAT, 200, b'{"x":"' + b"a" * 2000 + b'"}', "too_large"),
    ],
)
def test_json_storable(api: ApiSpec, status: int, body: bytes, expected: str | None) -> None:
    assert json_storable(api, status, body, max_bytes=1024) == expected


async def test_json_storable_on_real_bodies(upstream: MockUpstream) -> None:
    chat = {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0}
    status, headers, body = await fetch(upstream, "/chat/completions", chat)
    assert json_storable(apis.CHAT, status, body, max_bytes=1 << 20) is None
    usage = apis.CHAT.usage_from_json(body)
    entry = CachedResponse(
        api=apis.CHAT, status=status, headers=tuple(headers.items()), created_at=1, body=body,
        usage=usage,
    )  # fmt: skip
    assert decode(encode(entry)) == entry
    assert dict(entry.headers)["content-type"].startswith("application/json")
    assert "x-request-id" not in dict(entry.headers)

    cut = {"model": "gpt-5-mini", "input": "hi", "max_output_tokens": 4, "store": False}
    status, _, body = await fetch(upstream, "/responses", cut)
    assert json_storable(apis.RESPONSES, status, body, max_bytes=1 << 20) == "incomplete"
    status, _, body = await fetch(upstream, "/chat/completions", chat, {"x-mock-status": "503"})
    assert json_storable(apis.CHAT, status, body, max_bytes=1 << 20) == "status"


# ------------------------------------------------------------------------------ recording


@pytest.mark.parametrize(
    ("api", "path", "body"),
    [
        (
            apis.CHAT,
            "/chat/completions",
            {"model": "gpt-4o-mini", "messages": MESSAGES, "n": 2},
        ),
        (apis.CHAT, "/chat/completions", {"model": "o3-mini", "messages": MESSAGES}),
        (apis.COMPLETIONS, "/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Hi"}),
    ],
)
async def test_record_and_replay_chat_like(
    upstream: MockUpstream, api: ApiSpec, path: str, body: dict[str, Any]
) -> None:
    # What the gateway sends upstream: include_usage always on.
    upstream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    status, _, raw = await fetch(upstream, path, upstream_body)
    assert status == 200
    assert raw.endswith(b"data: [DONE]\n\n")
    for chunking in (0, 1, 7, 300):
        recorder = record(api, raw, chunk_sizes=chunking)
        events = recorder.result()
        assert events is not None, recorder.reason
        assert recorder.reason is None
        assert b"".join(events) == raw
        assert all(e.endswith(b"\n\n") for e in events)  # runs of whole events
        assert events[-1].endswith(b"data: [DONE]\n\n")
        assert recorder.usage is not None and recorder.usage.total_tokens > 0

    assert events is not None
    entry = decode(encode(stream_entry(api, events)))
    assert entry is not None
    hidden = b"".join(replay_events(entry, include_usage=False))
    shown = b"".join(replay_events(entry, include_usage=True))
    assert hidden == relay(api, raw, hide_usage=True)
    assert shown == relay(api, raw, hide_usage=False) == raw
    assert b'"usage"' not in hidden and b"[DONE]" in hidden
    # ... and equal to what upstream sends a client that never asked for usage,
    # apart from ids and timestamps
    _, _, plain = await fetch(upstream, path, {**body, "stream": True})
    assert _normalise(hidden) == _normalise(plain)


def _normalise(raw: bytes) -> list[Any]:
    out = []
    for line in raw.split(b"\n\n"):
        if line.startswith(b"data: {"):
            obj = json_codec.loads(line[6:])
            obj.pop("id"), obj.pop("created")
            out.append(obj)
        else:
            out.append(line)
    return out


async def test_record_and_replay_responses(upstream: MockUpstream) -> None:
    body = {"model": "gpt-5-mini", "input": "Colour?", "stream": True, "store": False}
    _, _, raw = await fetch(upstream, "/responses", body)
    recorder = record(apis.RESPONSES, raw, chunk_sizes=5)
    events = recorder.result()
    assert events is not None
    assert b"".join(events) == raw
    assert events[-1].startswith(b"event: response.completed\n")
    assert recorder.usage is not None and recorder.usage.reasoning_tokens == 16
    entry = stream_entry(apis.RESPONSES, events)
    for include_usage in (False, True):
        replayed = list(replay_events(entry, include_usage=include_usage))
        assert replayed == events
        assert b"".join(replayed) == relay(apis.RESPONSES, raw, hide_usage=not include_usage)


async def test_responses_incomplete_is_not_cacheable(upstream: MockUpstream) -> None:
    body = {"model": "gpt-5-mini", "input": "x", "stream": True, "max_output_tokens": 4}
    _, _, raw = await fetch(upstream, "/responses", body)
    assert b"event: response.incomplete" in raw
    recorder = record(apis.RESPONSES, raw)
    assert recorder.result() is None
    assert recorder.reason == "incomplete"
    assert recorder.usage is not None  # still metered


@pytest.mark.parametrize("drop_after", [0, 1, 5])
async def test_cut_streams_are_not_cacheable(upstream: MockUpstream, drop_after: int) -> None:
    cases: list[tuple[ApiSpec, str, dict[str, Any]]] = [
        (apis.CHAT, "/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES}),
        (apis.RESPONSES, "/responses", {"model": "gpt-4o-mini", "input": "hi"}),
    ]
    for api, path, body in cases:
        _, _, raw = await fetch(
            upstream,
            path,
            {**body, "stream": True, "stream_options": {"include_usage": True}}
            if api is apis.CHAT
            else {**body, "stream": True},
            {"x-mock-drop-after-chunks": str(drop_after)},
        )
        recorder = record(api, raw)
        assert recorder.result() is None
        assert recorder.reason == "incomplete"


def test_cut_right_before_done() -> None:
    complete = b'data: {"choices":[]}\n\ndata: [DONE]\n\n'
    for cut in range(len(complete) - 1):
        assert record(apis.CHAT, complete[:cut]).result() is None
    assert joined(record(apis.CHAT, complete).result()) == complete


CHAT_ERROR_STREAM = (
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}\n\n'
    b'data: {"error":{"message":"upstream went away","type":"server_error","code":null}}\n\n'
    b"data: [DONE]\n\n"
)
TRICKY_CHAT_STREAM = (
    # "error": appears inside content (escaped quotes) and as a key with a null value
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"say \\"error\\": 1"}}],'
    b'"error":null,"usage":null}\n\n'
    b"data: [DONE]\n\n"
)


def test_chat_error_event_is_not_cacheable() -> None:
    recorder = record(apis.CHAT, CHAT_ERROR_STREAM, chunk_sizes=3)
    assert recorder.result() is None
    assert recorder.reason == "error"
    tricky = record(apis.CHAT, TRICKY_CHAT_STREAM)
    assert tricky.result() is not None


def _responses_event(kind: str, **fields: Any) -> bytes:
    payload = json_codec.dumps({"type": kind, "sequence_number": 0, **fields})
    return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        (
            [
                _responses_event("response.created", response={"error": None, "status": "x"}),
                _responses_event("error", code="server_error", message="boom", param=None),
            ],
            "error",
        ),
        (
            [
                _responses_event("response.created", response={"error": None}),
                _responses_event(
                    "response.failed",
                    response={"status": "failed", "error": {"code": "x", "message": "y"}},
                ),
            ],
            "incomplete",
        ),
        (
            [
                _responses_event("response.created", response={"error": None}),
                _responses_event("response.completed", response={"error": None, "usage": None}),
            ],
            None,
        ),
        (
            # an error after the terminal event still poisons the stream
            [
                _responses_event("response.completed", response={"error": None}),
                b'data: {"error":{"message":"late"}}\n\n',
            ],
            "error",
        ),
        (
            # no event: lines, the type read from the data
            [
                b'data: {"type":"response.created","response":{"error":null}}\n\n',
                b'data: {"type":"response.completed","response":{"error":null}}\n\n',
            ],
            None,
        ),
    ],
)
def test_responses_terminal_rules(events: list[bytes], reason: str | None) -> None:
    recorder = record(apis.RESPONSES, b"".join(events), chunk_sizes=11)
    assert recorder.reason == reason
    result = recorder.result()
    assert (result is None) == (reason is not None)
    if result is not None:
        assert b"".join(result) == b"".join(events)


def test_images_stream() -> None:
    events = [
        b"event: image_generation.partial_image\ndata: "
        b'{"type":"image_generation.partial_image","b64_json":"AAAA","partial_image_index":0}\n\n',
        b"event: image_generation.completed\ndata: "
        b'{"type":"image_generation.completed","b64_json":"AAAA","usage":{"input_tokens":5,'
        b'"output_tokens":100,"total_tokens":105}}\n\n',
    ]
    recorder = record(apis.IMAGES, b"".join(events))
    assert joined(recorder.result()) == b"".join(events)
    assert recorder.usage is not None and recorder.usage.total_tokens == 105
    assert record(apis.IMAGES, events[0]).result() is None


async def test_oversized_stream_is_dropped(upstream: MockUpstream) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    _, _, raw = await fetch(upstream, "/chat/completions", body)
    exact = record(apis.CHAT, raw, max_bytes=len(raw), chunk_sizes=50)
    assert exact.result() is not None
    over = record(apis.CHAT, raw, max_bytes=len(raw) - 1, chunk_sizes=50)
    assert over.result() is None
    assert over.reason == "too_large"
    over.feed(b"data: more\n\n")  # ignored from now on
    assert over.result() is None


def test_crlf_and_cr_streams() -> None:
    for sep in (b"\r\n", b"\r"):
        events = [
            b'data: {"choices":[{"index":0,"delta":{"content":"a"}}],"usage":null}' + sep * 2,
            b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,'
            b'"total_tokens":2}}' + sep * 2,
            b"data: [DONE]" + sep * 2,
        ]
        raw = b"".join(events)
        recorder = record(apis.CHAT, raw, chunk_sizes=4)
        assert joined(recorder.result()) == raw
        entry = stream_entry(apis.CHAT, events)
        assert b"".join(replay_events(entry, include_usage=False)) == relay(
            apis.CHAT, raw, hide_usage=True
        )


def test_keepalives_and_trailing_partial_are_replayed_as_relayed() -> None:
    raw = (
        b": keep-alive\n\n"
        b'data: {"choices":[{"index":0,"delta":{}}],"usage":null}\n\n'
        b"\n"  # stray blank line: becomes part of the next event, as in the relay
        b"data: [DONE]\n\n"
        b"\n"  # trailing partial, forwarded by the relay's flush
    )
    recorder = record(apis.CHAT, raw, chunk_sizes=2)
    events = recorder.result()
    assert events is not None
    assert b"".join(events) == raw
    entry = stream_entry(apis.CHAT, events)
    for include_usage in (False, True):
        assert b"".join(replay_events(entry, include_usage=include_usage)) == relay(
            apis.CHAT, raw, hide_usage=not include_usage
        )


def test_result_is_idempotent_and_recorder_rejects_unstreamable_apis() -> None:
    recorder = record(apis.CHAT, b"data: [DONE]\n\n")
    assert recorder.result() == recorder.result() == [b"data: [DONE]\n\n"]
    for api in (apis.EMBEDDINGS, apis.OTHER):
        with pytest.raises(ValueError):
            SseRecorder(StreamMeter(api, hide_usage=False), max_bytes=100)
    json_entry = CachedResponse(api=apis.CHAT, status=200, headers=(), created_at=0, body=b"{}")
    with pytest.raises(ValueError):
        list(replay_events(json_entry, include_usage=True))
