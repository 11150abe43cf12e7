"""Reading the Responses streams of background responses (a streamed create, a streamed
retrieve) while they are relayed: which response it is, and how it ended.

Both ride on the ``StreamMeter``'s tap, which sees the upstream's bytes of every run of complete
events: no second framing pass, and only the events that can say something are decoded.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web

from gateway.apis.responses import TERMINAL_EVENTS
from gateway.errors import GatewayError
from gateway.pipeline.disconnect import ClientGone, cancel_on_disconnect
from gateway.sse import StreamMeter
from gateway.sse.framing import decode_data
from gateway.upstream.client import UpstreamResponse
from gateway.upstream.relay import RelayResult, StreamEnd, relay_sse

#: Blank lines between events, in any of the three line-ending styles SSE allows.
_EVENT_BREAK = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class ResponseEvents:
    """A ``StreamMeter`` tap: the response's id (its first event, ``response.created``,
    carries it) and the response object of its terminal event (``response.completed``,
    ``.incomplete``, ``.failed``), which carries the status and usage a settlement needs."""

    __slots__ = ("final", "id", "known")

    def __init__(self, response_id: str | None = None) -> None:
        self.id = response_id  # a streamed retrieve names it in its path: nothing to look for
        self.final: dict[str, Any] | None = None
        #: Set once the id is: a job can be opened for it while the stream goes on.
        self.known = asyncio.Event()

    def __call__(self, data: bytes) -> None:
        if self.id is not None and not any(kind in data for kind in TERMINAL_EVENTS):
            return  # the common run of deltas: one search per terminal type, nothing decoded
        for event in _EVENT_BREAK.split(data):
            if self.id is not None and not any(kind in event for kind in TERMINAL_EVENTS):
                continue
            obj = decode_data(event, 0, len(event))
            response = obj.get("response") if obj is not None else None
            if obj is None or not isinstance(response, dict):
                continue
            if self.id is None and isinstance(response.get("id"), str):
                self.id = response["id"]
                self.known.set()
            kind = obj.get("type")
            if isinstance(kind, str) and kind.encode() in TERMINAL_EVENTS:
                self.final = response


def watch(meter: StreamMeter, response_id: str | None = None) -> ResponseEvents:
    events = ResponseEvents(response_id)
    meter.tap = events
    return events


async def relay_watched(
    request: web.Request, upstream: UpstreamResponse, client: web.StreamResponse, meter: StreamMeter
) -> RelayResult:
    """Relay until the stream ends or the client leaves (noticed at once, even while the
    upstream is quiet)."""
    result = RelayResult(StreamEnd.COMPLETE)
    try:
        with cancel_on_disconnect(request):
            await relay_sse(upstream, client, meter, result)
    except ClientGone:
        # Gone after the terminal event went out (with the stream's end, before the
        # upstream's EOF was read) is a complete stream, not a client that left early.
        if not meter.done:
            result.end = StreamEnd.CLIENT_GONE
    return result


async def read_until_known(
    upstream: UpstreamResponse, meter: StreamMeter, events: ResponseEvents
) -> None:
    """Read on, relaying nothing, until the stream names its response (or ends): a client
    that left before the first event still leaves a run upstream that must be settled."""
    try:
        async for chunk in upstream.chunks():
            meter.feed(chunk)
            if events.id is not None or meter.done:
                return
    except GatewayError:
        return  # cut before it said which response: nothing to track, it settles as charged
