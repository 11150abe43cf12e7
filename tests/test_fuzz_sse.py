"""Property tests of the metered SSE path: ``StreamMeter`` and ``relay_sse``.

The contract (see ``gateway/sse.py``): the client receives exactly the upstream's bytes, except
that with ``hide_usage`` the usage-only chunk and the ``"usage":null`` keys the gateway's own
``include_usage`` added are removed. So:

- with ``hide_usage=False`` the concatenated output equals the input, byte for byte, for any
  input and any way the network splits it;
- with ``hide_usage=True`` a generated OpenAI-style stream comes out as exactly the stream
  OpenAI sends without ``include_usage`` (line endings ``\\n``, ``\\r\\n``, ``\\r``; comments,
  ``id:``/``retry:`` lines, stray blank lines, ``data:`` without a space, data split over
  several lines), and for arbitrary bytes the only changes are whole usage-only events dropped
  or one ``"usage":null`` key removed from an event;
- usage and the terminal event are found wherever the stream is split;
- ``relay_sse`` (with a fake upstream and client) passes the same bytes, and a stream cut
  anywhere ends with an error event that a spec-compliant SSE parser (like the SDKs') sees as
  its own event with valid JSON, never glued to a half-received one.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import apis, json_codec
from gateway.apis import BAD_JSON, ApiSpec, Usage
from gateway.cache.entry import CachedResponse
from gateway.cache.recorder import SseRecorder, replay_events
from gateway.sse import StreamMeter
from gateway.upstream.client import read_error
from gateway.upstream.fake import FakeResponse
from gateway.upstream.relay import StreamEnd, relay_sse

EOLS = [b"\n", b"\r\n", b"\r"]
line_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12)
content_text = st.text(max_size=16) | st.sampled_from(
    [
        '"usage":null',
        ',"usage":null',
        '"usage":{"prompt_tokens":9}',
        "data: [DONE]",
        "\n\n",
        "\r\n\r\n",
        "\\",
        '"',
        "event: response.completed",
        ": comment",
        "\u2028",
    ]
)


@dataclass
class Stream:
    """One generated stream: what the upstream sends with include_usage, what OpenAI would
    have sent without it, and what the meter must find."""

    upstream: bytes
    client: bytes
    usage: Usage | None
    done: bool
    api: ApiSpec
    eol: bytes


def _data_lines(payload: bytes, style: str) -> list[bytes]:
    if style == "nospace":
        return [b"data:" + payload]
    if style == "multiline" and payload.startswith(b'{"id":'):
        # Split at a structural comma: SSE joins data lines with "\n", JSON whitespace.
        cut = payload.index(b",") + 1
        return [b"data: " + payload[:cut], b"data: " + payload[cut:]]
    return [b"data: " + payload]


def _chunk(api: ApiSpec, text: str) -> dict[str, Any]:
    if api is apis.CHAT:
        choice: dict[str, Any] = {
            "index": 0,
            "delta": {"content": text},
            "logprobs": None,
            "finish_reason": None,
        }
        kind = "chat.completion.chunk"
    else:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": None}
        kind = "text_completion"
    return {"id": "cmpl-1", "object": kind, "created": 1, "model": "m", "choices": [choice]}


@st.composite
def chat_streams(draw: st.DrawFn) -> Stream:
    api = draw(st.sampled_from([apis.CHAT, apis.COMPLETIONS]))
    eol = draw(st.sampled_from(EOLS))
    styles = st.sampled_from(["space", "nospace", "multiline"])
    up: list[bytes] = []
    client: list[bytes] = []

    def event(up_lines: list[bytes], client_lines: list[bytes] | None) -> None:
        up.append(eol.join(up_lines) + eol + eol)
        if client_lines is not None:
            client.append(eol.join(client_lines) + eol + eol)

    items: list[Any] = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("chunk"), content_text, styles, st.sampled_from(["", "id", ":"])),
                st.tuples(st.just("comment"), line_text),
                st.tuples(st.just("blank")),
            ),
            max_size=8,
        )
    )
    for item in items:
        if item[0] == "chunk":
            _, text, style, prefix = item
            plain = json_codec.dumps(_chunk(api, text))
            with_null = plain[:-1] + b',"usage":null}'
            lead = {"": [], "id": [b"id: 7"], ":": [b": note"]}[prefix]
            event(lead + _data_lines(with_null, style), lead + _data_lines(plain, style))
        elif item[0] == "comment":
            event([b": " + item[1].encode()], [b": " + item[1].encode()])
        else:
            up.append(eol)
            client.append(eol)
    usage = None
    if draw(st.booleans()):
        p, c, r = draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6)), draw(st.integers(0, 9))
        obj = {
            **_chunk(api, ""),
            "choices": [],
            "usage": {
                "prompt_tokens": p,
                "completion_tokens": c,
                "total_tokens": p + c,
                "completion_tokens_details": {"reasoning_tokens": r},
            },
        }
        # The meter frames an event as everything since the previous separator, so an odd
        # stray blank line right before the usage chunk goes with it (an SSE no-op anyway).
        strays = 0
        while strays < len(client) and client[-1 - strays] == eol:
            strays += 1
        if strays % 2:
            client.pop()
        event(_data_lines(json_codec.dumps(obj), draw(styles)), None)
        usage = Usage(prompt_tokens=p, completion_tokens=c, reasoning_tokens=r, total_tokens=p + c)
    done = draw(st.booleans())
    if done:
        line = draw(st.sampled_from([b"data: [DONE]", b"data:[DONE]"]))
        event([line], [line])
    return Stream(b"".join(up), b"".join(client), usage, done, api, eol)


@st.composite
def responses_streams(draw: st.DrawFn) -> Stream:
    eol = draw(st.sampled_from(EOLS))
    with_event_lines = draw(st.booleans())
    parts: list[bytes] = []

    def event(kind: str, payload: dict[str, Any]) -> None:
        lines = [b"event: " + kind.encode()] if with_event_lines else []
        lines.append(b"data: " + json_codec.dumps({"type": kind, **payload}))
        parts.append(eol.join(lines) + eol + eol)

    event("response.created", {"response": {"id": "resp_1", "status": "in_progress"}})
    for text in draw(st.lists(content_text, max_size=5)):
        event("response.output_text.delta", {"delta": text, "output_index": 0})
    if draw(st.booleans()):
        parts.append(b": keep-alive" + eol + eol)
    terminal = draw(st.sampled_from([None, "response.completed", "response.incomplete"]))
    usage = None
    if terminal is not None:
        i, o, r = draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6)), draw(st.integers(0, 9))
        event(
            terminal,
            {
                "response": {
                    "id": "resp_1",
                    "status": terminal.rpartition(".")[2],
                    "usage": {
                        "input_tokens": i,
                        "output_tokens": o,
                        "total_tokens": i + o,
                        "output_tokens_details": {"reasoning_tokens": r},
                    },
                }
            },
        )
        usage = Usage(prompt_tokens=i, completion_tokens=o, reasoning_tokens=r, total_tokens=i + o)
    data = b"".join(parts)
    return Stream(data, data, usage, terminal is not None, apis.RESPONSES, eol)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def run_meter(meter: StreamMeter, pieces: list[bytes]) -> bytes:
    return b"".join(meter.feed(p) for p in pieces) + meter.flush()


cut_lists = st.lists(st.integers(0, 4000), max_size=12)


@settings(max_examples=200, deadline=None)
@given(stream=chat_streams() | responses_streams(), cuts=cut_lists)
def test_without_hiding_the_output_is_the_input(stream: Stream, cuts: list[int]) -> None:
    meter = StreamMeter(stream.api, hide_usage=False)
    assert run_meter(meter, split(stream.upstream, cuts)) == stream.upstream
    assert meter.usage == stream.usage
    assert meter.done == stream.done


@settings(max_examples=200, deadline=None)
@given(stream=chat_streams(), cuts=cut_lists)
def test_hiding_gives_the_stream_openai_sends_without_include_usage(
    stream: Stream, cuts: list[int]
) -> None:
    meter = StreamMeter(stream.api, hide_usage=True)
    assert run_meter(meter, split(stream.upstream, cuts)) == stream.client
    assert meter.usage == stream.usage
    assert meter.done == stream.done


@settings(max_examples=25, deadline=None)
@given(stream=chat_streams(), hide=st.booleans())
def test_every_byte_boundary(stream: Stream, hide: bool) -> None:
    expected = stream.client if hide else stream.upstream
    data = stream.upstream
    for k in range(len(data) + 1):
        meter = StreamMeter(stream.api, hide_usage=hide)
        assert run_meter(meter, [data[:k], data[k:]]) == expected, k
        assert meter.usage == stream.usage and meter.done == stream.done
    meter = StreamMeter(stream.api, hide_usage=hide)
    assert run_meter(meter, [data[i : i + 1] for i in range(len(data))]) == expected


# --- arbitrary bytes --------------------------------------------------------------------------

sse_soup = st.lists(
    st.sampled_from(
        [
            b"data: ",
            b"data:",
            b"event: ",
            b"id: 1",
            b": c",
            b"\n",
            b"\r",
            b"\r\n",
            b"\n\n",
            b"[DONE]",
            b'{"choices":[]',
            b'{"choices":[{}]',
            b',"usage":null',
            b'"usage":null,',
            b'"usage":',
            b'{"prompt_tokens":3}',
            b"}",
            b'"type":"response.completed"',
            b"response.completed",
            b'{"type":"',
            b'"response":{',
            b"null",
            b" ",
            b",",
            b"\xff",
            b"\x00",
        ]
    ),
    max_size=40,
).map(b"".join)


def _sse_events(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete events and the unterminated tail, delimited the way the meter documents it:
    the first line terminator fixes the style (\\n, \\r\\n or \\r) for the whole stream."""
    lf, cr = data.find(b"\n"), data.find(b"\r")
    if cr < 0 and lf < 0:
        return [], data
    if cr < 0 or (0 <= lf < cr):
        sep = b"\n\n"
    elif cr + 1 == len(data):
        return [], data  # a lone trailing \r: maybe the start of \r\n, undecided
    else:
        sep = b"\r\n\r\n" if data[cr + 1 : cr + 2] == b"\n" else b"\r\r"
    events, pos = [], 0
    while (cut := data.find(sep, pos)) >= 0:
        events.append(data[pos : cut + len(sep)])
        pos = cut + len(sep)
    return events, data[pos:]


def _usage_only(event: bytes) -> bool:
    lines = [
        line[6:] if line[5:6] == b" " else line[5:]
        for line in event.splitlines()
        if line.startswith(b"data:")
    ]
    try:
        obj = json_codec.loads(b"\n".join(lines))
    except BAD_JSON:
        return False
    return isinstance(obj, dict) and obj.get("choices") == []


def _allowed(event: bytes) -> set[bytes]:
    found = {
        event,
        event.replace(b',"usage":null', b"", 1),
        event.replace(b'"usage":null,', b"", 1),
    }
    if _usage_only(event):
        found.add(b"")
    return found


@settings(max_examples=200, deadline=None)
@given(
    data=sse_soup | st.binary(max_size=200),
    api=st.sampled_from([*apis.METERED, apis.OTHER]),
    cuts=cut_lists,
    hide=st.booleans(),
)
def test_arbitrary_bytes_never_crash_and_only_hiding_changes_them(
    data: bytes, api: ApiSpec, cuts: list[int], hide: bool
) -> None:
    whole = run_meter(StreamMeter(api, hide_usage=hide), [data])
    meter = StreamMeter(api, hide_usage=hide)
    assert run_meter(meter, split(data, cuts)) == whole  # the split never matters
    if not hide or api not in (apis.CHAT, apis.COMPLETIONS):
        assert whole == data
        return
    # Align the output with the input's events: each event came out unchanged, without one
    # "usage":null key, or (a usage-only chunk) not at all; the tail comes out unchanged.
    events, tail = _sse_events(data)
    reachable = {0}
    for event in events:
        reachable = {
            j + len(c) for j in reachable for c in _allowed(event) if whole.startswith(c, j)
        }
        assert reachable, (data, whole)
    assert any(whole[j:] == tail for j in reachable), (data, whole)


# --- the relay ---------------------------------------------------------------------------------


@dataclass
class _Client:
    body: bytearray = field(default_factory=bytearray)
    eof: bool = False

    async def write(self, data: bytes) -> None:
        assert not self.eof
        self.body += data

    async def write_eof(self, data: bytes = b"") -> None:
        assert not self.eof
        self.body += data
        self.eof = True


def sse_parse(data: bytes) -> list[str]:
    """The data of each dispatched event, per the HTML SSE parsing rules (what the SDKs do).
    An unterminated event at EOF is discarded, as the spec says."""
    events: list[str] = []
    buf: list[str] = []
    text = data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    for line in text.split("\n")[:-1]:
        if not line:
            if buf:
                events.append("\n".join(buf))
            buf = []
        elif line.startswith("data:"):
            buf.append(line[6:] if line[5:6] == " " else line[5:])
    return events


def relay(stream: Stream, pieces: list[bytes], error: BaseException | None, hide: bool) -> Any:
    async def go() -> tuple[_Client, Any, StreamMeter, SseRecorder]:
        client = _Client()
        meter = StreamMeter(stream.api, hide_usage=hide)
        recorder = SseRecorder(meter, max_bytes=1 << 20)
        upstream = FakeResponse(pieces=pieces, error=None if error is None else read_error(error))
        result = await relay_sse(upstream, cast(Any, client), meter)
        return client, result, meter, recorder

    return asyncio.run(go())


@settings(max_examples=200, deadline=None)
@given(
    stream=chat_streams() | responses_streams(),
    cuts=cut_lists,
    hide=st.booleans(),
    keep=st.floats(0, 1),
    failure=st.sampled_from([None, "payload", "timeout"]),
)
def test_relay_passes_bytes_and_a_cut_stream_ends_with_a_parseable_error_event(
    stream: Stream, cuts: list[int], hide: bool, keep: float, failure: str | None
) -> None:
    # The upstream delivers a prefix (or all) of the stream, then ends or fails.
    received = stream.upstream[: round(len(stream.upstream) * keep)] if failure else stream.upstream
    error: BaseException | None = {
        None: None,
        "payload": aiohttp.ClientPayloadError("cut"),
        "timeout": TimeoutError(),
    }[failure]
    client, result, meter, recorder = relay(stream, split(received, cuts), error, hide)
    assert client.eof
    body = bytes(client.body)
    expected = run_meter(StreamMeter(stream.api, hide_usage=hide), [received])
    if meter.done:
        # The terminal event arrived: complete, even if the transport failed after it.
        assert result.end is StreamEnd.COMPLETE
        assert body == expected  # the exact bytes, hidden usage aside
        return
    assert result.end is StreamEnd.UPSTREAM_CUT
    # Everything up to the last complete event is passed on unchanged...
    events, _tail = _sse_events(received)
    complete = run_meter(StreamMeter(stream.api, hide_usage=hide), [b"".join(events)])
    assert body.startswith(complete)
    # ...and the end is an error event of its own, which the SDKs raise APIError on.
    parsed = sse_parse(body)
    assert parsed, body
    last = json_codec.loads(parsed[-1])
    if stream.api is apis.RESPONSES:
        # A Responses stream ends with the spec's ResponseErrorEvent, numbered after the rest.
        assert b"event: error\ndata: " in body[-400:]
        assert set(last) == {"type", "sequence_number", "code", "message", "param"}
        assert last["type"] == "error" and last["sequence_number"] == meter.events
    else:
        assert set(last) == {"error"}
        assert set(last["error"]) == {"message", "type", "param", "code"}
    for data in parsed[:-1]:
        if data != "[DONE]":
            json_codec.loads(data)  # no half-received event glued to the error
    assert recorder.result() is None  # a cut stream is never cached


@settings(max_examples=100, deadline=None)
@given(stream=chat_streams() | responses_streams(), cuts=cut_lists, hide=st.booleans())
def test_a_recorded_stream_replays_the_bytes_a_live_request_gets(
    stream: Stream, cuts: list[int], hide: bool
) -> None:
    """A cache hit must be byte-identical to the miss (README: Response cache, Serving)."""
    client, _, meter, recorder = relay(stream, split(stream.upstream, cuts), None, hide)
    events = recorder.result()
    if not meter.done or (stream.api is apis.RESPONSES and stream.usage is None):
        return
    if stream.api is apis.RESPONSES and b"response.incomplete" in stream.upstream:
        assert events is None  # only response.completed is cacheable
        return
    assert events is not None
    entry = CachedResponse(
        api=stream.api, status=200, headers=[], created_at=0, events=events, usage=recorder.usage
    )
    include_usage = not hide
    assert b"".join(replay_events(entry, include_usage=include_usage)) == bytes(client.body)
