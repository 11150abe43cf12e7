"""Server-sent event streams: one framing implementation (``framing``) under the meter that
relays and meters them (``meter``); the cache's recorder taps the meter's event runs."""

from gateway.sse.meter import StreamMeter

__all__ = ["StreamMeter"]
