"""Relay an upstream SSE stream event by event while metering its token usage.

Two constraints shape this module:

* It sits on the hot path of every streamed token, so an ordinary event costs a couple of
  ``bytes.find``/``startswith`` calls and no JSON parsing; only the one event that carries the
  usage (or the terminal event) is decoded.
* The client must receive exactly the upstream's bytes, framing included, except that when the
  gateway turned on ``stream_options.include_usage`` behind the client's back it removes what
  that flag added (the usage-only chunk and the ``"usage":null`` keys), so the client sees what
  OpenAI would have sent it without the flag.

How a stream is read follows its API's ``StreamFormat``; what ends it and where its usage is
come from the API spec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.apis import ApiSpec, StreamFormat, Usage
from gateway.sse.framing import (
    DONE_PREFIXES,
    ERROR_KEY,
    USAGE_KEY,
    Buffer,
    decode_data,
    detect_separator,
    event_type,
    first_field,
    has_object_key,
    has_top_level_error,
    is_object_at,
)

__all__ = ["StreamMeter"]

_USAGE_KEY_LEN = len(USAGE_KEY)
_NULL = b"null"
_COMMA = ord(",")


class StreamMeter:
    """Feed upstream bytes in, forward what comes out; read ``usage``/``done`` at the end.

    Only complete events (ending in a blank line) are released; a trailing partial event is
    held until the rest arrives, because hiding and metering need the whole event. ``flush``
    releases the partial event unchanged at EOF.

    ``tap``, when set, receives the upstream's bytes of every completed run of events before
    anything is hidden (the cache recorder keeps them): one framing pass serves both.
    """

    __slots__ = (
        "_buf",
        "_data_only",
        "_eol",
        "_scan",
        "_sep",
        "api",
        "done",
        "error",
        "events",
        "hide_usage",
        "tap",
        "terminal",
        "usage",
    )

    def __init__(self, api: ApiSpec, *, hide_usage: bool) -> None:
        self.api = api
        self._data_only = api.stream_format is StreamFormat.DATA_ONLY
        #: Only meaningful where usage is opt-in (DATA_ONLY streams).
        self.hide_usage = hide_usage and self._data_only
        #: The last usage seen; ``None`` until a usage-bearing event arrives (or never, when the
        #: stream was cut, which the caller must then estimate).
        self.usage: Usage | None = None
        #: A terminal event arrived, i.e. the stream was not cut off.
        self.done = False
        #: The terminal event's type (TYPED and MIXED streams).
        self.terminal: bytes | None = None
        #: An error event arrived (an ``error`` type or a top-level ``error`` key).
        self.error = False
        #: Complete events seen, comments and stray blank lines excluded.
        self.events = 0
        self.tap: Callable[[bytes], None] | None = None
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
            found = detect_separator(data, start)
            if isinstance(found, int):
                self._scan = found
                if data is not buf:
                    buf += data
                return b""
            sep, self._eol = found
            self._sep = sep
        seplen = len(sep)

        if self._data_only:
            last = data.rfind(sep, max(0, start - seplen + 1))
            if last < 0:
                self._scan = max(start, len(data) - seplen + 1)
                if data is not buf:
                    buf += data
                return b""
            end = last + seplen
            saved = (self.events, self.done, self.usage)
            region = bytes(data[:end])
            fast = self._fast_chat(region)
            if fast is None:
                self.events, self.done, self.usage = saved  # the slow path redoes it all
            else:
                if self.tap is not None:
                    self.tap(region)
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
        if self.tap is not None and pos:
            self.tap(bytes(data[:pos]))
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
        """A run of complete DATA_ONLY events at C speed, or None for the slow path.

        The common stream is ``data:`` events only, the gateway's ``,"usage":null`` key at the
        end of each, and one usage chunk near the end: the keys go in one ``bytes.replace``
        over the run, the usage chunk is handled alone by ``_process``. Anything else
        (comments, ``id:`` lines, odd key order, errors) takes the event-by-event path.
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
            or ERROR_KEY in region  # rare: the slow path looks at it event by event
        ):
            return None
        if self.hide_usage:
            region = region.replace(b',"usage":null}' + sep, b"}" + sep)
            if b'"usage":null' in region:
                return None
        self.events += count
        if region.startswith(DONE_PREFIXES) or any(sep + d in region for d in DONE_PREFIXES):
            self.done = True
        return region

    def flush(self) -> bytes:
        """The held partial event, unchanged: at EOF there is nothing left to wait for."""
        out = bytes(self._buf)
        self._buf.clear()
        self._scan = 0
        if out and self.tap is not None:
            self.tap(out)
        return out

    # -- per event -----------------------------------------------------------------------------

    def _process(self, data: Buffer, pos: int, end: int) -> bytes | None:
        """Meter one complete event ``data[pos:end]``.

        Returns ``None`` to forward it unchanged (the common case), ``b""`` to drop it, or the
        bytes to forward instead.
        """
        head = first_field(data, pos, end, self._eol)
        if head < 0:
            return None
        self.events += 1
        fmt = self.api.stream_format
        if fmt is StreamFormat.DATA_ONLY:
            return self._process_data_only(data, pos, head, end)
        if fmt is StreamFormat.TYPED:
            self._process_typed(data, pos, head, end)
        else:
            self._process_mixed(data, pos, head, end)
        return None

    def _process_data_only(self, data: Buffer, pos: int, head: int, end: int) -> bytes | None:
        if data.startswith(DONE_PREFIXES, head):
            self.done = True
            return None
        if ERROR_KEY in data[head:end] and has_top_level_error(data, pos, end):
            self.error = True
            return None
        i = data.find(USAGE_KEY, head, end)
        if i < 0:
            return None
        value = i + _USAGE_KEY_LEN
        if data.startswith(_NULL, value, end):
            if not self.hide_usage:
                return None
            # The gateway's include_usage added ``"usage":null`` to every chunk. OpenAI writes
            # it compactly after ``choices`` as ``,"usage":null``; removing exactly that keeps
            # the object valid. The key cannot be string content (see sse.framing).
            if data[i - 1] == _COMMA:
                return bytes(data[pos : i - 1]) + bytes(data[value + 4 : end])
            if data[value + 4] == _COMMA:  # first key: ``{"usage":null,...``
                return bytes(data[pos:i]) + bytes(data[value + 5 : end])
            return None
        if not is_object_at(data, value, end):
            return None
        obj = decode_data(data, pos, end)
        if obj is None:
            return None  # undecodable: forward as is rather than guess
        usage = self.api.usage(obj.get("usage"))
        if usage is not None:
            self.usage = usage
        # The usage-only chunk is recognisable by its empty ``choices``. Servers that attach
        # usage to a chunk with choices (continuous usage stats) keep their chunk: dropping it
        # would lose content.
        if self.hide_usage and obj.get("choices") == []:
            return b""
        return None

    def _process_typed(self, data: Buffer, pos: int, head: int, end: int) -> None:
        """Typed streams: only the terminal event carries usage."""
        kind = event_type(data, head, end, self._eol)
        if kind is None:
            # Neither an ``event:`` line nor a leading type: fall back to decoding any event
            # that carries a usage object, and read its type from the JSON.
            if ERROR_KEY in data[head:end] and has_top_level_error(data, pos, end):
                self.error = True
            if not has_object_key(data, USAGE_KEY, pos, end):
                return
            obj = decode_data(data, pos, end)
            if obj is None:
                return
            raw = obj.get("type")
            if not isinstance(raw, str):
                return
            kind = raw.encode()
            if self._end(kind):
                self._take_usage(obj)
            return
        if kind == b"error" or (
            ERROR_KEY in data[head:end] and has_top_level_error(data, pos, end)
        ):
            self.error = True
        if self._end(kind) and has_object_key(data, USAGE_KEY, pos, end):
            obj = decode_data(data, pos, end)
            if obj is not None:
                self._take_usage(obj)

    def _end(self, kind: bytes) -> bool:
        if not self.api.is_terminal_event(kind):
            return False
        self.done = True
        self.terminal = kind
        return True

    def _take_usage(self, event: dict[str, Any]) -> None:
        usage = self.api.stream_usage(event)
        if usage is not None:
            self.usage = usage

    def _process_mixed(self, data: Buffer, pos: int, head: int, end: int) -> None:
        """Passthrough streams: best-effort metering of whatever shape arrives.

        Covers resumed Responses streams (GET ``/responses/{id}?stream=true``), image edits,
        transcriptions and Assistants runs. The last usage seen wins, which for Assistants is
        the run's total rather than a step's.
        """
        if data.startswith(DONE_PREFIXES, head):
            self.done = True
            return
        kind = event_type(data, head, end, self._eol)
        if kind is not None:
            self._end(kind)  # ``event: done`` ends Assistants runs (its data is ``[DONE]``)
        if not has_object_key(data, USAGE_KEY, pos, end):
            return
        obj = decode_data(data, pos, end)
        if obj is not None:
            self._take_usage(obj)
