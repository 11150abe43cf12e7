"""What to charge a request whose client left before the upstream's usage arrived. Pure.

The gateway closes the upstream connection as soon as the client is gone, which stops the
generation, but the usage (the stream's last event, or the JSON body) never comes. Charging the
whole reservation would make every stop button cost the full output budget (25,000 tokens on a
reasoning model); charging what was relayed would miss the hidden reasoning tokens and what
was generated but not yet sent. The charge is instead a bound that never under-counts:

    output = min(reserved output, relayed events * TOKENS_PER_EVENT
                                  + choices * max_output_tokens_per_second * upstream seconds)

- an SSE event carries at most ``TOKENS_PER_EVENT`` tokens of content (OpenAI sends about one
  per event; metadata events carry none, and count anyway), so the first term bounds what the
  client was sent whatever the model's speed;
- no model generates faster than its profile's ``max_output_tokens_per_second`` per choice,
  reasoning included, so the second term bounds everything the upstream produced in the time
  it ran (from sending the request until the connection was closed; the time before the first
  token makes it only larger). The two overlap, which only errs on the high side.

Every window is then charged its fixed part (the prompt estimate, 1 request) plus that output
(at the output price, for cost windows), never more than it reserved. A request that reserved
no output (embeddings) keeps its reservation, which is its fixed part only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.quota.policy import QuotaPlan

#: Upper bound on the tokens of one relayed SSE event.
TOKENS_PER_EVENT = 4


@dataclass(frozen=True, slots=True)
class EarlyStop:
    """What is known of a request cut short by its client."""

    upstream_seconds: float  # from sending the request to closing the upstream connection
    relayed_events: int  # SSE events relayed to the client (0 for a JSON answer)
    tokens_per_second: float  # the model profile's ``max_output_tokens_per_second``


def early_stop_output(plan: QuotaPlan, granted_output: int, stop: EarlyStop) -> int:
    """Output tokens (all choices) charged for a request stopped early."""
    reserved = plan.choices * granted_output
    generated = math.ceil(plan.choices * stop.tokens_per_second * max(0.0, stop.upstream_seconds))
    relayed = stop.relayed_events * TOKENS_PER_EVENT
    return min(reserved, relayed + generated)


def early_stop_amounts(
    plan: QuotaPlan, reserved: list[int], granted_output: int, stop: EarlyStop
) -> list[int]:
    """Per window, what the early-stopped request is charged instead of its reservation."""
    output = early_stop_output(plan, granted_output, stop)
    choices = max(1, plan.choices)
    # per_output is choices x the unit per output token (1 for tokens, its price for cost).
    return [
        min(held, planned.charge.fixed + output * (planned.charge.per_output // choices))
        for planned, held in zip(plan.windows, reserved, strict=True)
    ]
