"""A cached response and its storage format. Pure, no I/O.

Storage format (``FORMAT_VERSION`` 1)::

    b"GWC" + version byte + zlib( u32 big-endian meta length + meta JSON + content )

``meta`` holds the status, content headers, API, creation time, usage, the kind (``json`` or
``sse``) and the length of each content part (the body, or each run of SSE events as the relay
forwarded it). The content itself
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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway import json_codec
from gateway.apis import BAD_JSON, ApiSpec, Usage, by_name

__all__ = [
    "CONTENT_HEADERS",
    "FORMAT_VERSION",
    "CachedResponse",
    "content_headers",
    "decode",
    "encode",
    "json_storable",
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

    api: ApiSpec
    status: int
    #: Filtered through ``content_headers`` on construction (stored as a tuple).
    headers: Sequence[tuple[str, str]]
    #: Unix seconds when the upstream produced it (for the ``age`` header).
    created_at: int
    body: bytes | None = None
    #: Runs of complete events (separators included) exactly as the upstream sent them; a
    #: trailing partial event left at EOF is the last part (stored as a tuple).
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
        "api": entry.api.name,
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
    name = meta.get("api")
    _check(isinstance(name, str))
    try:
        api = by_name(name)
    except KeyError:
        raise _Corrupt from None
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


def json_storable(api: ApiSpec, status: int, body: bytes, *, max_bytes: int) -> str | None:
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
    if not api.json_complete(obj):
        return "incomplete"
    return None
