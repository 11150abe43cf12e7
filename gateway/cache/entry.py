"""A cached response, its storage format, and recording/replaying SSE streams. Pure, no I/O.

Storage format (``FORMAT_VERSION`` 1)::

    b"GWC" + version byte + zlib( u32 big-endian meta length + meta JSON + content )

``meta`` holds the status, content headers, API, creation time, usage, the kind (``json`` or
``sse``) and the length of each content part (the body, or each SSE event). The content itself
is stored raw, not inside the JSON, so bytes need no escaping or base64. ``decode`` validates
everything and returns ``None`` for anything it does not fully understand.

Headers kept (``CONTENT_HEADERS``): only those that describe the content itself.

- ``content-type``: JSON vs ``text/event-stream; charset=utf-8``.
- ``openai-version``: the REST API version the body is written in.
- ``openai-model``: the model that produced the body, sent by some OpenAI-compatible servers.

Everything else describes the original exchange, not the content, and is left out:
``x-request-id`` (a hit gets the gateway's own id), ``openai-processing-ms`` (the original
latency), ``date``/``age`` (recomputed at replay), ``x-ratelimit-*`` (the upstream key's state
at the time), ``content-length``/``content-encoding``/``transfer-encoding`` (framing: bodies are
stored decoded), ``openai-organization``, cookies and CDN headers.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway import json_codec
from gateway.endpoints import BAD_JSON, Api, Usage
from gateway.sse import StreamMeter

__all__ = [
    "CONTENT_HEADERS",
    "FORMAT_VERSION",
    "CachedResponse",
    "SseRecorder",
    "content_headers",
    "decode",
    "encode",
    "json_storable",
    "replay_events",
]

FORMAT_VERSION = 1
_MAGIC = b"GWC"
_HEADER = _MAGIC + bytes([FORMAT_VERSION])
#: Fast: entries are compressed on the event loop, and SSE chunks repeat the same head so much
#: that level 1 already shrinks them several times.
_ZLIB_LEVEL = 1
#: Bound on what ``decode`` inflates, whatever a corrupt or hostile value claims.
DEFAULT_MAX_DECODED_BYTES = 256 * 1024 * 1024
_U32 = struct.Struct(">I")

CONTENT_HEADERS: frozenset[str] = frozenset({"content-type", "openai-version", "openai-model"})

_USAGE_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cached_prompt_tokens",
    "total_tokens",
)


def content_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
) -> tuple[tuple[str, str], ...]:
    """The ``CONTENT_HEADERS`` among ``headers``, names lower-cased, order kept."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((k.lower(), v) for k, v in items if k.lower() in CONTENT_HEADERS)


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """One stored response: a JSON ``body`` or a list of SSE ``events``, never both."""

    api: Api
    status: int
    #: Filtered through ``content_headers`` on construction (stored as a tuple).
    headers: Sequence[tuple[str, str]]
    #: Unix seconds when the upstream produced it (for the ``age`` header).
    created_at: int
    body: bytes | None = None
    #: Each a complete event including its separator, exactly as the upstream sent it
    #: (stored as a tuple).
    events: Sequence[bytes] | None = None
    #: What the original request cost upstream: a hit saves this much.
    usage: Usage | None = None

    def __post_init__(self) -> None:
        if (self.body is None) == (self.events is None):
            raise ValueError("a CachedResponse has either a body or events")
        object.__setattr__(self, "headers", content_headers(self.headers))
        if self.events is not None:
            object.__setattr__(self, "events", tuple(self.events))

    @property
    def is_stream(self) -> bool:
        return self.events is not None

    @property
    def content_bytes(self) -> int:
        """Size of the content, to compare with ``max_entry_bytes``."""
        if self.body is not None:
            return len(self.body)
        assert self.events is not None
        return sum(len(e) for e in self.events)

    def age(self, now: float) -> int:
        """Seconds since the upstream produced it, for the ``age`` header (never negative)."""
        return max(0, int(now) - self.created_at)


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def encode(entry: CachedResponse) -> bytes:
    parts: Sequence[bytes] = (entry.body,) if entry.body is not None else entry.events or ()
    usage = entry.usage
    meta = {
        "api": entry.api.value,
        "status": entry.status,
        "headers": [list(h) for h in entry.headers],
        "created_at": entry.created_at,
        "usage": None if usage is None else [getattr(usage, f) for f in _USAGE_FIELDS],
        "kind": "json" if entry.body is not None else "sse",
        "sizes": [len(p) for p in parts],
    }
    meta_bytes = json_codec.dumps(meta)
    payload = b"".join((_U32.pack(len(meta_bytes)), meta_bytes, *parts))
    return _HEADER + zlib.compress(payload, _ZLIB_LEVEL)


class _Corrupt(Exception):
    pass


_DECODE_ERRORS: tuple[type[Exception], ...] = (
    _Corrupt,
    zlib.error,
    struct.error,
    ValueError,
    TypeError,
    *BAD_JSON,
)


def _check(condition: bool) -> None:
    if not condition:
        raise _Corrupt


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def decode(
    data: bytes, *, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
) -> CachedResponse | None:
    """The entry ``encode`` wrote, or ``None`` for anything corrupt or of another version."""
    if not isinstance(data, bytes | bytearray | memoryview) or not data.startswith(_HEADER):
        return None
    try:
        inflater = zlib.decompressobj()
        payload = inflater.decompress(memoryview(data)[len(_HEADER) :], max_decoded_bytes + 1)
        _check(inflater.eof and not inflater.unused_data and len(payload) <= max_decoded_bytes)
        _check(len(payload) >= _U32.size)
        (meta_len,) = _U32.unpack_from(payload)
        meta_end = _U32.size + meta_len
        _check(meta_end <= len(payload))
        meta = json_codec.loads(payload[_U32.size : meta_end])
        return _from_meta(meta, memoryview(payload)[meta_end:])
    except _DECODE_ERRORS:
        return None


def _from_meta(meta: Any, content: memoryview) -> CachedResponse:
    _check(isinstance(meta, dict))
    api = Api(meta.get("api"))  # ValueError (in BAD_JSON) on anything unknown
    status, created_at = meta.get("status"), meta.get("created_at")
    _check(type(status) is int and 100 <= status <= 599 and _is_count(created_at))
    headers = meta.get("headers")
    _check(isinstance(headers, list))
    pairs: list[tuple[str, str]] = []
    for item in headers:
        _check(isinstance(item, list) and len(item) == 2)
        _check(isinstance(item[0], str) and isinstance(item[1], str))
        pairs.append((item[0], item[1]))
    raw_usage = meta.get("usage")
    usage = None
    if raw_usage is not None:
        _check(isinstance(raw_usage, list) and len(raw_usage) == len(_USAGE_FIELDS))
        _check(all(_is_count(n) for n in raw_usage))
        usage = Usage(**dict(zip(_USAGE_FIELDS, raw_usage, strict=True)))
    sizes = meta.get("sizes")
    _check(isinstance(sizes, list) and all(_is_count(n) for n in sizes))
    _check(sum(sizes) == len(content))
    parts: list[bytes] = []
    offset = 0
    for size in sizes:
        parts.append(bytes(content[offset : offset + size]))
        offset += size
    kind = meta.get("kind")
    if kind == "json":
        _check(len(parts) == 1)
        return CachedResponse(
            api=api, status=status, headers=tuple(pairs), created_at=created_at,
            body=parts[0], usage=usage,
        )  # fmt: skip
    _check(kind == "sse")
    return CachedResponse(
        api=api, status=status, headers=tuple(pairs), created_at=created_at,
        events=tuple(parts), usage=usage,
    )  # fmt: skip


def json_storable(api: Api, status: int, body: bytes, *, max_bytes: int) -> str | None:
    """Why a complete JSON response must not be stored, or ``None`` when it may be.

    Reasons: ``"status"`` (not 2xx), ``"too_large"``, ``"invalid"`` (not a JSON object, or an
    error body), ``"incomplete"`` (a Responses object whose status is not ``completed``, e.g.
    cut by ``max_output_tokens``, the same rule as for streams).
    """
    if not 200 <= status < 300:
        return "status"
    if len(body) > max_bytes:
        return "too_large"
    try:
        obj = json_codec.loads(body)
    except BAD_JSON:
        return "invalid"
    if not isinstance(obj, dict) or obj.get("error"):
        return "invalid"
    if api is Api.RESPONSES and obj.get("status") != "completed":
        return "incomplete"
    return None


# --------------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------------

_ERROR_KEY = b'"error":'
_NULL = b"null"
_TYPE_PREFIX = b'{"type":"'


def _fields(event: bytes) -> tuple[bytes | None, bytes]:
    """The ``event:`` name (if any) and the joined ``data:`` payload of one event."""
    name: bytes | None = None
    data: list[bytes] = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            name = line[6:].strip()
    return name, b"\n".join(data)


def _has_top_level_error(event: bytes) -> bool:
    """Does the data carry a truthy top-level ``error`` (what makes the SDKs raise)?

    Cheap first: ``"error":`` can only be a key (string content escapes its quotes), and the
    nested ``"error":null`` of Responses objects is skipped without decoding.
    """
    i = event.find(_ERROR_KEY)
    while i >= 0:
        value = i + len(_ERROR_KEY)
        if not event.startswith(_NULL, value) and not event.startswith(b" null", value):
            _, data = _fields(event)
            try:
                obj = json_codec.loads(data)
            except BAD_JSON:
                return False
            return isinstance(obj, dict) and bool(obj.get("error"))
        i = event.find(_ERROR_KEY, value)
    return False


def _event_type(event: bytes) -> bytes | None:
    name, data = _fields(event)
    if name is not None:
        return name
    if data.startswith(_TYPE_PREFIX):
        end = data.find(b'"', len(_TYPE_PREFIX))
        if end >= 0:
            return data[len(_TYPE_PREFIX) : end]
    return None


def _separator(data: bytes) -> bytes:
    """The event separator of a stream, from its first line terminator (as StreamMeter does)."""
    lf = data.find(b"\n")
    cr = data.find(b"\r", 0, lf if lf >= 0 else len(data))
    if cr < 0:
        return b"\n\n"
    return b"\r\n\r\n" if data[cr + 1 : cr + 2] == b"\n" else b"\r\r"


class SseRecorder:
    """Keeps a copy of an upstream SSE stream, event by event, for the cache.

    Feed it the raw upstream bytes (before the gateway hides the usage chunk); at the end,
    ``result()`` gives the events to store, or ``None`` when the stream must not be cached:

    - ``"incomplete"``: it did not finish: no ``data: [DONE]`` (Chat, Completions), no
      ``response.completed`` (Responses: ``incomplete`` and ``failed`` do not count), no
      ``*.completed`` (Images);
    - ``"error"``: an ``error`` event, or data with a top-level ``error`` (SDKs raise on it);
    - ``"too_large"``: more than ``max_bytes`` arrived; from then on nothing is kept.

    Event boundaries come from a ``StreamMeter`` (without hiding), so they are exactly the ones
    the gateway's relay sees.
    """

    __slots__ = (
        "_completed",
        "_eof",
        "_events",
        "_failure",
        "_max_bytes",
        "_meter",
        "_sep",
        "_size",
        "api",
    )

    def __init__(self, api: Api, *, max_bytes: int) -> None:
        if api not in (Api.CHAT, Api.COMPLETIONS, Api.RESPONSES, Api.IMAGES):
            raise ValueError(f"{api} streams are not cacheable")
        self.api = api
        self._max_bytes = max_bytes
        self._meter: StreamMeter | None = StreamMeter(api, hide_usage=False)
        self._events: list[bytes] = []
        self._sep: bytes | None = None
        self._size = 0
        self._completed = False
        self._failure: str | None = None
        self._eof = False  # result() was called

    @property
    def usage(self) -> Usage | None:
        """The usage the stream reported (usage chunk, or the terminal event's)."""
        return self._meter.usage if self._meter is not None else None

    @property
    def reason(self) -> str | None:
        """Why the stream is not cacheable (so far), or ``None``."""
        if self._failure is not None:
            return self._failure
        return None if self._completed else "incomplete"

    def feed(self, chunk: bytes) -> None:
        meter = self._meter
        if meter is None or self._failure is not None or not chunk:
            return
        self._size += len(chunk)
        if self._size > self._max_bytes:
            self._fail("too_large")
            return
        complete = meter.feed(chunk)
        if complete:
            self._split(complete)
        # Chat/Completions: the meter's ``done`` is exactly "a data: [DONE] event arrived".
        if meter.done and self._failure is None and self.api in (Api.CHAT, Api.COMPLETIONS):
            self._completed = True

    def _split(self, complete: bytes) -> None:
        sep = self._sep
        if sep is None:
            sep = self._sep = _separator(complete)
        pieces = complete.split(sep)
        # ``complete`` ends with a separator, so the last piece is empty.
        for piece in pieces[:-1]:
            event = piece + sep
            self._events.append(event)
            self._inspect(event)
            if self._failure is not None:
                return

    def _inspect(self, event: bytes) -> None:
        if self.api is Api.CHAT or self.api is Api.COMPLETIONS:
            if _ERROR_KEY in event and _has_top_level_error(event):
                self._fail("error")
            return
        kind = _event_type(event)
        if kind == b"error" or (_ERROR_KEY in event and _has_top_level_error(event)):
            self._fail("error")
        elif self.api is Api.RESPONSES:
            if kind == b"response.completed":
                self._completed = True
        elif kind is not None and kind.endswith(b".completed"):
            self._completed = True

    def _fail(self, reason: str) -> None:
        self._failure = reason
        self._events = []
        self._meter = None

    def result(self) -> list[bytes] | None:
        """Call at the end of the stream: the events to store, or ``None`` (see ``reason``)."""
        if not self._eof:
            self._eof = True
            if self._meter is not None:
                # A partial event left at EOF is forwarded unchanged by the relay; keep it so a
                # replay sends the same bytes.
                rest = self._meter.flush()
                if rest:
                    self._events.append(rest)
        if self.reason is not None:
            return None
        return list(self._events)


def replay_events(entry: CachedResponse, *, include_usage: bool) -> Iterator[bytes]:
    """The bytes to send a client for a cached stream, event by event.

    Chat and Completions streams were stored with the usage chunk and the ``"usage":null`` keys
    (the gateway always asks upstream for them); a client that did not ask for
    ``include_usage`` gets them removed by the same ``StreamMeter`` the live relay uses, so a
    hit is byte-identical to what a miss sends. Other streams are replayed as stored.
    """
    if entry.events is None:
        raise ValueError("not a stream entry")
    if include_usage or entry.api not in (Api.CHAT, Api.COMPLETIONS):
        yield from entry.events
        return
    meter = StreamMeter(entry.api, hide_usage=True)
    for event in entry.events:
        out = meter.feed(event)
        if out:
            yield out
    rest = meter.flush()
    if rest:
        yield rest
