"""Relay an upstream SSE stream event by event while metering its token usage.

Two constraints shape this module:

* It sits on the hot path of every streamed token, so an ordinary event costs a couple of
  ``bytes.find``/``startswith`` calls and no JSON parsing; only the one event that carries the
  usage (or the terminal event) is decoded.
* The client must receive exactly the upstream's bytes, framing included, except that when the
  gateway turned on ``stream_options.include_usage`` behind the client's back it removes what
  that flag added (the usage-only chunk and the ``"usage":null`` keys), so the client sees what
  OpenAI would have sent it without the flag.

Why byte searches are safe on JSON: inside a JSON string every ``"`` is escaped as ``\\"``, so a
sequence such as ``"usage":`` (quote, name, quote, colon) can never lie inside string content.
In valid JSON it only ever appears as an object key.
"""

from __future__ import annotations

from typing import Any

from gateway import json_codec
from gateway.endpoints import BAD_JSON, Api, Usage, usage_from_object

__all__ = ["StreamMeter"]

_DONE_PREFIXES = (b"data: [DONE]", b"data:[DONE]")
_USAGE_KEY = b'"usage":'
_USAGE_KEY_LEN = len(_USAGE_KEY)
_NULL = b"null"
_TYPE_PREFIX = b'data: {"type":"'
_RESPONSE_TERMINAL = frozenset({b"response.completed", b"response.incomplete", b"response.failed"})
_IMAGE_TERMINAL_SUFFIX = b".completed"
#: Terminal event types of passthrough streams (resumed Responses streams are in
#: ``_RESPONSE_TERMINAL``): image edits/generations, transcriptions, speech, Assistants.
_OTHER_TERMINAL = frozenset(
    {
        b"image_generation.completed",
        b"image_edit.completed",
        b"transcript.text.done",
        b"speech.audio.done",
        b"done",
    }
)
_FIELD_PREFIXES = (b"data:", b"event:")

_LF, _COMMA, _SPACE, _BRACE = (ord(c) for c in "\n, {")

Buffer = bytes | bytearray


class StreamMeter:
    """Feed upstream bytes in, forward what comes out; read ``usage``/``done`` at the end.

    Only complete events (ending in a blank line) are released; a trailing partial event is
    held until the rest arrives, because hiding and metering need the whole event. ``flush``
    releases the partial event unchanged at EOF.

    The line-ending style (``\\n``, ``\\r\\n`` or ``\\r``) is fixed by the first line terminator
    of the stream: a server uses one style throughout, and this lets an event boundary be a
    single ``bytes.find`` of one separator.
    """

    __slots__ = (
        "_buf",
        "_eol",
        "_scan",
        "_sep",
        "api",
        "done",
        "events",
        "hide_usage",
        "usage",
    )

    def __init__(self, api: Api, *, hide_usage: bool) -> None:
        self.api = api
        #: Only meaningful for Chat/Completions, the APIs where usage is opt-in.
        self.hide_usage = hide_usage and api in (Api.CHAT, Api.COMPLETIONS)
        #: The last usage seen; ``None`` until a usage-bearing event arrives (or never, when the
        #: stream was cut, which the caller must then estimate).
        self.usage: Usage | None = None
        #: A terminal event arrived, i.e. the stream was not cut off.
        self.done = False
        #: Complete events seen, comments and stray blank lines excluded.
        self.events = 0
        self._buf = bytearray()
        #: Where in ``_buf`` the next search for a separator (or, before the line-ending
        #: style is known, for a line terminator) starts: bytes before it were already
        #: searched, so feeding a large event in small pieces stays linear.
        self._scan = 0
        self._sep: bytes | None = None
        self._eol = b"\n"

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to forward now: every event completed by ``chunk``, possibly filtered."""
        if not chunk:
            return b""
        buf = self._buf
        data: Buffer
        if buf:
            buf += chunk
            data = buf
        else:
            data = chunk  # common case: nothing held, work on the chunk without copying
        start = self._scan
        sep = self._sep
        if sep is None:
            start = self._detect(data, start)
            sep = self._sep
            if sep is None:
                self._scan = start
                if data is not buf:
                    buf += data
                return b""
        seplen = len(sep)

        if self.api is Api.CHAT or self.api is Api.COMPLETIONS:
            last = data.rfind(sep, max(0, start - seplen + 1))
            if last < 0:
                self._scan = max(start, len(data) - seplen + 1)
                if data is not buf:
                    buf += data
                return b""
            end = last + seplen
            saved = (self.events, self.done, self.usage)
            fast = self._fast_chat(bytes(data[:end]))
            if fast is None:
                self.events, self.done, self.usage = saved  # the slow path redoes it all
            else:
                rest = bytes(data[end:]) if end < len(data) else b""
                buf.clear()
                buf += rest
                self._scan = max(0, len(rest) - seplen + 1)
                return fast

        pos = 0  # start of the current event
        emit_from = 0  # start of the bytes not yet copied into ``parts``
        parts: list[Buffer] | None = None  # only built when an event is rewritten or dropped
        while True:
            cut = data.find(sep, start)
            if cut < 0:
                break
            end = cut + seplen
            replacement = self._process(data, pos, end)
            if replacement is not None:
                if parts is None:
                    parts = []
                if emit_from < pos:
                    parts.append(data[emit_from:pos])
                if replacement:
                    parts.append(replacement)
                emit_from = end
            pos = start = end

        size = len(data)
        self._scan = max(start, size - seplen + 1) - pos
        out: bytes
        if parts is not None:
            if emit_from < pos:
                parts.append(data[emit_from:pos])
            out = b"".join(parts)
        elif pos == size and data is chunk:
            out = chunk
        else:
            out = bytes(data[:pos])
        if data is buf:
            del buf[:pos]
        elif pos < size:
            buf += memoryview(chunk)[pos:]
        return out

    def _fast_chat(self, region: bytes) -> bytes | None:
        """A run of complete Chat/Completions events at C speed, or None for the slow path.

        The common stream is ``data:`` events only, the gateway's ``,"usage":null`` key at the
        end of each, and one usage chunk near the end: the keys go in one ``bytes.replace``
        over the run, the usage chunk is handled alone by ``_process``. Anything else
        (comments, ``id:`` lines, odd key order) takes the event-by-event path.
        """
        sep = self._sep
        assert sep is not None
        usage_at = region.find(b'"usage":{')
        if usage_at < 0:
            usage_at = region.find(b'"usage": {')
        if usage_at < 0:
            return self._fast_plain(region, sep)
        start = region.rfind(sep, 0, usage_at)
        start = 0 if start < 0 else start + len(sep)
        end = region.find(sep, usage_at) + len(sep)
        head = self._fast_plain(region[:start], sep)
        if head is None:
            return None
        replaced = self._process(region, start, end)
        middle = region[start:end] if replaced is None else replaced
        tail = self._fast_chat(region[end:])
        if tail is None:
            return None  # the caller restores the state and takes the slow path
        return head + middle + tail

    def _fast_plain(self, region: bytes, sep: bytes) -> bytes | None:
        if not region:
            return b""
        count = region.count(sep)
        if (
            not region.startswith(b"data:")
            or region.count(sep + b"data:") != count - 1
            or sep + self._eol in region  # a stray blank line: let the slow path frame it
        ):
            return None
        if self.hide_usage:
            region = region.replace(b',"usage":null}' + sep, b"}" + sep)
            if b'"usage":null' in region:
                return None
        self.events += count
        if region.startswith(_DONE_PREFIXES) or any(sep + d in region for d in _DONE_PREFIXES):
            self.done = True
        return region

    def flush(self) -> bytes:
        """The held partial event, unchanged: at EOF there is nothing left to wait for."""
        out = bytes(self._buf)
        self._buf.clear()
        self._scan = 0
        return out

    # -- framing -------------------------------------------------------------------------------

    def _detect(self, data: Buffer, start: int) -> int:
        """Fix the line-ending style from the first terminator; return where to search next.

        Leaves ``_sep`` as ``None`` when undecidable yet (no terminator, or a ``\\r`` as the
        last byte, which may be the first half of ``\\r\\n``).
        """
        lf = data.find(b"\n", start)
        cr = data.find(b"\r", start, lf if lf >= 0 else len(data))
        if cr < 0:
            if lf < 0:
                return len(data)
            self._sep, self._eol = b"\n\n", b"\n"
            return lf
        if cr + 1 == len(data):
            return cr
        if data[cr + 1] == _LF:
            self._sep, self._eol = b"\r\n\r\n", b"\r\n"
        else:
            self._sep, self._eol = b"\r\r", b"\r"
        return cr

    # -- per event -----------------------------------------------------------------------------

    def _process(self, data: Buffer, pos: int, end: int) -> bytes | None:
        """Meter one complete event ``data[pos:end]``.

        Returns ``None`` to forward it unchanged (the common case), ``b""`` to drop it, or the
        bytes to forward instead.
        """
        head = pos  # the first ``data:``/``event:`` line; checks look there
        if not data.startswith(_FIELD_PREFIXES, pos):
            # Rare: leading comment/``id:``/``retry:`` lines, or no data at all (keep-alive).
            eol = self._eol
            head = -1
            p = pos
            while p < end:
                if data.startswith(_FIELD_PREFIXES, p):
                    head = p
                    break
                nl = data.find(eol, p, end)
                if nl < 0:
                    break
                p = nl + len(eol)
            if head < 0:
                return None
        self.events += 1
        api = self.api
        if api is Api.CHAT or api is Api.COMPLETIONS:
            return self._process_chat(data, pos, head, end)
        if api is Api.RESPONSES or api is Api.IMAGES:
            self._process_typed(data, pos, head, end)
            return None
        self._process_other(data, pos, head, end)
        return None

    def _process_chat(self, data: Buffer, pos: int, head: int, end: int) -> bytes | None:
        if data.startswith(_DONE_PREFIXES, head):
            self.done = True
            return None
        i = data.find(_USAGE_KEY, head, end)
        if i < 0:
            return None
        value = i + _USAGE_KEY_LEN
        if data.startswith(_NULL, value, end):
            if not self.hide_usage:
                return None
            # The gateway's include_usage added ``"usage":null`` to every chunk. OpenAI writes
            # it compactly after ``choices`` as ``,"usage":null``; removing exactly that keeps
            # the object valid. The key cannot be string content (see the module docstring).
            if data[i - 1] == _COMMA:
                return bytes(data[pos : i - 1]) + bytes(data[value + 4 : end])
            if data[value + 4] == _COMMA:  # first key: ``{"usage":null,...``
                return bytes(data[pos:i]) + bytes(data[value + 5 : end])
            return None
        if not _is_object_at(data, value, end):
            return None
        obj = _parse_data(data, pos, end)
        if obj is None:
            return None  # undecodable: forward as is rather than guess
        usage = usage_from_object(self.api, obj.get("usage"))
        if usage is not None:
            self.usage = usage
        # The usage-only chunk is recognisable by its empty ``choices``. Servers that attach
        # usage to a chunk with choices (continuous usage stats) keep their chunk: dropping it
        # would lose content.
        if self.hide_usage and obj.get("choices") == []:
            return b""
        return None

    def _event_type(self, data: Buffer, head: int, end: int) -> bytes | None:
        """The event's type from its ``event:`` line, else from a leading ``"type"`` key."""
        if data.startswith(b"event:", head):
            eol = data.find(self._eol, head, end)
            return bytes(data[head + 6 : eol]).strip()
        if data.startswith(_TYPE_PREFIX, head):
            start = head + len(_TYPE_PREFIX)
            quote = data.find(b'"', start, end)
            if quote >= 0:
                return bytes(data[start:quote])
        return None

    def _process_typed(self, data: Buffer, pos: int, head: int, end: int) -> None:
        """Responses and Images streams: only the terminal event carries usage."""
        kind = self._event_type(data, head, end)
        if kind is None:
            # Neither an ``event:`` line nor a leading type: fall back to decoding any event
            # that carries a usage object, and read its type from the JSON.
            if not _has_usage_object(data, pos, end):
                return
            obj = _parse_data(data, pos, end)
            if obj is None:
                return
            raw = obj.get("type")
            if not isinstance(raw, str):
                return
            kind = raw.encode()
            if not self._is_terminal(kind):
                return
            self.done = True
            self._take_usage(obj)
            return
        if not self._is_terminal(kind):
            return
        self.done = True
        if _has_usage_object(data, pos, end):
            obj = _parse_data(data, pos, end)
            if obj is not None:
                self._take_usage(obj)

    def _is_terminal(self, kind: bytes) -> bool:
        if self.api is Api.RESPONSES:
            return kind in _RESPONSE_TERMINAL
        return kind.endswith(_IMAGE_TERMINAL_SUFFIX)

    def _take_usage(self, obj: dict[str, Any]) -> None:
        # Responses nest the usage in the ``response`` object; image events carry it on top.
        holder: object = obj.get("response") if self.api is Api.RESPONSES else obj
        if isinstance(holder, dict):
            usage = usage_from_object(self.api, holder.get("usage"))
            if usage is not None:
                self.usage = usage

    def _process_other(self, data: Buffer, pos: int, head: int, end: int) -> None:
        """Passthrough streams: best-effort metering of whatever shape arrives.

        Covers resumed Responses streams (GET ``/responses/{id}?stream=true``), image edits,
        transcriptions and Assistants runs. The last usage seen wins, which for Assistants is
        the run's total rather than a step's.
        """
        if data.startswith(_DONE_PREFIXES, head):
            self.done = True
            return
        kind = self._event_type(data, head, end)
        # ``event: done`` ends Assistants runs (its data is ``[DONE]``, after the event line).
        if kind is not None and (kind in _OTHER_TERMINAL or kind in _RESPONSE_TERMINAL):
            self.done = True
        if not _has_usage_object(data, pos, end):
            return
        obj = _parse_data(data, pos, end)
        if obj is None:
            return
        response = obj.get("response")
        holder = response if isinstance(response, dict) and "usage" in response else obj
        usage = usage_from_object(Api.OTHER, holder.get("usage"))
        if usage is not None:
            self.usage = usage


def _is_object_at(data: Buffer, value: int, end: int) -> bool:
    """Is a JSON object (not ``null``) the value starting at ``value``? One space tolerated."""
    if value >= end:
        return False
    c = data[value]
    if c == _SPACE and value + 1 < end:
        c = data[value + 1]
    return c == _BRACE


def _has_usage_object(data: Buffer, pos: int, end: int) -> bool:
    i = data.find(_USAGE_KEY, pos, end)
    while i >= 0:
        if _is_object_at(data, i + _USAGE_KEY_LEN, end):
            return True
        i = data.find(_USAGE_KEY, i + _USAGE_KEY_LEN, end)
    return False


def _parse_data(data: Buffer, pos: int, end: int) -> dict[str, Any] | None:
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
