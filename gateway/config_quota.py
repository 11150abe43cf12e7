"""Quota rules in the config: team and per-user caps, and the defaults teams inherit."""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated, Literal

from pydantic import Field, model_validator

from gateway.config_base import ConfigModel, compile_patterns
from gateway.config_pricing import MAX_COST_LIMIT_USD, nano_to_usd, usd_to_nano

QuotaMetric = Literal[
    "completion_tokens", "reasoning_tokens", "prompt_tokens", "total_tokens", "requests", "cost_usd"
]
#: The metric whose limit is in USD (counted in nano-dollars, ``gateway.quota.pricing``).
COST_METRIC = "cost_usd"
WINDOW_PATTERN = r"^(minute|hour|day|month|[1-9][0-9]{0,5}[smhd])$"


class QuotaRule(ConfigModel):
    """A cap: at most ``limit`` of ``metric`` per fixed, UTC-aligned ``window``."""

    metric: QuotaMetric
    limit: Annotated[int, Field(ge=0)] | Annotated[float, Field(ge=0)] = Field(
        description="Largest amount per window (0 blocks the metric): tokens or requests, or "
        "USD for cost_usd (e.g. 250 or 0.05)."
    )
    window: str = Field(
        pattern=WINDOW_PATTERN,
        description="minute, hour, day (UTC), month (UTC calendar) or a duration: 15m, 6h, 7d.",
    )
    models: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None,
        description="Model patterns this rule counts; unset = every model of the team.",
    )

    @model_validator(mode="after")
    def _limit_fits_metric(self) -> QuotaRule:
        if self.metric == COST_METRIC:
            if self.limit > MAX_COST_LIMIT_USD:
                raise ValueError(f"a cost_usd limit is at most {MAX_COST_LIMIT_USD} USD")
        elif not float(self.limit).is_integer():
            raise ValueError(f"a {self.metric} limit must be a whole number")
        return self

    @cached_property
    def counter_limit(self) -> int:
        """The limit in the unit the store counts: tokens, requests or nano-dollars."""
        if self.metric == COST_METRIC:
            return usd_to_nano(self.limit)
        return int(self.limit)

    def readable(self, amount: int) -> float:
        """A counter amount in the unit of ``limit`` (USD for cost rules)."""
        return nano_to_usd(amount) if self.metric == COST_METRIC else amount


PathPattern = Annotated[str, Field(pattern=r"^/")]


class QuotaDefaults(ConfigModel):
    quotas: list[QuotaRule] = Field(
        default_factory=list, description="Rules for teams that set no `quotas` of their own."
    )
    user_quotas: list[QuotaRule] = Field(
        default_factory=list,
        description="Rules applied to each user (the token's `auth.user_claim`) of a team that "
        "sets no `user_quotas` of its own.",
    )
    allow_unmetered: list[PathPattern] = Field(
        default_factory=list,
        description="Path patterns (without /v1) of billable APIs the gateway does not meter "
        "that capped teams may call anyway, for teams that set no `allow_unmetered` of their own.",
    )

    @cached_property
    def _unmetered_matcher(self) -> re.Pattern[str]:
        return compile_patterns(self.allow_unmetered)

    def allows_unmetered(self, path: str) -> bool:
        return self._unmetered_matcher.match(path) is not None

    max_concurrent_requests: int | None = Field(
        default=None,
        ge=1,
        description="Metered requests in flight per team, across replicas (unset = no cap).",
    )
