"""A streamed background create (``POST /responses`` with ``background`` and ``stream``).

The response runs upstream whether or not the stream that started it stays open, so its
reservation cannot settle when the stream ends the way an ordinary stream's does. It becomes
an open job as soon as the first event (``response.created``) names the response, while the
stream goes on: from then on a replica restart loses nothing. If the stream reaches its
terminal event, that event's usage settles the job (the same exactly-once step as a client's
retrieve; whoever comes first settles it). If the client leaves, the gateway stops relaying but
never charges an early-stop estimate: the job stays open until a retrieve, a streamed
retrieve or the reconciler sees the response finished and settles its real usage.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.pipeline.forward import Call, start_stream
from gateway.pipeline.jobs import settle_after_stream
from gateway.pipeline.response_stream import ResponseEvents, read_until_known, relay_watched, watch
from gateway.quota.service import Reservation
from gateway.sse import StreamMeter
from gateway.upstream.client import UpstreamResponse
from gateway.upstream.relay import RelayResult, StreamEnd


async def relay_background(
    call: Call,
    reservation: Reservation | None,
    upstream: UpstreamResponse,
    client: web.StreamResponse,
    meter: StreamMeter,
) -> tuple[RelayResult, str | None]:
    """Relay the stream; returns how it ended and the response id when a job now owns the
    reservation (None: the caller settles it as any stream, from ``meter.usage``)."""
    events = watch(meter)
    opening = None
    if reservation is not None:
        opening = asyncio.get_running_loop().create_task(_open_job(call, reservation, events))
    opened = False
    try:
        if await start_stream(client, call.request, call.exchange):
            result = await relay_watched(call.request, upstream, client, meter)
        else:
            result = RelayResult(StreamEnd.CLIENT_GONE)
        if result.end is StreamEnd.CLIENT_GONE:
            if events.id is None and not meter.done:
                await read_until_known(upstream, meter, events)
            upstream.close()  # the run goes on upstream; only this connection ends
    finally:
        if opening is not None:
            if events.id is None:
                opening.cancel()  # it never said which response: no job could be settled
            else:
                # Awaited even when this handler is cancelled (shutdown): the caller's
                # settlement must know whether a job owns the reservation.
                opened = await asyncio.shield(opening)
    if not opened:
        return result, None  # no id, or no shared store to hold a job: settled as a stream
    if events.final is not None:
        await settle_after_stream(call.state, call.team_name, events.final)
    return result, events.id


async def _open_job(call: Call, reservation: Reservation, events: ResponseEvents) -> bool:
    await events.known.wait()
    assert events.id is not None
    return await call.state.jobs.open(
        reservation,
        "response",
        events.id,
        "/v1/responses",
        hold_seconds=call.config.admission.background_hold_seconds,
    )
