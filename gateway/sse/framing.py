"""SSE framing shared by everything that reads event streams: separators, fields, types.

Why byte searches are safe on JSON: inside a JSON string every ``"`` is escaped as ``\\"``, so a
sequence such as ``"usage":`` (quote, name, quote, colon) can never lie inside string content.
In valid JSON it only ever appears as an object key.
"""

from __future__ import annotations

from typing import Any

from gateway import json_codec
from gateway.apis import BAD_JSON

Buffer = bytes | bytearray

DONE_PREFIXES = (b"data: [DONE]", b"data:[DONE]")
FIELD_PREFIXES = (b"data:", b"event:")
TYPE_PREFIX = b'data: {"type":"'
USAGE_KEY = b'"usage":'
ERROR_KEY = b'"error":'
_NULL = b"null"
_LF, _SPACE, _BRACE = (ord(c) for c in "\n {")


def detect_separator(data: Buffer, start: int) -> tuple[bytes, bytes] | int:
    """The stream's ``(event separator, line ending)``, fixed by its first line terminator.

    A server uses one style throughout, so an event boundary is then a single ``bytes.find``.
    When undecidable yet (no terminator, or a ``\\r`` as the last byte, which may be the first
    half of ``\\r\\n``), returns where the next search should start instead.
    """
    lf = data.find(b"\n", start)
    cr = data.find(b"\r", start, lf if lf >= 0 else len(data))
    if cr < 0:
        if lf < 0:
            return len(data)
        return b"\n\n", b"\n"
    if cr + 1 == len(data):
        return cr
    if data[cr + 1] == _LF:
        return b"\r\n\r\n", b"\r\n"
    return b"\r\r", b"\r"


def first_field(data: Buffer, pos: int, end: int, eol: bytes) -> int:
    """Where the event ``data[pos:end]``'s first ``data:``/``event:`` line starts, or -1.

    Usually ``pos`` itself; comment, ``id:`` and ``retry:`` lines may come first, and a
    keep-alive event has no field at all.
    """
    if data.startswith(FIELD_PREFIXES, pos):
        return pos
    p = pos
    while p < end:
        if data.startswith(FIELD_PREFIXES, p):
            return p
        nl = data.find(eol, p, end)
        if nl < 0:
            break
        p = nl + len(eol)
    return -1


def event_type(data: Buffer, head: int, end: int, eol: bytes) -> bytes | None:
    """The event's type from its ``event:`` line, else from a leading ``"type"`` key."""
    if data.startswith(b"event:", head):
        nl = data.find(eol, head, end)
        return bytes(data[head + 6 : nl]).strip()
    if data.startswith(TYPE_PREFIX, head):
        start = head + len(TYPE_PREFIX)
        quote = data.find(b'"', start, end)
        if quote >= 0:
            return bytes(data[start:quote])
    return None


def is_object_at(data: Buffer, value: int, end: int) -> bool:
    """Is a JSON object (not ``null``) the value starting at ``value``? One space tolerated."""
    if value >= end:
        return False
    c = data[value]
    if c == _SPACE and value + 1 < end:
        c = data[value + 1]
    return c == _BRACE


def has_object_key(data: Buffer, key: bytes, pos: int, end: int) -> bool:
    """Does ``data[pos:end]`` hold ``key`` with an object value (e.g. ``"usage":{``)?"""
    i = data.find(key, pos, end)
    while i >= 0:
        if is_object_at(data, i + len(key), end):
            return True
        i = data.find(key, i + len(key), end)
    return False


def decode_data(data: Buffer, pos: int, end: int) -> dict[str, Any] | None:
    """Decode the JSON of one event's ``data:`` lines (joined by ``\\n``, as SSE specifies)."""
    payload: list[bytes] = []
    for line in bytes(data[pos:end]).splitlines():
        if line.startswith(b"data:"):
            payload.append(line[6:] if line[5:6] == b" " else line[5:])
    if not payload:
        return None
    try:
        obj = json_codec.loads(b"\n".join(payload))
    except BAD_JSON:
        return None
    return obj if isinstance(obj, dict) else None


def has_top_level_error(data: Buffer, pos: int, end: int) -> bool:
    """Does the event carry a truthy top-level ``error`` (what makes the SDKs raise)?

    Cheap first: the nested ``"error":null`` of Responses objects is skipped without decoding.
    """
    i = data.find(ERROR_KEY, pos, end)
    while i >= 0:
        value = i + len(ERROR_KEY)
        if not data.startswith(_NULL, value, end) and not data.startswith(b" null", value, end):
            obj = decode_data(data, pos, end)
            return obj is not None and bool(obj.get("error"))
        i = data.find(ERROR_KEY, value, end)
    return False
