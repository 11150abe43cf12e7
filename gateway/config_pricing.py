"""The ``pricing`` section: list prices per model pattern, for cost rules and spend metrics.

Prices are USD per 1M tokens, as OpenAI publishes them. ``config/pricing.yaml`` ships the list
prices of OpenAI's models; a config takes it in with ``pricing.include`` and overrides or adds
models under ``pricing.models`` (its own entries come first, so they win).
"""

from __future__ import annotations

import fnmatch
import re
from decimal import Decimal
from functools import cached_property
from typing import Annotated, Literal

from pydantic import Field, field_validator

from gateway.config_base import ConfigModel, compile_patterns

USDPerMillion = Annotated[float, Field(ge=0, le=1_000_000)]
Multiplier = Annotated[float, Field(gt=0, le=100)]
ServiceTier = Literal["flex", "priority", "scale"]


class ModelPrice(ConfigModel):
    """One model's list prices, in USD per 1M tokens."""

    input: USDPerMillion = Field(description="Prompt tokens.")
    cached_input: USDPerMillion | None = Field(
        default=None, description="Prompt tokens served from OpenAI's prompt cache (unset: input)."
    )
    output: USDPerMillion = Field(
        default=0.0, description="Output tokens, reasoning tokens included (embeddings: none)."
    )
    service_tiers: dict[ServiceTier, Multiplier] = Field(
        default_factory=dict,
        description="Price multipliers by the request's `service_tier` (e.g. flex: 0.5).",
    )
    batch: Multiplier = Field(
        default=1.0, description="Price multiplier for requests run by the Batch API (e.g. 0.5)."
    )


class PricingConfig(ConfigModel):
    include: str | None = Field(
        default=None,
        description="A price list file (relative to this config file) whose `models` come after "
        "the ones here, e.g. pricing.yaml, the shipped list of OpenAI prices.",
    )
    as_of: str | None = Field(default=None, description="When the prices were last checked.")
    models: dict[Annotated[str, Field(min_length=1)], ModelPrice] = Field(
        default_factory=dict,
        description="Model name pattern (fnmatch) -> prices; the first matching pattern wins.",
    )

    @field_validator("models")
    @classmethod
    def _patterns_compile(cls, value: dict[str, ModelPrice]) -> dict[str, ModelPrice]:
        for pattern in value:
            compile_patterns([pattern])
        return value

    @cached_property
    def _matcher(self) -> tuple[re.Pattern[str], list[ModelPrice]]:
        # One alternation, a group per pattern: the regex engine tries them in order, so the
        # group that matched is the first matching pattern, in one match per request.
        groups = "|".join(
            f"(?P<p{i}>{fnmatch.translate(pattern)})" for i, pattern in enumerate(self.models)
        )
        return re.compile(groups or r"(?!)"), list(self.models.values())

    def price_of(self, model: str | None) -> ModelPrice | None:
        if model is None or not self.models:
            return None
        matcher, prices = self._matcher
        found = matcher.match(model)
        if found is None or found.lastgroup is None:
            return None
        return prices[int(found.lastgroup[1:])]


def as_decimal(value: float) -> Decimal:
    """The value as written in the YAML (0.15, not 0.1499999...)."""
    return Decimal(repr(value))


#: Cost counters count nano-dollars (``gateway.quota.pricing`` says why).
NANO_PER_USD = 10**9
#: The largest cost limit (USD) a counter holds exactly: 2^53 nano-dollars, Lua's exact integers.
MAX_COST_LIMIT_USD = 9_000_000


def usd_to_nano(usd: float) -> int:
    return int((as_decimal(usd) * NANO_PER_USD).to_integral_value())


def nano_to_usd(nano: int) -> float:
    return nano / NANO_PER_USD
