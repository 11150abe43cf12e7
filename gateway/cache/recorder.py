"""Record a cacheable SSE stream as it is relayed (from the relay's own meter), and replay it."""

from __future__ import annotations

from collections.abc import Iterator

from gateway.apis import StreamFormat, Usage
from gateway.cache.entry import CachedResponse
from gateway.sse import StreamMeter


class SseRecorder:
    """Records the upstream's bytes of a stream, run of events by run of events, for the cache.

    It taps the ``StreamMeter`` the relay already runs (``meter.tap``), so the stream is framed
    and inspected once; what it keeps is the upstream's bytes before anything was hidden. At the
    end, ``result()`` gives the parts to store, or ``None`` when the stream must not be cached
    (``reason``):

    - ``"incomplete"``: it did not end with a whole answer: no ``data: [DONE]`` (Chat,
      Completions), no ``response.completed`` (Responses: ``incomplete`` and ``failed`` do not
      count), no ``*.completed`` (Images);
    - ``"error"``: an ``error`` event, or data with a top-level ``error`` (SDKs raise on it);
    - ``"too_large"``: more than ``max_bytes`` arrived; from then on nothing is kept.
    """

    __slots__ = ("_failure", "_max_bytes", "_meter", "_parts", "_size")

    def __init__(self, meter: StreamMeter, *, max_bytes: int) -> None:
        if not meter.api.metered or meter.api.stream_format is StreamFormat.MIXED:
            raise ValueError(f"{meter.api.name} streams are not cacheable")
        self._meter = meter
        self._max_bytes = max_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self._failure: str | None = None
        meter.tap = self._record

    @property
    def usage(self) -> Usage | None:
        """The usage the stream reported (usage chunk, or the terminal event's)."""
        return self._meter.usage

    @property
    def reason(self) -> str | None:
        """Why the stream is not cacheable (so far), or ``None``."""
        if self._failure is not None:
            return self._failure
        meter = self._meter
        if meter.error:
            return "error"
        if not meter.done or not meter.api.is_cacheable_end(meter.terminal):
            return "incomplete"
        return None

    def _record(self, part: bytes) -> None:
        if self._failure is not None:
            return
        self._size += len(part)
        if self._size > self._max_bytes:
            self._failure = "too_large"
            self._parts = []
            self._meter.tap = None
            return
        self._parts.append(part)

    def result(self) -> list[bytes] | None:
        """Call at the end of the stream: the parts to store, or ``None`` (see ``reason``).

        A partial event left at EOF is forwarded unchanged by the relay (``meter.flush``), which
        taps it here too, so a replay sends the same bytes.
        """
        if self.reason is not None:
            return None
        return list(self._parts)


def replay_events(entry: CachedResponse, *, include_usage: bool) -> Iterator[bytes]:
    """The bytes to send a client for a cached stream, run by run.

    DATA_ONLY streams (Chat, Completions) were stored with the usage chunk and the
    ``"usage":null`` keys (the gateway always asks upstream for them); a client that did not
    ask for ``include_usage`` gets them removed by the same ``StreamMeter`` the live relay uses,
    so a hit is byte-identical to what a miss sends. Other streams are replayed as stored.
    """
    if entry.events is None:
        raise ValueError("not a stream entry")
    meter = StreamMeter(entry.api, hide_usage=not include_usage)
    if not meter.hide_usage:
        yield from entry.events
        return
    for part in entry.events:
        out = meter.feed(part)
        if out:
            yield out
    rest = meter.flush()
    if rest:
        yield rest
