"""What a request costs, in the integer unit cost counters count: nano-dollars. Pure.

Counters must stay integers (Redis increments them, Lua compares them), and the output part
of a reservation must be an integer per token for the clamp to be exact. In micro-dollars
most output prices are fractions of a unit per token (gpt-4o-mini: 0.6 micro-dollars), so a
reservation would have to round every output token up by two thirds; in nano-dollars
(1e-9 USD) every price with up to three decimals per 1M tokens is a whole number per token
(0.60 USD per 1M = 600 nano-dollars per token). Prices finer than that, or multiplied by a
tier discount into a fraction, round up per token when reserving and per request when
settling: a charge never falls short of the price. The largest budget a counter holds
exactly is 9 million USD per window (``MAX_COST_LIMIT_USD``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from gateway.apis import Usage
from gateway.config_pricing import NANO_PER_USD, ModelPrice, as_decimal

#: USD per 1M tokens -> nano-dollars per token.
_PER_MILLION = Decimal(NANO_PER_USD) / Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class UnitPrice:
    """Nano-dollars per token for one request (its model, service tier and Batch discount)."""

    input: Decimal
    cached_input: Decimal
    output: Decimal

    @classmethod
    def of(cls, price: ModelPrice, *, service_tier: str | None, batch: bool) -> UnitPrice:
        factor = Decimal(1)
        for tier, tier_factor in price.service_tiers.items():
            if tier == service_tier:
                factor *= as_decimal(tier_factor)
        if batch:
            factor *= as_decimal(price.batch)
        cached = price.input if price.cached_input is None else price.cached_input
        return cls(
            input=as_decimal(price.input) * _PER_MILLION * factor,
            cached_input=as_decimal(cached) * _PER_MILLION * factor,
            output=as_decimal(price.output) * _PER_MILLION * factor,
        )

    def encode(self) -> list[str]:
        return [str(self.input), str(self.cached_input), str(self.output)]

    @classmethod
    def decode(cls, raw: list[str]) -> UnitPrice:
        return cls(*(Decimal(part) for part in raw))

    @property
    def output_per_token(self) -> int:
        """An output token's price, rounded up: the per-token unit of a reservation."""
        return math.ceil(self.output)

    def prompt_cost(self, prompt_tokens: int) -> int:
        """A prompt's cost at the uncached price (the reservation's estimate)."""
        return math.ceil(self.input * prompt_tokens)

    def cost(self, usage: Usage) -> int:
        """What a finished request cost, cached prompt tokens at the cached price."""
        cached = min(usage.cached_prompt_tokens, usage.prompt_tokens)
        exact = (
            self.input * (usage.prompt_tokens - cached)
            + self.cached_input * cached
            + self.output * usage.completion_tokens
        )
        return math.ceil(exact)
