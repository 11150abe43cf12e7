from __future__ import annotations

import datetime as dt

import pytest

from gateway.quota.windows import go_duration, window_at


def ts(*args: int) -> float:
    return dt.datetime(*args, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(
    ("spec", "now", "start", "end"),
    [
        ("minute", ts(2026, 11, 25, 13, 7, 42), ts(2026, 11, 25, 13, 7), ts(2026, 11, 25, 13, 8)),
        ("hour", ts(2026, 11, 25, 13, 59, 59), ts(2026, 11, 25, 13), ts(2026, 11, 25, 14)),
        ("day", ts(2026, 11, 25, 23, 59, 59), ts(2026, 11, 25), ts(2026, 11, 26)),
        ("month", ts(2026, 2, 14, 5), ts(2026, 2, 1), ts(2026, 3, 1)),
        ("month", ts(2028, 2, 29, 23), ts(2028, 2, 1), ts(2028, 3, 1)),
        ("month", ts(2026, 12, 31, 23, 59, 59), ts(2026, 12, 1), ts(2027, 1, 1)),
        ("15m", ts(2026, 11, 25, 13, 44, 59), ts(2026, 11, 25, 13, 30), ts(2026, 11, 25, 13, 45)),
        ("6h", ts(2026, 11, 25, 13), ts(2026, 11, 25, 12), ts(2026, 11, 25, 18)),
        ("7d", ts(1970, 1, 8), ts(1970, 1, 8), ts(1970, 1, 15)),
    ],
)
def test_windows_are_fixed_and_utc_aligned(spec: str, now: float, start: float, end: float) -> None:
    window = window_at(spec, now)
    assert (window.start, window.end) == (start, end)


def test_window_rolls_over_exactly_at_the_boundary() -> None:
    before = window_at("day", ts(2026, 11, 25, 23, 59, 59) + 0.999)
    after = window_at("day", ts(2026, 11, 26))
    assert before.end == after.start
    assert before.label != after.label


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.012, "12ms"), (1, "1s"), (59.5, "59.5s"), (360, "6m0s"), (3723.25, "1h2m3.25s")],
)
def test_go_duration_format(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
