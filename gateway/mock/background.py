"""Background responses (``"background": true``): ``queued``, then ``in_progress``, then the
finished response once a delay has passed (``x-mock-background-delay-ms``, default 200 ms).

The mock computes the answer at create and reveals it by the clock on every read, so no task
runs in the mock; cancelling before the end keeps the share of the output produced so far.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

DEFAULT_DELAY_SECONDS = 0.2
TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})

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

    def view(self) -> dict[str, Any]:
        """The response as a retrieve sees it now."""
        if self.cancelled is not None:
            return self.cancelled
        done = self.fraction()
        if done >= 1.0:
            return self.final
        status = "queued" if done < 0.5 else "in_progress"
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
        share = self.fraction()
        usage = copy.deepcopy(self.final["usage"])
        produced = int(usage["output_tokens"] * share)
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
