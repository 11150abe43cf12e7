"""Background responses (``"background": true``): ``queued`` for the first tenth of a delay
(``x-mock-background-delay-ms``, default 200 ms), then ``in_progress``, then the finished
response once the delay has passed.

The mock computes the answer at create and reveals it by the clock on every read, so no task
runs in the mock. The model produces its output evenly while ``in_progress``: cancelling then
keeps the share produced so far (at least one token once it runs), so a cancel mid-way
reports partial usage as OpenAI does.
"""

from __future__ import annotations

import asyncio
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

DEFAULT_DELAY_SECONDS = 0.2
TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})
#: The share of the delay a run spends queued, before the model produces anything.
QUEUED_SHARE = 0.1

EventStream = Callable[[dict[str, Any]], Iterator[bytes]]


@dataclass(slots=True)
class BackgroundRun:
    final: dict[str, Any]
    events: EventStream  # the stream a client sees once it is finished
    started: float  # monotonic
    delay: float
    cancelled: dict[str, Any] | None = None

    def fraction(self) -> float:
        if self.delay <= 0:
            return 1.0
        return min(1.0, (time.monotonic() - self.started) / self.delay)

    def produced(self) -> float:
        """The share of its output the model has produced: 0 while queued, 1 when done."""
        return max(0.0, (self.fraction() - QUEUED_SHARE) / (1.0 - QUEUED_SHARE))

    def view(self) -> dict[str, Any]:
        """The response as a retrieve sees it now."""
        if self.cancelled is not None:
            return self.cancelled
        done = self.fraction()
        if done >= 1.0:
            return self.final
        status = "queued" if done < QUEUED_SHARE else "in_progress"
        return {
            **self.final,
            "status": status,
            "completed_at": None,
            "incomplete_details": None,
            "output": [],
            "usage": None,
        }

    def cancel(self) -> dict[str, Any]:
        if self.view()["status"] in TERMINAL:
            return self.view()
        usage = copy.deepcopy(self.final["usage"])
        produced = math.ceil(usage["output_tokens"] * self.produced())
        reasoning = min(usage["output_tokens_details"]["reasoning_tokens"], produced)
        usage["output_tokens"] = produced
        usage["output_tokens_details"]["reasoning_tokens"] = reasoning
        usage["total_tokens"] = usage["input_tokens"] + produced
        self.cancelled = {
            **self.final,
            "status": "cancelled",
            "completed_at": None,
            "output": [],
            "usage": usage,
        }
        return self.cancelled

    async def finished(self) -> dict[str, Any]:
        """Wait (in the mock, standing in for the model's work) until the run is terminal."""
        remaining = self.delay * (1.0 - self.fraction())
        if remaining > 0 and self.cancelled is None:
            await asyncio.sleep(remaining)
        return self.view()
