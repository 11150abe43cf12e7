"""Every API the gateway does not meter: relayed as is, its streams metered on a best effort."""

from __future__ import annotations

from typing import Any

from gateway.apis.base import ApiSpec, StreamFormat
from gateway.apis.responses import TERMINAL_EVENTS as RESPONSE_TERMINAL_EVENTS
from gateway.apis.usage import Usage, read_guessed_usage

#: Terminal event types of passthrough streams (resumed Responses streams end like Responses):
#: image edits, transcriptions, speech, Assistants runs (``event: done``).
TERMINAL_EVENTS = RESPONSE_TERMINAL_EVENTS | {
    b"image_generation.completed",
    b"image_edit.completed",
    b"transcript.text.done",
    b"speech.audio.done",
    b"done",
}


class OtherApi(ApiSpec):
    stream_format = StreamFormat.MIXED

    def usage(self, usage: object) -> Usage | None:
        return read_guessed_usage(usage)

    def is_terminal_event(self, kind: bytes) -> bool:
        return kind in TERMINAL_EVENTS

    def stream_usage(self, event: dict[str, Any]) -> Usage | None:
        # Resumed Responses streams nest it in ``response``; the others carry it on top.
        response = event.get("response")
        holder = response if isinstance(response, dict) and "usage" in response else event
        return self.usage(holder.get("usage"))


OTHER = OtherApi()
