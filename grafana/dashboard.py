"""Generates grafana/dashboards/gateway.json, the "Gateway / Overview" dashboard.

The JSON is the artefact people import; this file is where it is edited. Run

    python grafana/dashboard.py            # rewrite the JSON (and the Helm chart's copy)
    python grafana/dashboard.py --check    # exit 1 if either file is out of date

tests/test_grafana.py fails when the committed JSON differs from what this script builds.

Conventions (after the node-exporter mixin's "Nodes" dashboard):

- the first variable is the Prometheus data source, and every panel and target uses
  ``${datasource}``; then ``job``, ``team`` and ``model``, chained ``label_values`` queries;
- a full-width row per subject, stats 4-6 wide, time series in pairs of 12;
- counters through ``rate(...[$__rate_interval])``, totals over the picked range through
  ``increase(...[$__range])``; every panel declares a unit, ratios are 0-1 ``percentunit``;
  the one fixed window is the spend forecasts' ``[1d]`` fit (``FORECAST_RANGE``), the alert's;
- an expression ending in ``or on() vector(0)`` reads a counter whose label sets only appear
  with the first event (upstream errors, 429s, store fallbacks, cache hits...): no series
  means no event, so the panel shows 0 rather than "No data". Gauges that need configuration
  (quotas) keep "No data" when nothing is configured, which is the truth.

Only the standard library is used, so the script runs with any Python 3.11.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "grafana" / "dashboards" / "gateway.json"
HELM_COPY = ROOT / "helm" / "gateway" / "files" / "dashboards" / "gateway.json"

UID = "gateway-overview"
TITLE = "Gateway / Overview"
DS = {"type": "prometheus", "uid": "${datasource}"}
ZERO = " or on() vector(0)"  # see the module docstring

# Label selectors. `job` scopes everything; `team` and `model` apply where the metric has them.
JOB = 'job=~"$job"'
TEAM = 'job=~"$job", team=~"$team"'
TEAM_MODEL = 'job=~"$job", team=~"$team", model=~"$model"'
RATE = "[$__rate_interval]"
RANGE = "[$__range]"

# Alert thresholds (grafana/alerts.yaml), drawn on the matching panels.
QUOTA_WARN, QUOTA_CRIT = 0.8, 0.95
OVERHEAD_P99_ALERT = 0.1


def steps(*pairs: tuple[float | None, str]) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"value": value, "color": color} for value, color in pairs],
    }


NEUTRAL = steps((None, "blue"))  # no threshold is meaningful for this value
RATIO_GOOD_HIGH = steps((None, "red"), (0.9, "orange"), (0.99, "green"))
RATIO_BAD_HIGH = steps((None, "green"), (0.01, "orange"), (0.05, "red"))
QUOTA_STEPS = steps((None, "green"), (QUOTA_WARN, "orange"), (QUOTA_CRIT, "red"))
OVERHEAD_STEPS = steps((None, "green"), (0.025, "orange"), (OVERHEAD_P99_ALERT, "red"))
ANY_IS_BAD = steps((None, "green"), (1, "red"))


def target(
    expr: str, legend: str = "__auto", *, instant: bool = False, table: bool = False
) -> dict[str, Any]:
    t: dict[str, Any] = {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend,
        "range": not instant,
        "instant": instant,
    }
    if table:
        t["format"] = "table"
    return t


def _defaults(unit: str, thresholds: dict[str, Any], **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"unit": unit, "thresholds": thresholds, "color": {"mode": "thresholds"}}
    d.update(extra)
    return d


def timeseries(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    unit: str,
    *,
    width: int = 12,
    height: int = 8,
    thresholds: dict[str, Any] = NEUTRAL,
    threshold_lines: bool = False,
    minimum: float | None = 0,
    maximum: float | None = None,
    stack: bool = False,
) -> dict[str, Any]:
    custom = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 10 if not stack else 30,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "axisSoftMin": minimum,
        "thresholdsStyle": {"mode": "line" if threshold_lines else "off"},
    }
    defaults = _defaults(unit, thresholds, custom=custom)
    defaults["color"] = {"mode": "palette-classic"}
    if maximum is not None:
        defaults["max"] = maximum
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["mean", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "_size": (width, height),
    }


def stat(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    unit: str,
    *,
    thresholds: dict[str, Any] = NEUTRAL,
    width: int = 4,
    height: int = 4,
    minimum: float | None = None,
    maximum: float | None = None,
    text_mode: str = "auto",
) -> dict[str, Any]:
    defaults = _defaults(unit, thresholds)
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": text_mode,
        },
        "_size": (width, height),
    }


def bargauge(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    unit: str,
    thresholds: dict[str, Any],
    *,
    width: int = 12,
    height: int = 8,
) -> dict[str, Any]:
    return {
        "type": "bargauge",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {
            "defaults": _defaults(unit, thresholds, min=0, max=1),
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "gradient",
            "valueMode": "color",
            "showUnfilled": True,
            "minVizHeight": 16,
            "minVizWidth": 8,
            "namePlacement": "auto",
            "sizing": "auto",
        },
        "_size": (width, height),
    }


def table(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    unit: str,
    renames: dict[str, str],
    *,
    width: int = 12,
    height: int = 8,
    column_units: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``column_units``: a unit for some columns (by their renamed title) other than ``unit``."""
    overrides = [
        {"matcher": {"id": "byName", "options": column}, "properties": [{"id": "unit", "value": u}]}
        for column, u in (column_units or {}).items()
    ]
    return {
        "type": "table",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {"defaults": _defaults(unit, NEUTRAL), "overrides": overrides},
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
        "transformations": [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True}, "renameByName": renames},
            },
        ],
        "_size": (width, height),
    }


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_size": (24, 1)}


def quantiles(metric: str, by: str = "") -> list[dict[str, Any]]:
    group = f"le, {by}" if by else "le"
    prefix = f"{{{{{by}}}}} " if by else ""
    return [
        target(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}{{{JOB}}}{RATE})))",
            f"{prefix}p{round(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def requests(extra: str = "") -> str:
    sel = TEAM_MODEL + (f", {extra}" if extra else "")
    return f"rate(gateway_requests_total{{{sel}}}{RATE})"


def tokens(kinds: str | None, window: str = RATE, metric: str = "gateway_tokens_total") -> str:
    fn = "rate" if window == RATE else "increase"
    sel = TEAM_MODEL if kinds is None else f'{TEAM_MODEL}, kind=~"{kinds}"'
    return f"{fn}({metric}{{{sel}}}{window})"


OK_2XX = requests('status_class="2xx"')
ERR_5XX = requests('status_class="5xx"')
ERRORS = requests('status_class=~"4xx|5xx"')
CACHE_HIT = requests('cache="hit"')
CACHE_LOOKED_UP = requests('cache=~"hit|miss"')

QUOTA_SHARE = (
    "max by (team, metric, window, scope) ("
    f"(gateway_quota_used{{{TEAM}}} + gateway_quota_reserved{{{TEAM}}})"
    f" / (gateway_quota_limit{{{TEAM}}} > 0))"
)
QUOTA_LEGEND = "{{team}} · {{metric}} per {{window}} · {{scope}}"

# Spend. Budgets are quota rules with metric="cost_usd" (their gauges are in USD); the month's
# budget is the rule with window="month", which resets with the UTC calendar month.
COST = f'{TEAM}, metric="cost_usd", window="month"'
BUDGET_LEGEND = "{{team}} · {{scope}}"
# The forecasts fit the last day of settled spend, as GatewayTeamBudgetForecastExhausted does:
# a day takes in a whole working-hours cycle, which a shorter fit would extrapolate over the
# nights. In the first day of a month the fit still sees the last month's samples before the
# reset and forecasts too little; the alert waits for day 2 (grafana/alerts.yaml).
FORECAST_RANGE = "[1d]"
# Seconds until the month's window resets (Prometheus's date functions are UTC, as the window).
MONTH_LEFT = "((days_in_month() - day_of_month() + 1) * 86400 - time() % 86400)"


def cost(metric: str, window: str) -> str:
    fn = "rate" if window == RATE else "increase"
    return f"{fn}({metric}{{{TEAM_MODEL}}}{window})"


def budget(gauge: str) -> str:
    """One value per monthly budget: replicas read the same store, so max, not sum."""
    return f"max by (team, scope) (gateway_quota_{gauge}{{{COST}}})"


SPENT_PER_HOUR = f"sum by (team, model) ({cost('gateway_cost_usd_total', RATE)}) * 3600"
# Settled spend extrapolated to the month's end, plus what requests in flight hold now. The
# fit is on settled spend only: reservations come and go with each request and would make its
# slope jump.
MONTH_END_FORECAST = (
    "max by (team, scope) ("
    f"predict_linear(gateway_quota_used{{{COST}}}{FORECAST_RANGE}, scalar({MONTH_LEFT}))"
    f" + gateway_quota_reserved{{{COST}}})"
)
MONTH_END_SHARE = (
    "max by (team, scope) (("
    f"predict_linear(gateway_quota_used{{{COST}}}{FORECAST_RANGE}, scalar({MONTH_LEFT}))"
    f" + gateway_quota_reserved{{{COST}}}) / (gateway_quota_limit{{{COST}}} > 0))"
)
# What is left over the fitted slope: deriv is the slope of the least-squares line that
# predict_linear extrapolates. Only budgets whose spend grows; limit 0 (blocked) left out.
RUNS_OUT_IN = (
    f"max by (team, scope) (gateway_quota_remaining{{{COST}}}"
    f" and gateway_quota_limit{{{COST}}} > 0)"
    f" / (max by (team, scope) (deriv(gateway_quota_used{{{COST}}}{FORECAST_RANGE})) > 0)"
)
FORECAST_STEPS = steps((None, "green"), (QUOTA_WARN, "orange"), (1, "red"))
USD = "currencyUSD"


def spend_panels() -> list[dict[str, Any]]:
    return [
        row("Spend"),
        stat(
            "Spend (range)",
            "USD spent in the picked range at the configured prices (`pricing`), from settled "
            "usage. Requests for models without a price add nothing.",
            [
                target(
                    f"sum({cost('gateway_cost_usd_total', RANGE)}){ZERO}",
                    "spend",
                    instant=True,
                )
            ],
            USD,
            width=6,
        ),
        stat(
            "Burn rate ($/h)",
            "USD spent per hour at the current rate, all selected teams and models.",
            [
                target(
                    f"(sum({cost('gateway_cost_usd_total', RATE)}) * 3600){ZERO}",
                    "$/h",
                    instant=True,
                )
            ],
            USD,
            width=6,
        ),
        stat(
            "Saved by the cache (range)",
            "USD not spent upstream in the picked range because a cache hit answered, at the "
            "configured prices.",
            [
                target(
                    f"sum({cost('gateway_cache_saved_usd_total', RANGE)}){ZERO}",
                    "saved",
                    instant=True,
                )
            ],
            USD,
            width=6,
        ),
        stat(
            "Budgets forecast to run out this month",
            "Monthly cost budgets (metric cost_usd, window month) that the last day's spend, "
            "extrapolated to the end of the month, exceeds. GatewayTeamBudgetForecastExhausted "
            "fires for those that run out within 3 days.",
            [target(f"count({MONTH_END_SHARE} >= 1){ZERO}", "budgets", instant=True)],
            "short",
            thresholds=ANY_IS_BAD,
            width=6,
        ),
        timeseries(
            "Spend by team and model ($/h)",
            "USD per hour at the configured prices, per team and model label.",
            [target(SPENT_PER_HOUR + ZERO, "{{team}} · {{model}}")],
            USD,
            stack=True,
        ),
        table(
            "Spend by team and model (range)",
            "USD spent, and USD saved by cache hits, per team and model in the picked range.",
            [
                target(
                    f"sum by (team, model) ({cost(metric, RANGE)})",
                    name,
                    instant=True,
                    table=True,
                )
                for metric, name in (
                    ("gateway_cost_usd_total", "spent"),
                    ("gateway_cache_saved_usd_total", "saved"),
                )
            ],
            USD,
            {
                "team": "Team",
                "model": "Model",
                "Value #A": "Spent",
                "Value #B": "Saved by the cache",
            },
        ),
        bargauge(
            "Month to date (% of budget)",
            "Settled spend this month over each monthly cost budget (cost_usd rules per "
            "month). Orange at 80 %, red at 95 %, as the quota alerts, which cover cost rules "
            "too. Budgets of 0 (a blocked team) are left out.",
            [
                target(
                    f"max by (team, scope) (gateway_quota_used{{{COST}}}"
                    f" / (gateway_quota_limit{{{COST}}} > 0))",
                    BUDGET_LEGEND,
                    instant=True,
                )
            ],
            "percentunit",
            QUOTA_STEPS,
        ),
        table(
            "Monthly budgets",
            "Each monthly cost budget: limit, settled spend, reserved by requests in flight, "
            "what is left, the spend forecast at the month's end (the last day's trend, "
            "predict_linear, plus what is reserved now), and when it runs out at that rate "
            "(only budgets whose spend grows; a date after the month's end means it lasts).",
            [
                *(
                    target(budget(name), name, instant=True, table=True)
                    for name in ("limit", "used", "reserved", "remaining")
                ),
                target(MONTH_END_FORECAST, "forecast", instant=True, table=True),
                target(f"(time() + {RUNS_OUT_IN}) * 1000", "runs out", instant=True, table=True),
            ],
            USD,
            {
                "team": "Team",
                "scope": "Models",
                "Value #A": "Budget",
                "Value #B": "Spent",
                "Value #C": "Reserved",
                "Value #D": "Left",
                "Value #E": "Month-end forecast",
                "Value #F": "Runs out",
            },
            column_units={"Runs out": "dateTimeAsIso"},
        ),
        timeseries(
            "Month to date spend against budget",
            "Settled spend this month of each monthly cost budget, and the budget. The spend "
            "drops to 0 when the month resets.",
            [
                target(budget("used"), BUDGET_LEGEND + " spent"),
                target(f"{budget('limit')} > 0", BUDGET_LEGEND + " budget"),
            ],
            USD,
        ),
        timeseries(
            "Month-end forecast (% of budget)",
            "The last day's spend extrapolated to the end of the month (predict_linear), plus "
            "what requests in flight reserve, over the budget. Above 100 % the budget runs out "
            "before the month resets at this rate.",
            [target(MONTH_END_SHARE, BUDGET_LEGEND)],
            "percentunit",
            thresholds=FORECAST_STEPS,
            threshold_lines=True,
        ),
    ]


def panels() -> list[dict[str, Any]]:
    return [
        row("Traffic"),
        stat(
            "Requests/s",
            "Requests handled per second, every status.",
            [target(f"sum({requests()})", "requests/s", instant=True)],
            "reqps",
            width=6,
        ),
        stat(
            "Success ratio (2xx)",
            "Share of requests answered with a 2xx. 4xx include quota refusals (429) and "
            "client mistakes; see the Errors row.",
            [
                target(
                    f"sum({OK_2XX}) / sum({requests()})",
                    "2xx",
                    instant=True,
                )
            ],
            "percentunit",
            thresholds=RATIO_GOOD_HIGH,
            width=6,
            minimum=0,
            maximum=1,
        ),
        stat(
            "In flight",
            "Requests being handled right now, all replicas.",
            [target(f"sum(gateway_inflight_requests{{{JOB}}})", "in flight", instant=True)],
            "short",
            width=6,
        ),
        stat(
            "Replicas by version",
            "Gateway processes reporting, by version (gateway_build_info).",
            [
                target(
                    f"count by (version) (gateway_build_info{{{JOB}}})",
                    "{{version}}",
                    instant=True,
                )
            ],
            "short",
            thresholds=steps((None, "red"), (1, "green")),
            width=6,
            text_mode="value_and_name",
        ),
        timeseries(
            "Requests/s by team",
            "Requests per second per team (all status classes).",
            [target(f"sum by (team) ({requests()})", "{{team}}")],
            "reqps",
            stack=True,
        ),
        timeseries(
            "Requests/s by model",
            "Requests per second per model label. Models outside the configured patterns are "
            "folded into `other`.",
            [target(f"sum by (model) ({requests()})", "{{model}}")],
            "reqps",
            stack=True,
        ),
        timeseries(
            "Requests/s by endpoint and status class",
            "Requests per second per API route and status class.",
            [
                target(
                    f"sum by (endpoint, status_class) ({requests()})",
                    "{{endpoint}} {{status_class}}",
                )
            ],
            "reqps",
        ),
        timeseries(
            "In-flight requests by instance",
            "Requests being handled by each replica (long streams and reasoning calls stay "
            "in flight for minutes).",
            [target(f"sum by (instance) (gateway_inflight_requests{{{JOB}}})", "{{instance}}")],
            "short",
        ),
        row("Tokens and reasoning"),
        stat(
            "Reasoning share (range)",
            "Reasoning tokens over completion tokens in the picked time range. 0 when no "
            "reasoning model answered.",
            [
                target(
                    f"(sum({tokens('reasoning', RANGE)})"
                    f" / sum({tokens('completion', RANGE)})){ZERO}",
                    "reasoning share",
                    instant=True,
                )
            ],
            "percentunit",
            width=6,
            minimum=0,
            maximum=1,
        ),
        stat(
            "Prompt tokens cached upstream (range)",
            "Share of prompt tokens the upstream served from its own prompt cache (billed at a "
            "discount). 0 when it reported none.",
            [
                target(
                    f"(sum({tokens('cached_prompt', RANGE)})"
                    f" / sum({tokens('prompt', RANGE)})){ZERO}",
                    "cached prompt share",
                    instant=True,
                )
            ],
            "percentunit",
            width=6,
            minimum=0,
            maximum=1,
        ),
        stat(
            "Completion tokens (range)",
            "Completion tokens (reasoning included) in the picked time range.",
            [
                target(
                    f"sum({tokens('completion', RANGE)})",
                    "completion tokens",
                    instant=True,
                )
            ],
            "count:tok",
            width=6,
        ),
        stat(
            "Prompt tokens (range)",
            "Prompt tokens in the picked time range.",
            [target(f"sum({tokens('prompt', RANGE)})", "prompt tokens", instant=True)],
            "count:tok",
            width=6,
        ),
        timeseries(
            "Tokens/s by kind",
            "Tokens reported by the upstream. `reasoning` is part of `completion` and "
            "`cached_prompt` is part of `prompt`: do not add them up.",
            [target(f"sum by (kind) ({tokens(None)})", "{{kind}}")],
            "count:tok/s",
        ),
        timeseries(
            "Tokens/s by team",
            "Prompt plus completion tokens per second, per team.",
            [target(f"sum by (team) ({tokens('prompt|completion')})", "{{team}}")],
            "count:tok/s",
            stack=True,
        ),
        timeseries(
            "Tokens/s by model",
            "Prompt plus completion tokens per second, per model label.",
            [target(f"sum by (model) ({tokens('prompt|completion')})", "{{model}}")],
            "count:tok/s",
            stack=True,
        ),
        timeseries(
            "Reasoning share of completion tokens by model",
            "Reasoning tokens over completion tokens, per model: how much of the output a "
            "team pays for is hidden reasoning. Only models that reported reasoning appear.",
            [
                target(
                    f"sum by (model) ({tokens('reasoning')})"
                    f" / sum by (model) ({tokens('completion')})",
                    "{{model}}",
                )
            ],
            "percentunit",
            maximum=1,
        ),
        *spend_panels(),
        row("Quota use per team"),
        bargauge(
            "Quota use (% of limit)",
            "Used plus reserved (in flight) over the limit of each quota rule, in its current "
            "window. Rules with limit 0 (a blocked metric) are left out. Orange at 80 %, red "
            "at 95 %, as the alerts.",
            [target(QUOTA_SHARE, QUOTA_LEGEND, instant=True)],
            "percentunit",
            QUOTA_STEPS,
        ),
        table(
            "Quota rules",
            "Each quota rule in its current window: limit, settled use, reserved by requests "
            "in flight, and what is left. The highest value across replicas.",
            [
                target(
                    f"max by (team, metric, window, scope) (gateway_quota_{name}{{{TEAM}}})",
                    name,
                    instant=True,
                    table=True,
                )
                for name in ("limit", "used", "reserved", "remaining")
            ],
            "short",
            {
                "team": "Team",
                "metric": "Metric",
                "window": "Window",
                "scope": "Models",
                "Value #A": "Limit",
                "Value #B": "Used",
                "Value #C": "Reserved",
                "Value #D": "Remaining",
            },
        ),
        timeseries(
            "Quota use over time",
            "Used plus reserved over the limit of each quota rule. The lines drop to 0 when a "
            "window resets.",
            [target(QUOTA_SHARE, QUOTA_LEGEND)],
            "percentunit",
            thresholds=QUOTA_STEPS,
            threshold_lines=True,
        ),
        timeseries(
            "Output limits lowered by a quota, per second",
            "Requests whose output limit was lowered to what a quota rule had left "
            "(gateway_quota_clamps_total).",
            [
                target(
                    f"sum by (team, metric) (rate(gateway_quota_clamps_total{{{TEAM}}}{RATE}))"
                    + ZERO,
                    "{{team}} {{metric}}",
                )
            ],
            "reqps",
        ),
        row("Cache"),
        stat(
            "Cache hit ratio (range)",
            "Hits over hits plus misses in the picked range (requests the cache could "
            "answer). 0 when nothing was looked up.",
            [
                target(
                    f'sum(increase(gateway_requests_total{{{TEAM_MODEL}, cache="hit"}}{RANGE}))'
                    f" / (sum(increase(gateway_requests_total"
                    f'{{{TEAM_MODEL}, cache=~"hit|miss"}}{RANGE})) > 0){ZERO}',
                    "hit ratio",
                    instant=True,
                )
            ],
            "percentunit",
            width=6,
            height=8,
            minimum=0,
            maximum=1,
        ),
        stat(
            "Tokens saved by the cache (range)",
            "Prompt plus completion tokens not spent upstream because a cache hit answered.",
            [
                target(
                    f"sum({tokens('prompt|completion', RANGE, 'gateway_cache_saved_tokens_total')})"
                    + ZERO,
                    "tokens saved",
                    instant=True,
                )
            ],
            "count:tok",
            width=6,
            height=8,
        ),
        timeseries(
            "Cache lookups/s by result",
            "Every replica exports hit, miss, bypass and error from its start, so this is never "
            "empty. `bypass`: the client asked not to use the cache; `error`: the store failed.",
            [
                target(
                    f"sum by (result) (rate(gateway_cache_lookups_total{{{JOB}}}{RATE}))",
                    "{{result}}",
                )
            ],
            "reqps",
            stack=True,
        ),
        timeseries(
            "Cache hit ratio by team",
            "Hits over hits plus misses, per team.",
            [
                target(
                    f"sum by (team) ({CACHE_HIT}) / sum by (team) ({CACHE_LOOKED_UP}){ZERO}",
                    "{{team}}",
                )
            ],
            "percentunit",
            maximum=1,
        ),
        timeseries(
            "Tokens saved/s by team",
            "Prompt plus completion tokens per second answered from the cache.",
            [
                target(
                    "sum by (team) ("
                    f"{tokens('prompt|completion', metric='gateway_cache_saved_tokens_total')})"
                    + ZERO,
                    "{{team}}",
                )
            ],
            "count:tok/s",
            stack=True,
        ),
        row("Latency"),
        stat(
            "Overhead p99",
            "99th percentile of the gateway's own time per request, all endpoints.",
            [
                target(
                    "histogram_quantile(0.99, sum by (le) "
                    f"(rate(gateway_overhead_seconds_bucket{{{JOB}}}{RATE})))",
                    "p99",
                    instant=True,
                )
            ],
            "s",
            thresholds=OVERHEAD_STEPS,
            width=6,
        ),
        stat(
            "Overhead share of request time",
            "Gateway time over gateway plus upstream time, summed over requests that reached "
            "the upstream.",
            [
                target(
                    f"sum(rate(gateway_overhead_seconds_sum{{{JOB}}}{RATE})) / ("
                    f"sum(rate(gateway_overhead_seconds_sum{{{JOB}}}{RATE}))"
                    f" + sum(rate(gateway_upstream_duration_seconds_sum{{{JOB}}}{RATE})))",
                    "overhead share",
                    instant=True,
                )
            ],
            "percentunit",
            thresholds=RATIO_BAD_HIGH,
            width=6,
            minimum=0,
            maximum=1,
        ),
        stat(
            "Stream time to first byte p95",
            "95th percentile of the time from request to the first bytes of a streamed reply.",
            [
                target(
                    "histogram_quantile(0.95, sum by (le) "
                    f"(rate(gateway_stream_time_to_first_byte_seconds_bucket{{{JOB}}}{RATE})))",
                    "p95",
                    instant=True,
                )
            ],
            "s",
            width=6,
        ),
        stat(
            "Request duration p95",
            "95th percentile of the total time from request to the last byte sent.",
            [
                target(
                    "histogram_quantile(0.95, sum by (le) "
                    f"(rate(gateway_request_duration_seconds_bucket{{{JOB}}}{RATE})))",
                    "p95",
                    instant=True,
                )
            ],
            "s",
            width=6,
        ),
        timeseries(
            "Gateway overhead (p50, p95, p99)",
            "The gateway's own share of a request: total time minus upstream time. The red "
            "line is the GatewayOverheadP99High alert threshold.",
            quantiles("gateway_overhead_seconds_bucket"),
            "s",
            thresholds=OVERHEAD_STEPS,
            threshold_lines=True,
        ),
        timeseries(
            "Upstream time (p50, p95, p99)",
            "Time spent waiting on and reading from the upstream.",
            quantiles("gateway_upstream_duration_seconds_bucket"),
            "s",
        ),
        timeseries(
            "Stream time to first byte (p50, p95, p99)",
            "Time from request to the first bytes of a streamed response: what a chat user "
            "waits before text appears.",
            quantiles("gateway_stream_time_to_first_byte_seconds_bucket"),
            "s",
        ),
        timeseries(
            "Request duration p95 by endpoint",
            "Total time from request to the last byte sent, per API route.",
            [
                target(
                    "histogram_quantile(0.95, sum by (le, endpoint) "
                    f"(rate(gateway_request_duration_seconds_bucket{{{JOB}}}{RATE})))",
                    "{{endpoint}}",
                )
            ],
            "s",
        ),
        row("Errors and 429s"),
        stat(
            "5xx ratio",
            "Share of requests answered with a 5xx (the gateway's or the upstream's).",
            [
                target(
                    f"(sum({ERR_5XX}) / sum({requests()})){ZERO}",
                    "5xx",
                    instant=True,
                )
            ],
            "percentunit",
            thresholds=RATIO_BAD_HIGH,
            width=6,
            minimum=0,
            maximum=1,
        ),
        stat(
            "Upstream error ratio",
            "Upstream failures (connect, timeout, 5xx, cut streams) over requests. Upstream 4xx "
            "are mostly the client's own mistakes and are left out.",
            [
                target(
                    "(sum(rate(gateway_upstream_errors_total"
                    f'{{{JOB}, kind!="status_4xx"}}{RATE}))'
                    f" / sum(rate(gateway_requests_total{{{JOB}}}{RATE}))){ZERO}",
                    "upstream errors",
                    instant=True,
                )
            ],
            "percentunit",
            thresholds=RATIO_BAD_HIGH,
            width=6,
            minimum=0,
            maximum=1,
        ),
        stat(
            "Quota 429 ratio",
            "Requests refused by a quota rule over all requests. Other 4xx are client "
            "mistakes (bad requests, unknown models, denied paths).",
            [
                target(
                    f"(sum(rate(gateway_quota_rejections_total{{{TEAM}}}{RATE}))"
                    f" / sum(rate(gateway_requests_total{{{TEAM}}}{RATE}))){ZERO}",
                    "quota 429s",
                    instant=True,
                )
            ],
            "percentunit",
            thresholds=steps((None, "green"), (0.01, "orange"), (0.1, "red")),
            width=6,
            minimum=0,
            maximum=1,
        ),
        stat(
            "Quota 429s (range)",
            "Requests refused by a quota rule in the picked range.",
            [
                target(
                    f"sum(increase(gateway_quota_rejections_total{{{TEAM}}}{RANGE})){ZERO}",
                    "quota 429s",
                    instant=True,
                )
            ],
            "short",
            width=6,
        ),
        timeseries(
            "4xx and 5xx/s by team",
            "Error responses per second per team and status class.",
            [
                target(
                    f"sum by (team, status_class) ({ERRORS})" + ZERO,
                    "{{team}} {{status_class}}",
                )
            ],
            "reqps",
        ),
        timeseries(
            "Quota 429s/s by team, metric and reason",
            "Requests refused (429) by a quota rule. exhausted: the budget is spent (raise the "
            "limit or wait for the reset); congested: requests in flight held it for the whole "
            "queue timeout; concurrency: the team's cap on requests in flight.",
            [
                target(
                    "sum by (team, metric, reason) "
                    f"(rate(gateway_quota_rejections_total{{{TEAM}}}{RATE})){ZERO}",
                    "{{team}} {{metric}} {{reason}}",
                )
            ],
            "reqps",
        ),
        timeseries(
            "Quota queue: waiting requests and p95 wait",
            "Requests waiting for their team's reservations to settle (instead of a 429), and "
            "how long they waited.",
            [
                target(
                    f"sum by (team) (gateway_quota_queued_requests{{{TEAM}}}){ZERO}",
                    "{{team}} waiting",
                ),
                target(
                    "histogram_quantile(0.95, sum by (team, le) "
                    f"(rate(gateway_quota_queue_wait_seconds_bucket{{{TEAM}}}{RATE}))){ZERO}",
                    "{{team}} p95 wait (s)",
                ),
            ],
            "short",
            width=24,
        ),
        timeseries(
            "Upstream errors/s by kind",
            "connect, timeout, status_4xx, status_5xx, stream_cut.",
            [
                target(
                    f"sum by (kind) (rate(gateway_upstream_errors_total{{{JOB}}}{RATE})){ZERO}",
                    "{{kind}}",
                )
            ],
            "reqps",
            width=24,
        ),
        row("Store health"),
        stat(
            "Store errors/s",
            "Store (Redis) calls that failed or timed out, per second.",
            [
                target(
                    f"sum(rate(gateway_store_errors_total{{{JOB}}}{RATE})){ZERO}",
                    "store errors/s",
                    instant=True,
                )
            ],
            "ops",
            thresholds=steps((None, "green"), (0.001, "red")),
            width=6,
        ),
        stat(
            "Quota decisions without the store (range)",
            "Quota decisions taken locally, unmetered or refused because the store was down, "
            "in the picked range.",
            [
                target(
                    f"sum(increase(gateway_store_fallbacks_total{{{JOB}}}{RANGE})){ZERO}",
                    "fallbacks",
                    instant=True,
                )
            ],
            "short",
            thresholds=ANY_IS_BAD,
            width=6,
        ),
        stat(
            "Config reload failures (range)",
            "Configuration reloads refused in the picked range (the previous config stays in "
            "force).",
            [
                target(
                    "sum(increase(gateway_config_reloads_total"
                    f'{{{JOB}, result="failure"}}{RANGE}))',
                    "failures",
                    instant=True,
                )
            ],
            "short",
            thresholds=ANY_IS_BAD,
            width=6,
        ),
        stat(
            "Oldest config in force",
            "Age of the oldest configuration loaded by any replica.",
            [
                target(
                    f"time() - min(gateway_config_last_reload_success_timestamp_seconds{{{JOB}}})",
                    "age",
                    instant=True,
                )
            ],
            "s",
            width=6,
        ),
        timeseries(
            "Store errors/s by operation",
            "Failed or timed-out store calls by operation (quota_reserve, quota_settle, "
            "quota_settle_lost, quota_peek, cache_*).",
            [
                target(
                    f"sum by (operation) (rate(gateway_store_errors_total{{{JOB}}}{RATE})){ZERO}",
                    "{{operation}}",
                )
            ],
            "ops",
        ),
        timeseries(
            "Quota decisions without the store/s by mode",
            "local: enforced with one replica's memory; open: admitted unmetered; closed: "
            "refused with 503 (store.on_error).",
            [
                target(
                    f"sum by (mode) (rate(gateway_store_fallbacks_total{{{JOB}}}{RATE})){ZERO}",
                    "{{mode}}",
                )
            ],
            "reqps",
        ),
    ]


def layout(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assign ids and grid positions: left to right, wrapping at 24 columns."""
    x = y = row_height = 0
    out = []
    for number, panel in enumerate(items, start=1):
        width, height = panel.pop("_size")
        if panel["type"] == "row" or x + width > 24:
            y += row_height
            x = row_height = 0
        panel = {"id": number, "gridPos": {"h": height, "w": width, "x": x, "y": y}, **panel}
        panel["datasource"] = DS
        if "targets" in panel:
            panel["targets"] = [
                {"refId": chr(ord("A") + i), **t} for i, t in enumerate(panel["targets"])
            ]
        out.append(panel)
        x += width
        row_height = max(row_height, height)
        if panel["type"] == "row":
            y += height
            x = row_height = 0
    return out


def variable(name: str, label: str, query: str, *, all_value: str = ".*") -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor"},
        "refresh": 2,  # on time range change
        "regex": "",
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": all_value,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
    }


def dashboard() -> dict[str, Any]:
    return {
        "uid": UID,
        "title": TITLE,
        "description": "Traffic, tokens, spend, quotas, cache, latency, errors and store health of "
        "the OpenAI team gateway. Generated by grafana/dashboard.py: edit that, not this file.",
        "tags": ["gateway", "openai", "llm"],
        "id": None,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "utc",
        "fiscalYearStartMonth": 0,
        "weekStart": "",
        "liveNow": False,
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                {
                    "datasource": DS,
                    "enable": True,
                    "hide": False,
                    "iconColor": "purple",
                    "name": "Config reloads",
                    "expr": "changes(gateway_config_last_reload_success_timestamp_seconds"
                    f"{{{JOB}}}[$__interval]) > 0",
                    "step": "30s",
                    "titleFormat": "Config reloaded",
                    "textFormat": "{{instance}}",
                },
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "regex": "",
                    "refresh": 1,
                    "hide": 0,
                    "includeAll": False,
                    "multi": False,
                    "options": [],
                },
                variable("job", "Job", "label_values(gateway_build_info, job)"),
                variable("team", "Team", 'label_values(gateway_requests_total{job=~"$job"}, team)'),
                variable(
                    "model",
                    "Model",
                    'label_values(gateway_requests_total{job=~"$job", team=~"$team"}, model)',
                ),
            ]
        },
        "panels": layout(panels()),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        stale = [p for p in (OUTPUT, HELM_COPY) if not p.exists() or p.read_text() != text]
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python grafana/dashboard.py")
        return 1 if stale else 0
    for path in (OUTPUT, HELM_COPY):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
