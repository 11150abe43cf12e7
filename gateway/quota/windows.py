"""Fixed, UTC-aligned quota windows.

``minute``, ``hour`` and ``day`` are aligned to UTC; ``month`` is the UTC calendar month; a
duration (``15m``, ``6h``, ``7d``) is aligned to the Unix epoch, so every replica computes the
same boundaries from the same clock without coordination.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass
from functools import lru_cache

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NAMED = {"minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True, slots=True)
class Window:
    start: float
    end: float

    @property
    def label(self) -> str:
        """A compact, sortable name for the window's start, used in store keys."""
        return _label(self.start)

    def resets_in(self, now: float) -> float:
        return max(0.0, self.end - now)


# Every request asks for the labels of the same few current windows (strftime: 2 % of a
# request's CPU in the gateway+redis profile before this cache).
@lru_cache(maxsize=1024)
def _label(start: float) -> str:
    return dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y%m%dT%H%M%S")


def window_seconds(spec: str) -> int | None:
    """Length of a fixed-length window; None for calendar months."""
    if spec == "month":
        return None
    if spec in _NAMED:
        return _NAMED[spec]
    return int(spec[:-1]) * _UNIT_SECONDS[spec[-1]]


def window_at(spec: str, now: float) -> Window:
    length = window_seconds(spec)
    if length is not None:
        start = (int(now) // length) * length
        return Window(float(start), float(start + length))
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    first = dt.datetime(moment.year, moment.month, 1, tzinfo=dt.UTC)
    days = calendar.monthrange(moment.year, moment.month)[1]
    return Window(first.timestamp(), (first + dt.timedelta(days=days)).timestamp())


def go_duration(seconds: float) -> str:
    """Seconds in Go's time.Duration format, as OpenAI's ``x-ratelimit-reset-*`` headers use."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    frac = round(seconds - whole, 3)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    sec_text = f"{secs + frac:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{sec_text}s"
    if minutes:
        return f"{minutes}m{sec_text}s"
    return f"{sec_text}s"
