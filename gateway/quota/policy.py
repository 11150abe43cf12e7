"""Quota planning: which windows a request touches and what it asks of each. Pure functions.

The admission model is reserve-then-settle. Before forwarding, a request reserves its output
budget (the limit it sent, or the model's default, which is then written into the request)
against every completion, reasoning and total-token window, 1 against request windows and an
estimate against prompt windows. The store grants the largest per-choice budget that fits in
every window at once; the gateway writes that budget into the request, so the upstream cannot
produce more than was reserved and output caps hold by construction. Reasoning tokens are part
of completion tokens, so the same budget bounds them.

Prompt tokens can't be known before the upstream counts them, so prompt (and the prompt part
of total) windows use an estimate: one token per ``PROMPT_BYTES_PER_TOKEN`` bytes of request
body, which over-estimates English text (about 4 characters per token plus JSON syntax) and
is replaced by the real count at settlement. A prompt cap can therefore be passed only by the
estimation error of requests in flight at the same moment; output caps are exact.

Cost rules (``cost_usd``) are one more window of the same kind, in nano-dollars
(``gateway.quota.pricing``): the prompt estimate at the input price is the fixed part, the
output price per token (times ``n``) the per-output part, so the same clamp gives a request
the output its dollars can buy. A team's users' rules (``user_quotas``) are windows too, keyed
by the user within the team's hash tag: one store call checks the team's and the user's rules
together, and the tightest binds.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from dataclasses import dataclass

from gateway.apis import RequestInfo, Usage
from gateway.config import ModelProfile, QuotaRule, TeamConfig
from gateway.config_pricing import nano_to_usd
from gateway.config_quota import COST_METRIC
from gateway.errors import PermissionDeniedError, QuotaExceededError
from gateway.quota.pricing import UnitPrice
from gateway.quota.store import keys
from gateway.quota.store.base import ReserveOutcome, WindowCharge
from gateway.quota.windows import Window, go_duration, window_at

PROMPT_BYTES_PER_TOKEN = 3
#: Longest retry-after an SDK honours (openai-python 1.x and node: 60 s); beyond it, say
#: ``x-should-retry: false`` so no SDK spins on a window that is hours away from resetting.
SDK_RETRY_HORIZON_SECONDS = 60.0
#: How long settled counters outlive their window, so usage stays readable a while.
COUNTER_RETENTION_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class PlannedWindow:
    rule: QuotaRule
    window: Window
    charge: WindowCharge
    user: str | None = None  # a rule of ``user_quotas``, for this user


#: The ``metric`` label of refusals and clamps by the concurrency cap.
CONCURRENCY = "concurrent_requests"
#: The counter of requests in flight: reserved 1 while a request runs, never ``used``.
CONCURRENCY_KEY = "inflight"


@dataclass(frozen=True, slots=True)
class QuotaPlan:
    windows: tuple[PlannedWindow, ...]
    requested_output: int  # per choice; 0 for APIs without output tokens
    min_output: int
    choices: int
    #: The team's cap on requests in flight, charged after the windows; ``None`` = no cap.
    concurrency: WindowCharge | None = None
    #: The request's prices, when its model has one (cost windows need it).
    price: UnitPrice | None = None

    @property
    def charges(self) -> tuple[WindowCharge, ...]:
        charges = tuple(w.charge for w in self.windows)
        return charges if self.concurrency is None else (*charges, self.concurrency)

    def metric_of(self, index: int) -> str:
        """The metric of the ``index``-th charge (a window's, or the concurrency cap)."""
        return CONCURRENCY if index >= len(self.windows) else self.windows[index].rule.metric


def rule_applies(rule: QuotaRule, model: str | None) -> bool:
    if rule.models is None:
        return True
    return model is not None and any(fnmatch.fnmatchcase(model, p) for p in rule.models)


def estimate_prompt_tokens(body_bytes: int) -> int:
    return body_bytes // PROMPT_BYTES_PER_TOKEN + 1


def requested_output(info: RequestInfo, profile: ModelProfile, team: TeamConfig) -> int:
    """The per-choice output budget a request asks for, after the team's ceiling."""
    if not info.api.produces_output:
        return 0
    asked = info.max_output_tokens
    if asked is None:
        asked = info.api.default_output_tokens(profile)
    if team.max_output_tokens is not None:
        asked = min(asked, team.max_output_tokens)
    return asked


def plan_request(
    rules: list[QuotaRule],
    info: RequestInfo,
    profile: ModelProfile,
    team: TeamConfig,
    *,
    body_bytes: int,
    now: float,
    hold_seconds: float,
    max_concurrent: int | None = None,
    price: UnitPrice | None = None,
    user: str | None = None,
    user_rules: list[QuotaRule] | None = None,
) -> QuotaPlan:
    """The windows a request reserves in. Raises PermissionDeniedError (403) when a cost rule
    applies to a model without a price: such a request is never counted as free."""
    output = requested_output(info, profile, team)
    choices = max(1, info.n) if info.api.produces_output else 0
    prompt = estimate_prompt_tokens(body_bytes)
    by_key: dict[str, PlannedWindow] = {}
    owned: list[tuple[QuotaRule, str | None]] = [(rule, None) for rule in rules]
    if user is not None and user_rules:
        owned += [(rule, user) for rule in user_rules]
    for rule, owner in owned:
        if not rule_applies(rule, info.model):
            continue
        if rule.metric == COST_METRIC and price is None:
            raise _unpriced(info.model)
        fixed, per_output = _amounts(rule.metric, prompt, choices, profile, price)
        window = window_at(rule.window, now)
        key = keys.window_key(rule.metric, rule.window, rule.models, window.label)
        if owner is not None:
            key = keys.user_window_key(owner, key)
        charge = WindowCharge(
            key=key,
            limit=rule.counter_limit,
            fixed=fixed,
            per_output=per_output,
            expires_at=window.end + hold_seconds + COUNTER_RETENTION_SECONDS,
        )
        known = by_key.get(key)
        # Two identical rules share one counter; the stricter limit is the one that holds.
        if known is None or rule.counter_limit < known.rule.counter_limit:
            by_key[key] = PlannedWindow(rule, window, charge, owner)
    concurrency = None
    if max_concurrent is not None:
        concurrency = WindowCharge(
            key=CONCURRENCY_KEY,
            limit=max_concurrent,
            fixed=1,
            per_output=0,
            expires_at=now + hold_seconds + COUNTER_RETENTION_SECONDS,
        )
    return QuotaPlan(
        windows=tuple(by_key.values()),
        requested_output=output,
        min_output=min(info.api.min_output_tokens(profile), output),
        choices=choices,
        concurrency=concurrency,
        price=price,
    )


def _unpriced(model: str | None) -> PermissionDeniedError:
    named = f"model '{model}'" if model else "a request that names no model"
    return PermissionDeniedError(
        f"This team has a cost_usd quota, and the gateway has no price for {named}; it would "
        f"be counted as free. Add it under `pricing.models` in the gateway's config.",
        code="model_not_priced",
        param="model",
    )


def _amounts(
    metric: str, prompt: int, choices: int, profile: ModelProfile, price: UnitPrice | None
) -> tuple[int, int]:
    if metric == COST_METRIC:
        assert price is not None
        return price.prompt_cost(prompt), choices * price.output_per_token
    if metric == "completion_tokens":
        return 0, choices
    if metric == "reasoning_tokens":
        # Non-reasoning models spend none; reserving for them would only clamp for nothing.
        return 0, choices if profile.reasoning else 0
    if metric == "total_tokens":
        return prompt, choices
    if metric == "prompt_tokens":
        return prompt, 0
    return 1, 0  # requests


def used_amount(
    metric: str, usage: Usage, requests: int = 1, price: UnitPrice | None = None
) -> int:
    """What a finished request (or job that ran ``requests`` requests) used of ``metric``."""
    if metric == COST_METRIC:
        assert price is not None
        return price.cost(usage)
    if metric == "completion_tokens":
        return usage.completion_tokens
    if metric == "reasoning_tokens":
        return usage.reasoning_tokens
    if metric == "prompt_tokens":
        return usage.prompt_tokens
    if metric == "total_tokens":
        return usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
    if metric == CONCURRENCY:
        return 0  # finished: no longer in flight
    return requests


def actual_amounts(plan: QuotaPlan, usage: Usage) -> list[int]:
    return [used_amount(plan.metric_of(i), usage, 1, plan.price) for i in range(len(plan.charges))]


def reserved_amounts(plan: QuotaPlan, output: int) -> list[int]:
    return [c.fixed + c.per_output * output for c in plan.charges]


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _scope(rule: QuotaRule) -> str:
    return f" for models {', '.join(rule.models)}" if rule.models else ""


def _amount(rule: QuotaRule, amount: int) -> str:
    """An amount of the rule's metric as a person reads it (dollars for cost rules)."""
    if rule.metric == COST_METRIC:
        return f"${nano_to_usd(amount):.6f}".rstrip("0").rstrip(".")
    return str(amount)


def _owner(team: str, planned: PlannedWindow) -> str:
    if planned.user is None:
        return f"team '{team}'"
    return f"user '{planned.user}' of team '{team}'"


def rate_limit_headers(plan: QuotaPlan, remaining: tuple[int, ...], now: float) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for the team's tightest token and request windows."""
    headers: dict[str, str] = {}
    for suffix, is_requests in (("tokens", False), ("requests", True)):
        tightest: tuple[int, PlannedWindow] | None = None
        for planned, left in zip(plan.windows, remaining, strict=False):
            if planned.rule.metric == COST_METRIC:
                continue  # dollars are neither tokens nor requests
            if (planned.rule.metric == "requests") != is_requests:
                continue
            if tightest is None or left < tightest[0]:
                tightest = (left, planned)
        if tightest is not None:
            left, planned = tightest
            headers[f"x-ratelimit-limit-{suffix}"] = str(planned.rule.counter_limit)
            headers[f"x-ratelimit-remaining-{suffix}"] = str(max(0, left))
            headers[f"x-ratelimit-reset-{suffix}"] = go_duration(planned.window.resets_in(now))
    return headers


def quota_exceeded(
    team: str, plan: QuotaPlan, outcome: ReserveOutcome, now: float
) -> QuotaExceededError:
    """The 429 for a refused reservation.

    Exhausted (settled usage leaves too little): OpenAI's ``insufficient_quota`` with
    ``x-should-retry: false`` when the window resets beyond what an SDK would wait, else
    ``rate_limit_exceeded`` with the reset as ``retry-after``. Congested (reservations of
    requests in flight hold the budget, after waiting for them as long as allowed):
    ``rate_limit_exceeded`` with a short ``retry-after``; they settle soon.
    """
    index = outcome.blocked if outcome.blocked is not None else 0
    headers = rate_limit_headers(plan, outcome.remaining, now)
    if index >= len(plan.windows):
        assert plan.concurrency is not None
        return _congested(
            f"Too many requests in flight for team '{team}': at most {plan.concurrency.limit} "
            "at a time. Retry shortly.",
            CONCURRENCY,
            "requests",
            headers,
        )
    planned = plan.windows[index]
    rule = planned.rule
    left = max(0, outcome.remaining[index])
    needed = planned.charge.fixed + planned.charge.per_output * plan.min_output
    kind = "requests" if rule.metric == "requests" else "tokens"
    cap = f"{rule.metric} limit {_amount(rule, rule.counter_limit)} per {rule.window}{_scope(rule)}"
    if outcome.state == "congested":
        return _congested(
            f"Quota busy for {_owner(team, planned)}: {cap}; requests in flight hold all but "
            f"{_amount(rule, left)}, this request needs at least {_amount(rule, needed)}. They "
            "settle within seconds: retry shortly.",
            rule.metric,
            kind,
            headers,
        )
    resets_in = planned.window.resets_in(now)
    message = (
        f"Quota exceeded for {_owner(team, planned)}: {cap} is used up; this request needs at "
        f"least {_amount(rule, needed)}. The window resets at {_iso(planned.window.end)} "
        f"(in {go_duration(resets_in)})."
    )
    wait = max(1.0, resets_in)
    headers["retry-after"] = str(int(-(-wait // 1)))
    headers["retry-after-ms"] = str(int(wait * 1000))
    beyond_sdk_retry = resets_in > SDK_RETRY_HORIZON_SECONDS
    code = "rate_limit_exceeded"
    if beyond_sdk_retry:
        headers["x-should-retry"] = "false"
        code = kind = "insufficient_quota"
    error = QuotaExceededError(message, type=kind, code=code, param=None, headers=headers)
    error.metric = rule.metric
    error.reason = "exhausted"
    return error


#: What a congested refusal tells the SDKs to wait: reservations settle within seconds.
CONGESTED_RETRY_SECONDS = 2


def _congested(message: str, metric: str, kind: str, headers: dict[str, str]) -> QuotaExceededError:
    headers["retry-after"] = str(CONGESTED_RETRY_SECONDS)
    headers["retry-after-ms"] = str(CONGESTED_RETRY_SECONDS * 1000)
    error = QuotaExceededError(
        message, type=kind, code="rate_limit_exceeded", param=None, headers=headers
    )
    error.metric = metric
    error.reason = "concurrency" if metric == CONCURRENCY else "congested"
    return error
