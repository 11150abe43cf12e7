"""Every Prometheus metric the gateway exposes, defined once, on an injected registry.

Label values come only from bounded sets:

- ``team``: the configured team names;
- ``model``: the requested model when it matches a pattern from the config (team allow-lists,
  model profiles, quota scopes) that is not a bare ``*``, else ``other``; at most
  ``MAX_MODEL_LABELS`` distinct values, after which new ones fold to ``other`` too;
- ``endpoint``: the API's route name (``chat_completions``, ..., ``other``), never a raw path.

No key, user, request id or prompt hash is ever a label.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway import __version__

if TYPE_CHECKING:
    from gateway.apis import Usage
from gateway.config import GatewayConfig

MAX_MODEL_LABELS = 200
OTHER = "other"

# LLM calls range from milliseconds (embeddings, cache hits) to many minutes (reasoning).
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200,
)  # fmt: skip
# The gateway's own overhead should be well under a millisecond; its buckets start lower.
OVERHEAD_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1,
)  # fmt: skip


# The bounded label values of the error counters, created at 0 at start so that a dashboard's
# rate() and an alert's increase() see a series before the first failure.
UPSTREAM_ERROR_KINDS = ("connect", "timeout", "status_4xx", "status_5xx", "stream_cut")
STORE_OPERATIONS = (
    "quota_reserve",
    "quota_settle",
    "quota_settle_lost",
    "quota_peek",
    "job_open",
    "job_settle",
    "cache_get",
    "cache_put",
)
STORE_FALLBACK_MODES = ("local", "open", "closed")


@dataclass(frozen=True, slots=True)
class QuotaSample:
    team: str
    metric: str
    window: str
    scope: str
    # In the rule's own unit: tokens, requests, or USD for cost rules.
    limit: float
    used: float
    reserved: float


class ModelLabels:
    """Maps requested model names to a bounded set of label values."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self._patterns = sorted({p for p in patterns if p.strip("*")})
        self._known: dict[str, str] = {}

    def __call__(self, model: str | None) -> str:
        if not model:
            return OTHER
        label = self._known.get(model)
        if label is not None:
            return label
        matches = any(fnmatch.fnmatchcase(model, p) for p in self._patterns)
        label = model if matches and len(self._known) < MAX_MODEL_LABELS else OTHER
        if len(self._known) < MAX_MODEL_LABELS * 4:
            self._known[model] = label
        return label


def model_patterns(config: GatewayConfig) -> list[str]:
    patterns: list[str] = []
    for team in config.teams.values():
        patterns += team.models
        for rule in [*(team.quotas or []), *(team.user_quotas or [])]:
            patterns += rule.models or []
    for rule in [*config.defaults.quotas, *config.defaults.user_quotas]:
        patterns += rule.models or []
    for profile in config.models:
        patterns += profile.match
    # Priced models, so spend per model is readable (the label set stays bounded).
    patterns += list(config.pricing.models)
    return patterns


class _QuotaCollector(Collector):
    """Quota gauges from the latest snapshot, which the /metrics handler refreshes first."""

    def __init__(self) -> None:
        self.samples: list[QuotaSample] = []

    def collect(self) -> Iterator[Metric]:
        labels = ["team", "metric", "window", "scope"]
        families = {
            "limit": GaugeMetricFamily(
                "gateway_quota_limit", "Configured limit of a quota rule.", labels=labels
            ),
            "used": GaugeMetricFamily(
                "gateway_quota_used", "Settled usage in the current window.", labels=labels
            ),
            "reserved": GaugeMetricFamily(
                "gateway_quota_reserved",
                "Reserved by requests in flight in the current window.",
                labels=labels,
            ),
            "remaining": GaugeMetricFamily(
                "gateway_quota_remaining", "Left in the current window.", labels=labels
            ),
        }
        for s in self.samples:
            values = [s.team, s.metric, s.window, s.scope]
            families["limit"].add_metric(values, s.limit)
            families["used"].add_metric(values, s.used)
            families["reserved"].add_metric(values, s.reserved)
            families["remaining"].add_metric(values, max(0, s.limit - s.used - s.reserved))
        yield from families.values()

    def describe(self) -> Iterator[Metric]:
        return iter(())


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests",
            "Requests handled, by team, model, endpoint, status class and cache result.",
            ["team", "model", "endpoint", "status_class", "cache"],
            registry=r,
        )
        self.tokens = Counter(
            "gateway_tokens",
            "Tokens reported by the upstream, by endpoint (the API, or batches and "
            "responses_background for work settled when it finishes) and kind (prompt, "
            "cached_prompt, completion, reasoning). Reasoning tokens are part of completion "
            "tokens.",
            ["team", "model", "endpoint", "kind"],
            registry=r,
        )
        self.saved_tokens = Counter(
            "gateway_cache_saved_tokens",
            "Tokens not spent upstream because a cache hit answered, by endpoint and kind.",
            ["team", "model", "endpoint", "kind"],
            registry=r,
        )
        self.cost = Counter(
            "gateway_cost_usd",
            "Spend in USD at the configured prices (`pricing`), from settled usage: what the "
            "upstream reported, or what was charged for a request its client left early. "
            "Requests for models without a price add nothing.",
            ["team", "model"],
            registry=r,
        )
        self.saved_cost = Counter(
            "gateway_cache_saved_usd",
            "USD not spent upstream because a cache hit answered, at the configured prices.",
            ["team", "model"],
            registry=r,
        )
        self.quota_rejections = Counter(
            "gateway_quota_rejections",
            "Requests refused (429) by a quota rule, by reason: exhausted (settled usage left "
            "too little), congested (requests in flight held the budget for the whole queue "
            "timeout), concurrency (the team's cap on requests in flight).",
            ["team", "metric", "reason"],
            registry=r,
        )
        self.quota_queue_wait = Histogram(
            "gateway_quota_queue_wait_seconds",
            "Time congested requests waited for reservations of their team to settle.",
            ["team"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.quota_queued = Gauge(
            "gateway_quota_queued_requests",
            "Requests waiting in this replica for their team's reservations to settle.",
            ["team"],
            registry=r,
        )
        self.quota_clamps = Counter(
            "gateway_quota_clamps",
            "Requests whose output limit was lowered to what a quota rule had left.",
            ["team", "metric"],
            registry=r,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Total time from request to the last byte sent.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds",
            "Time spent waiting on and reading from the upstream.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "The gateway's own share of a request: total minus upstream time.",
            ["endpoint"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.time_to_first_byte = Histogram(
            "gateway_stream_time_to_first_byte_seconds",
            "Time from request to the first bytes of a streamed response.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Upstream failures by kind (connect, timeout, status_4xx, status_5xx, stream_cut).",
            ["kind"],
            registry=r,
        )
        self.store_errors = Counter(
            "gateway_store_errors",
            "Store calls that failed or timed out, by operation.",
            ["operation"],
            registry=r,
        )
        self.quota_state_lost = Counter(
            "gateway_quota_state_resets",
            "Times the quota Redis was found without its marker key (flushed, or restarted "
            "without persistence): counters were lost and budgets reset.",
            registry=r,
        )
        self.store_fallbacks = Counter(
            "gateway_store_fallbacks",
            "Quota decisions taken without the store, by on_error mode (local, open, closed).",
            ["mode"],
            registry=r,
        )
        self.cache_lookups = Counter(
            "gateway_cache_lookups",
            "Cache lookups by result (hit, miss, bypass, error).",
            ["result"],
            registry=r,
        )
        self.inflight = Gauge(
            "gateway_inflight_requests", "Requests being handled right now.", registry=r
        )
        self.open_background = Gauge(
            "gateway_open_background_total",
            "Background responses reserved and not yet settled, as the last reconciler poll saw.",
            ["team"],
            registry=r,
        )
        self.open_batches = Gauge(
            "gateway_open_batches",
            "Batches reserved and not yet settled, as the last reconciler poll saw.",
            ["team"],
            registry=r,
        )
        self.reconciler_errors = Counter(
            "gateway_reconciler_errors",
            "Reconciler polls of an open job that failed (store or upstream trouble).",
            registry=r,
        )
        self.config_reloads = Counter(
            "gateway_config_reloads",
            "Configuration reloads by result (success, failure).",
            ["result"],
            registry=r,
        )
        self.config_loaded = Gauge(
            "gateway_config_last_reload_success_timestamp_seconds",
            "When the configuration in force was loaded.",
            registry=r,
        )
        self.build_info = Gauge("gateway_build_info", "Build information.", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)
        self.config_loaded.set(time.time())
        self.quota = _QuotaCollector()
        r.register(self.quota)
        for result in ("hit", "miss", "bypass", "error"):
            self.cache_lookups.labels(result=result)
        for result in ("success", "failure"):
            self.config_reloads.labels(result=result)
        for kind in UPSTREAM_ERROR_KINDS:
            self.upstream_errors.labels(kind=kind)
        for operation in STORE_OPERATIONS:
            self.store_errors.labels(operation=operation)
        for mode in STORE_FALLBACK_MODES:
            self.store_fallbacks.labels(mode=mode)
        self.model_label = ModelLabels([])
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *label_values: str) -> Any:
        """``metric.labels(*label_values)``, remembered: prometheus-client validates and locks
        on every ``labels()`` call, which showed up in the hot path's profile. The label sets
        are bounded (see the module docstring), so the memo is too."""
        key = (id(metric), label_values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*label_values)
        return found

    def count_usage(self, counter: Any, team: str, model: str, endpoint: str, usage: Usage) -> None:
        """Add a usage to ``tokens`` or ``saved_tokens``, one series per kind of token."""
        for kind, value in (
            ("prompt", usage.prompt_tokens),
            ("cached_prompt", usage.cached_prompt_tokens),
            ("completion", usage.completion_tokens),
            ("reasoning", usage.reasoning_tokens),
        ):
            if value:
                self.child(counter, team, model, endpoint, kind).inc(value)

    def configure(self, config: GatewayConfig) -> None:
        """Called at start and on every reload: the label sets follow the config. The quota
        counters get a series per team and metric of its rules (a team can only be refused or
        clamped by a rule it has); series of teams a reload removed stay, as counters do."""
        self.model_label = ModelLabels(model_patterns(config))
        for team in config.teams:
            rules = [*config.quota_rules(team), *config.user_quota_rules(team)]
            metrics = {rule.metric for rule in rules}
            for metric in sorted(metrics):
                for reason in ("exhausted", "congested"):
                    self.quota_rejections.labels(team=team, metric=metric, reason=reason)
                self.quota_clamps.labels(team=team, metric=metric)
            if config.max_concurrent(team) is not None:
                self.quota_rejections.labels(
                    team=team, metric="concurrent_requests", reason="concurrency"
                )
            if metrics or config.max_concurrent(team) is not None:
                self.quota_queued.labels(team=team)
