"""The Grafana dashboard and the Prometheus alert rules in grafana/, checked three ways.

1. As files: the dashboard JSON is what grafana/dashboard.py generates, the Helm chart ships
   byte-identical copies, and the JSON follows the conventions an importable dashboard needs
   (datasource variable first, ``${datasource}`` everywhere, unique ids, a grid that fits,
   units and thresholds). Every ``gateway_*`` name in an expression is one the gateway exposes.
2. With promtool: ``check rules`` and the rule unit tests in grafana/alerts*.test.yaml, which
   must show every alert both firing and not firing.
3. Live: a real Prometheus scrapes two in-process gateways (one healthy, one whose Redis is
   unreachable) while the official openai SDK drives mixed traffic through them; then every
   dashboard query and every alert expression goes through Prometheus's HTTP API. Each must
   parse, each panel must return data, and the alerts whose conditions the traffic creates
   must be the ones that hold. ``promtool check metrics`` lints a real scrape. The Spend row
   and the budget alert have their own live test: two replicas on one Redis, priced models and
   monthly cost budgets, the values checked against the spend computed from the responses.

Prometheus and promtool come from Debian's ``prometheus`` package (``make test`` installs it):
without them the promtool and live tests skip locally and fail when ``CI`` is set.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from gateway.metrics import Metrics, QuotaSample
from tests.support.gateway_proc import RunningGateway, token
from tests.support.prometheus_proc import (
    MISSING,
    PrometheusProcess,
    binaries,
    run_promtool,
)
from tests.support.redis_proc import RedisProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "gateway.json"
ALERTS = GRAFANA / "alerts.yaml"
# alerts.month-end.test.yaml evaluates hourly (a month's end is 43,000 minutes from time 0).
ALERT_TESTS = [GRAFANA / "alerts.test.yaml", GRAFANA / "alerts.month-end.test.yaml"]
HELM_FILES = ROOT / "helm" / "gateway" / "files"

PANEL_TYPES = {"timeseries", "stat", "bargauge", "gauge", "table", "row"}
SEVERITIES = {"critical", "warning", "info"}
ZERO = " or on() vector(0)"  # grafana/dashboard.py: "no series" means "no event", shown as 0
JOB = "gateway"


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def load_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return found


def require_prometheus() -> tuple[str, str]:
    found = binaries()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(MISSING, pytrace=False)
        pytest.skip(MISSING)
    return found


# --- 1. the files ---------------------------------------------------------------------------------


def test_dashboard_json_is_what_the_generator_builds() -> None:
    spec = importlib.util.spec_from_file_location("grafana_dashboard", GRAFANA / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == DASHBOARD.read_text(), "run: python grafana/dashboard.py"


def test_helm_chart_ships_copies_of_the_dashboards_and_alerts() -> None:
    assert (HELM_FILES / "alerts.yaml").read_bytes() == ALERTS.read_bytes()
    ours = {p.name: p.read_bytes() for p in (GRAFANA / "dashboards").glob("*.json")}
    shipped = {p.name: p.read_bytes() for p in (HELM_FILES / "dashboards").glob("*.json")}
    assert ours and shipped == ours


def test_dashboard_follows_the_import_conventions() -> None:
    d = load_dashboard()
    assert d["uid"] == "gateway-overview"
    assert d["title"] == "Gateway / Overview"
    assert d["schemaVersion"] >= 39
    assert d["id"] is None  # importable into any Grafana
    variables = d["templating"]["list"]
    assert [v["name"] for v in variables] == ["datasource", "job", "team", "model"]
    assert variables[0]["type"] == "datasource" and variables[0]["query"] == "prometheus"
    for var in variables[1:]:
        assert var["type"] == "query"
        assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert var["definition"] == var["query"]["query"]
        assert var["includeAll"] and var["allValue"] == ".*"
    assert variables[2]["definition"].startswith("label_values(gateway_requests_total")
    assert variables[2]["definition"].endswith(", team)")
    assert variables[3]["definition"].endswith(", model)")

    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    occupied: dict[tuple[int, int], str] = {}
    for panel in panels(d):
        title = panel["title"]
        assert panel["type"] in PANEL_TYPES, title
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"}, title
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, title
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in occupied, f"{title} overlaps {occupied[(x, y)]}"
                occupied[(x, y)] = title
        if panel["type"] == "row":
            assert grid["w"] == 24 and grid["h"] == 1, title
            continue
        assert panel["description"], title
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["unit"], title
        thresholds = defaults["thresholds"]
        assert thresholds["mode"] == "absolute", title
        values = [s["value"] for s in thresholds["steps"]]
        assert values[0] is None and values[1:] == sorted(values[1:]), title
        # Values with a good and a bad side carry thresholds: gauges, and stats of errors,
        # success, quota refusals, overhead and the store.
        judged = re.search(
            r"(?i)success|5xx|error|429 ratio|overhead p99|without the store|failure", title
        )
        if panel["type"] in {"gauge", "bargauge"} or (panel["type"] == "stat" and judged):
            assert len(values) >= 2, f"{title}: no thresholds"
        if defaults["unit"] == "percentunit" and panel["type"] != "timeseries":
            assert defaults.get("min") == 0 and defaults.get("max") == 1, title
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), title
        for t in panel["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
            assert t["expr"].strip(), title
    rows = [p["title"] for p in panels(d) if p["type"] == "row"]
    assert rows == [
        "Traffic",
        "Tokens and reasoning",
        "Spend",
        "Quota use per team",
        "Cache",
        "Latency",
        "Errors and 429s",
        "Store health",
    ]
    types = {p["type"] for p in panels(d)}
    assert {"bargauge", "stat", "timeseries", "table"} <= types


TARGET_LABELS = {"job", "instance", "namespace"}  # added by Prometheus (and the Operator)


def exposed_labels() -> dict[str, set[str]]:
    """Every sample name the gateway can expose -> its label names."""
    metrics = Metrics()
    metrics.quota.samples = [QuotaSample("t", "requests", "day", "*", 1, 0, 0)]
    found: dict[str, set[str]] = {}
    for family in metrics.registry.collect():  # the quota gauges come with labelled samples
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    for wrapper in vars(metrics).values():  # labelled counters have no samples before use
        if not isinstance(wrapper, MetricWrapperBase):
            continue
        labels = set(wrapper._labelnames)
        if wrapper._type == "counter":
            found[wrapper._name + "_total"] = labels
        elif wrapper._type == "histogram":
            found[wrapper._name + "_bucket"] = labels | {"le"}
            found[wrapper._name + "_sum"] = found[wrapper._name + "_count"] = labels
        else:
            found[wrapper._name] = labels
    return found


def row_titles(dashboard: dict[str, Any], row: str) -> set[str]:
    """Titles of the panels under the row titled ``row`` (up to the next row)."""
    found: set[str] = set()
    current = None
    for panel in panels(dashboard):
        if panel["type"] == "row":
            current = panel["title"]
        elif current == row:
            found.add(panel["title"])
    return found


SPEND_ROW = "Spend"  # covered by test_spend_row_and_budget_alert_against_a_real_prometheus


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) for every query of the dashboard: panels, annotations."""
    d = load_dashboard()
    found = [(p["title"], t["expr"]) for p in panels(d) for t in p.get("targets", [])]
    found += [
        (f"annotation {a['name']}", a["expr"]) for a in d["annotations"]["list"] if "expr" in a
    ]
    return found


def test_expressions_use_only_exposed_metrics_labels_and_counters() -> None:
    exposed = exposed_labels()
    exprs = dashboard_exprs() + [(r["alert"], r["expr"]) for r in load_rules()]
    exprs += [(v["name"], v["definition"]) for v in load_dashboard()["templating"]["list"][1:]]
    for where, expr in exprs:
        names = re.findall(r"\bgateway_[a-z_]+", expr)
        for name in names:
            assert name in exposed, f"{where}: {name} is not a metric of gateway/metrics.py"
        # A misspelt label matched against `.*` (the "All" value) would silently match
        # everything, so label names are checked here, per metric.
        for name, matchers in re.findall(r"\b(gateway_[a-z_]+)\{([^}]*)\}", expr):
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
                assert label in exposed[name] | TARGET_LABELS, f"{where}: {name} has no {label}"
        known = set().union(TARGET_LABELS, *(exposed[n] for n in names))
        for group in re.findall(r"\b(?:by|on|ignoring|without)\s*\(([^)]*)\)", expr):
            for label in filter(None, (part.strip() for part in group.split(","))):
                assert label in known, f"{where}: no metric of the expression has {label}"
        label_values = re.fullmatch(r"label_values\((.*), (\w+)\)", expr)
        if label_values:
            assert label_values[2] in known, where
        for name in re.findall(r"\b(?:rate|increase)\((\w+)", expr):
            assert name.endswith(("_total", "_bucket", "_sum", "_count")), f"{where}: {name}"
    for where, expr in dashboard_exprs():
        windows = set(re.findall(r"\[([^\]]+)\]", expr))
        assert windows <= {"$__rate_interval", "$__range", "$__interval", "1d"}, (where, windows)
        # The one fixed window: the spend forecasts fit the last day, as the budget alert.
        fits = re.findall(r"\b(predict_linear|deriv)\((\w+)\{[^}]*\}\[1d\]", expr)
        assert expr.count("[1d]") == len(fits), where
        assert all(name == "gateway_quota_used" for _, name in fits), where


def test_alert_rules_are_complete_and_each_is_unit_tested_both_ways() -> None:
    rules = load_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    firing: set[str] = set()
    silent: set[str] = set()
    cases = [case for f in ALERT_TESTS for case in yaml.safe_load(f.read_text())["tests"]]
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert firing == set(names), set(names) ^ firing
    assert silent == set(names), set(names) ^ silent
    issue_metrics = {
        "gateway_quota_used",
        "gateway_quota_reserved",
        "gateway_quota_limit",
        "gateway_quota_rejections_total",
        "gateway_upstream_errors_total",
        "gateway_store_fallbacks_total",
        "gateway_store_errors_total",
        "gateway_overhead_seconds_bucket",
    }
    used = {n for r in rules for n in re.findall(r"\bgateway_[a-z_]+", r["expr"])}
    assert issue_metrics <= used, issue_metrics - used


# --- 2. promtool ----------------------------------------------------------------------------------


async def test_promtool_check_rules() -> None:
    require_prometheus()
    code, out = await run_promtool("check", "rules", str(ALERTS))
    assert code == 0, out
    assert f"SUCCESS: {len(load_rules())} rules found" in out, out


async def test_promtool_rule_unit_tests_pass() -> None:
    require_prometheus()
    code, out = await run_promtool("test", "rules", *(f.name for f in ALERT_TESTS), cwd=GRAFANA)
    assert code == 0 and out.count("SUCCESS") == len(ALERT_TESTS), out


# --- 3. live: real Prometheus, real gateways, real traffic ----------------------------------------

MESSAGES = [{"role": "user", "content": "hello there"}]
TEAMS: dict[str, Any] = {
    "ml": {
        "models": ["o3*", "gpt-4o*", "text-embedding-*"],
        "quotas": [{"metric": "completion_tokens", "limit": 1_000_000, "window": "day"}],
    },
    # Three requests a day, and few enough output tokens that every grant is lowered (clamped).
    "web": {
        "models": ["gpt-4o-mini"],
        "quotas": [
            {"metric": "requests", "limit": 3, "window": "day"},
            {"metric": "completion_tokens", "limit": 1000, "window": "day"},
        ],
    },
    # Limit 0 blocks the metric: the quota panels and alerts must leave it out.
    "frozen": {
        "models": ["gpt-4o-mini"],
        "quotas": [{"metric": "requests", "limit": 0, "window": "day"}],
    },
}

# Panels whose bare expression (without the `or on() vector(0)` fallback) may be empty even
# with this traffic, and why. Every other panel must show real series.
MAY_BE_EMPTY = {
    "Prompt tokens cached upstream (range)": "the mock upstream never reports cached tokens",
    "Quota queue: waiting requests and p95 wait": "no request of this traffic waits in a queue",
}

# Alert conditions (the expression, without `for`) the traffic below makes true. The others
# must be false, except the overhead p99, which depends on the machine's load.
EXPECTED_TRUE = {
    "GatewayTeamQuotaNearlyExhausted",  # web used 3 of 3 requests
    "GatewayQuotaRejectionsHigh",  # web: all its requests of phase 2 but one are 429s
    "GatewayUpstreamErrorRateHigh",  # two upstream 500s among ~12 requests in phase 2
    "GatewayServerErrorRateHigh",  # the same requests answered 500
    "GatewayStoreFallbackActive",  # gateway B: Redis unreachable, on_error=local
    "GatewayStoreErrors",  # gateway B
}
UNPREDICTABLE = {"GatewayOverheadP99High"}


def substitute(expr: str, team: str = ".*", model: str = ".*") -> str:
    """What Grafana would send, for a 1 s scrape interval."""
    for var, value in (
        ("$__rate_interval", "1m"),
        ("$__range", "10m"),
        ("$__interval", "15s"),
        ("$job", JOB),
        ("$team", team),
        ("$model", model),
    ):
        expr = expr.replace(var, value)
    assert "$" not in expr, expr
    return expr


async def drive(gw_a: RunningGateway, gw_b: RunningGateway, phase: int) -> None:
    """One round of mixed traffic; both phases create the same series, so rates move."""
    ml = openai.AsyncOpenAI(base_url=gw_a.url, api_key=token("ml"), max_retries=0)
    web = openai.AsyncOpenAI(base_url=gw_a.url, api_key=token("web"), max_retries=0)
    degraded = openai.AsyncOpenAI(base_url=gw_b.url, api_key=token("ml"), max_retries=0)
    try:
        await ml.chat.completions.create(model="o3-mini", messages=MESSAGES)  # reasoning
        stream = await ml.chat.completions.create(
            model="o3-mini",
            messages=MESSAGES,
            stream=True,
            extra_headers={"x-mock-chunk-delay-ms": "2"},
        )
        async for _ in stream:
            pass
        for _ in range(2):  # deterministic: a miss, then hits (both hits in phase 2)
            await ml.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, temperature=0, max_tokens=50
            )
        await ml.embeddings.create(model="text-embedding-3-small", input="hello")
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                await ml.chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-mock-status": "500"}
                )
        with pytest.raises(openai.PermissionDeniedError):  # a 4xx that is not a quota 429
            await web.chat.completions.create(model="o3-mini", messages=MESSAGES)
        if phase == 1:
            for _ in range(3):
                await web.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        for _ in range(1 if phase == 1 else 2):
            with pytest.raises(openai.RateLimitError):
                await web.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        # Gateway B: every quota decision and cache call meets the unreachable Redis.
        await degraded.chat.completions.create(model="o3-mini", messages=MESSAGES)
        await degraded.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, temperature=0, max_tokens=50
        )
    finally:
        for client in (ml, web, degraded):
            await client.close()


async def queries_with_data(
    prom: PrometheusProcess, exprs: list[tuple[str, str]], one_team: str
) -> dict[str, str]:
    """Every query parses and returns data; the same query for one team parses too. Returns
    the panels whose bare expression (without the ZERO fallback) is empty: where -> query."""
    empty_bare: dict[str, str] = {}
    for where, expr in exprs:
        query = substitute(expr)
        answer = await prom.query(query)
        assert answer["status"] == "success", (where, query, answer)
        result = answer["data"]["result"]
        if where.startswith("annotation"):
            continue  # an annotation marks events; none happened
        assert result, f"{where}: no data for {query}"
        if expr.endswith(ZERO):
            bare = await prom.vector(substitute(expr.removesuffix(ZERO)))
            if not bare:
                empty_bare[where] = query
        one = await prom.query(substitute(expr, team=one_team, model="gpt-4o-mini"))
        assert one["status"] == "success", (where, one)
    return empty_bare


async def scrape_text(gw: RunningGateway) -> str:
    async with aiohttp.ClientSession() as s, s.get(gw.root + "/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def test_dashboard_and_alert_queries_against_a_real_prometheus(
    make_gateway, tmp_path: Path
) -> None:
    require_prometheus()
    started = time.monotonic()
    fast_quota_gauges = {"quota_refresh_seconds": 0.1}  # read at every 1 s scrape
    gw_a = await make_gateway(teams=TEAMS, metrics=fast_quota_gauges)
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    gw_b = await make_gateway(
        teams=TEAMS,
        metrics=fast_quota_gauges,
        store={"redis_url": dead_redis, "timeout_seconds": 0.2, "on_error": "local"},
    )
    prom = PrometheusProcess(
        tmp_path, [f"127.0.0.1:{gw_a.port}", f"127.0.0.1:{gw_b.port}"], job=JOB
    )
    await prom.start()
    try:
        # A first scrape before any traffic: the pre-initialised series start at 0.
        await prom.wait_scraped_after(time.time())
        await drive(gw_a, gw_b, phase=1)
        await prom.wait_scraped_after(time.time())
        await drive(gw_a, gw_b, phase=2)
        # Two scrapes after the last request: every series has two samples with its final value.
        await prom.wait_scraped_after(await prom.wait_scraped_after(time.time()))
        traffic_done = time.monotonic()

        # promtool lints what the gateways really expose.
        for gw in (gw_a, gw_b):
            code, out = await run_promtool(
                "check", "metrics", stdin=(await scrape_text(gw)).encode()
            )
            assert code == 0 and not out.strip(), f"promtool check metrics:\n{out}"

        # The variables' label_values queries, through the label API Grafana uses.
        for label, match, expected in (
            ("job", "gateway_build_info", {JOB}),
            ("team", f'gateway_requests_total{{job=~"{JOB}"}}', {"ml", "web"}),
            ("model", f'gateway_requests_total{{job=~"{JOB}", team=~".*"}}', {"o3-mini"}),
        ):
            answer = await prom.api(f"label/{label}/values", [("match[]", match)])
            assert answer["status"] == "success", answer
            assert expected <= set(answer["data"]), (label, answer["data"])

        # Every dashboard query parses and returns data (the Spend row has its own test).
        d = load_dashboard()
        spend = row_titles(d, SPEND_ROW)
        exprs = [(where, expr) for where, expr in dashboard_exprs() if where not in spend]
        empty_bare = await queries_with_data(prom, exprs, one_team="web")
        assert set(empty_bare) <= set(MAY_BE_EMPTY), empty_bare

        # A few values the traffic fixes exactly.
        by_title = {p["title"]: p for p in panels(d)}

        async def result_of(title: str, ref: int = 0) -> list[dict[str, Any]]:
            return await prom.vector(substitute(by_title[title]["targets"][ref]["expr"]))

        shares = {
            (r["metric"]["team"], r["metric"]["metric"]): float(r["value"][1])
            for r in await result_of("Quota use (% of limit)")
        }
        assert shares[("web", "requests")] == 1.0, shares
        assert 0 < shares[("web", "completion_tokens")] < 0.1, shares
        assert "frozen" not in {team for team, _ in shares}, shares
        (replicas,) = await result_of("Replicas by version")
        assert replicas["value"][1] == "2"
        kinds = {r["metric"]["kind"] for r in await result_of("Tokens/s by kind")}
        assert {"prompt", "completion", "reasoning"} <= kinds
        lookups = {r["metric"]["result"] for r in await result_of("Cache lookups/s by result")}
        assert lookups == {"hit", "miss", "bypass", "error"}
        # Every mode has a series from the start (at 0); only the configured one moved.
        modes = {
            r["metric"].get("mode"): float(r["value"][1])
            for r in await result_of("Quota decisions without the store/s by mode")
        }
        assert set(modes) == {"local", "open", "closed"}, modes
        assert modes["local"] > 0 and modes["open"] == modes["closed"] == 0, modes

        # Every alert expression parses; exactly the expected conditions hold.
        holding = set()
        for rule in load_rules():
            answer = await prom.query(rule["expr"])
            assert answer["status"] == "success", (rule["alert"], answer)
            if answer["data"]["result"]:
                holding.add(rule["alert"])
        assert holding - UNPREDICTABLE == EXPECTED_TRUE
        (web_quota,) = await prom.vector(
            next(r["expr"] for r in load_rules() if r["alert"] == "GatewayTeamQuotaNearlyExhausted")
        )
        assert web_quota["metric"]["team"] == "web" and web_quota["metric"]["metric"] == "requests"
    finally:
        prom.stop()
    elapsed = time.monotonic() - started
    print(
        f"prometheus + traffic {traffic_done - started:.1f}s, "
        f"queries {elapsed - (traffic_done - started):.1f}s"
    )
    assert elapsed < 30, f"took {elapsed:.1f}s"


# --- 3b. live: the Spend row and the budget alert ---------------------------------------------

PRICE = {"input": 0.15, "cached_input": 0.075, "output": 0.60}  # USD per 1M tokens
SPEND_TEAMS: dict[str, Any] = {
    # $250 a month, of which this traffic spends thousandths of a cent: its forecast lasts.
    "finance": {
        "models": ["gpt-4o-mini"],
        "quotas": [{"metric": "cost_usd", "limit": 250, "window": "month"}],
    },
    # A cent a month: this traffic spends a quarter of it in seconds, so at that rate it runs
    # out within the minute.
    "lab": {
        "models": ["gpt-4o-mini"],
        "quotas": [{"metric": "cost_usd", "limit": 0.01, "window": "month"}],
    },
    # Budget 0 blocks cost: left out of the shares, forecasts and the alert.
    "blocked": {
        "models": ["gpt-4o-mini"],
        "quotas": [{"metric": "cost_usd", "limit": 0, "window": "month"}],
    },
}
BUDGETS = {"finance": 250.0, "lab": 0.01, "blocked": 0.0}


def price_of(usage: Any) -> float:
    """USD of one response's usage at PRICE."""
    details = getattr(usage, "prompt_tokens_details", None)
    cached = (getattr(details, "cached_tokens", None) or 0) if details else 0
    return (
        float(
            (usage.prompt_tokens - cached) * PRICE["input"]
            + cached * PRICE["cached_input"]
            + usage.completion_tokens * PRICE["output"]
        )
        / 1e6
    )


@dataclass
class Spend:
    """What the responses the clients received cost, per team: spent upstream, and saved by
    cache hits (``x-gateway-cache: hit``)."""

    spent: dict[str, float] = field(default_factory=lambda: dict.fromkeys(BUDGETS, 0.0))
    saved: dict[str, float] = field(default_factory=lambda: dict.fromkeys(BUDGETS, 0.0))

    def add(self, other: Spend) -> None:
        for team in BUDGETS:
            self.spent[team] += other.spent[team]
            self.saved[team] += other.saved[team]


async def drive_spend(gateways: list[RunningGateway], phase: int) -> Spend:
    """One round on both replicas: finance sends cacheable requests (a miss, then hits) and
    small uncacheable ones; lab sends large ones. Both phases move every series."""
    spend = Spend()

    async def ask(gw: RunningGateway, team: str, **kw: Any) -> None:
        client = openai.AsyncOpenAI(base_url=gw.url, api_key=token(team), max_retries=0)
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=MESSAGES, **kw
            )
        finally:
            await client.close()
        usage = raw.parse().usage
        assert usage is not None
        ledger = spend.saved if raw.headers.get("x-gateway-cache") == "hit" else spend.spent
        ledger[team] += price_of(usage)

    for _ in range(2):  # phase 1: a miss, then a hit; phase 2: two hits
        await ask(gateways[0], "finance", temperature=0, max_tokens=5)
    for gw in gateways:
        await ask(gw, "finance", max_tokens=5)
        await ask(
            gw,
            "lab",
            max_completion_tokens=1000,
            extra_headers={"x-mock-completion-tokens": "1000"},
        )
    assert spend.saved["finance"] > 0 and spend.spent["lab"] > 0, (phase, spend)
    return spend


def seconds_left_in_month(at: float) -> float:
    moment = dt.datetime.fromtimestamp(at, dt.UTC)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp() - at


async def test_spend_row_and_budget_alert_against_a_real_prometheus(
    make_gateway, redis_server: RedisProcess, tmp_path: Path
) -> None:
    """Needs the pricing engine (issue 14): `pricing`, cost_usd rules, the cost counters."""
    require_prometheus()
    started = time.monotonic()
    shared = {
        "teams": SPEND_TEAMS,
        "pricing": {"models": {"gpt-4o-mini*": PRICE}},
        "metrics": {"quota_refresh_seconds": 0.1},
        "store": {"redis_url": redis_server.url, "key_prefix": "s" + uuid.uuid4().hex[:10]},
    }
    gateways = [await make_gateway(**shared) for _ in range(2)]  # two replicas, one store
    prom = PrometheusProcess(tmp_path, [f"127.0.0.1:{gw.port}" for gw in gateways], job=JOB)
    await prom.start()
    try:
        await prom.wait_scraped_after(time.time())
        total = await drive_spend(gateways, phase=1)
        await prom.wait_scraped_after(time.time())
        phase2 = await drive_spend(gateways, phase=2)
        total.add(phase2)
        await prom.wait_scraped_after(await prom.wait_scraped_after(time.time()))

        d = load_dashboard()
        spend_panels = row_titles(d, SPEND_ROW)
        assert len(spend_panels) >= 8, spend_panels
        exprs = [(where, expr) for where, expr in dashboard_exprs() if where in spend_panels]
        assert not await queries_with_data(prom, exprs, one_team="lab")

        # Values, all at one moment, against the spend computed from the responses.
        at = time.time()
        by_title = {p["title"]: p for p in panels(d)}

        async def result_of(title: str, ref: int = 0) -> dict[str, float]:
            """team (or team/model) -> value, for a panel's query at ``at``."""
            answer = await prom.query(substitute(by_title[title]["targets"][ref]["expr"]), at)
            assert answer["status"] == "success", (title, answer)
            found: dict[str, float] = {}
            for r in answer["data"]["result"]:
                labels = r["metric"]
                key = "/".join(labels[k] for k in ("team", "model") if k in labels) or "*"
                assert key not in found, (title, key)
                found[key] = float(r["value"][1])
            return found

        spent, saved = total.spent, total.saved
        exact = pytest.approx  # the store counts nano-dollars; gauges and counters are USD
        # Monthly budgets: one row per budget although two replicas report it (max, not sum).
        assert await result_of("Monthly budgets", 0) == BUDGETS
        assert await result_of("Monthly budgets", 1) == exact(spent, abs=1e-8)
        assert await result_of("Monthly budgets", 2) == dict.fromkeys(BUDGETS, 0.0)
        left = {team: max(0.0, BUDGETS[team] - spent[team]) for team in BUDGETS}
        assert await result_of("Monthly budgets", 3) == exact(left, abs=1e-8)
        shares = await result_of("Month to date (% of budget)")
        assert shares == exact({t: spent[t] / BUDGETS[t] for t in ("finance", "lab")}, rel=1e-6)
        assert 0.1 < shares["lab"] < 0.8, shares  # lab's budget is not yet spent
        # The counters the row reads hold what the responses cost, summed over both replicas.
        for metric, expected in (("cost_usd", spent), ("cache_saved_usd", saved)):
            counted = {
                r["metric"]["team"]: float(r["value"][1])
                for r in await prom.vector(
                    f'sum by (team) (gateway_{metric}_total{{job="{JOB}"}})', at
                )
            }
            assert counted == exact({t: v for t, v in expected.items() if v}, abs=1e-8), metric
        # Spend and savings in the range: increase() counts from a series' first sample, taken
        # after phase 1, so at least phase 2; and it extrapolates the few seconds of samples
        # by up to half a scrape interval at the start and 1.1 at the end: from 2 samples 1 s
        # apart, 2.6 times.
        (in_range,) = (await result_of("Spend (range)")).values()
        assert sum(phase2.spent.values()) <= in_range <= 2.6 * sum(spent.values())
        (saved_in_range,) = (await result_of("Saved by the cache (range)")).values()
        assert phase2.saved["finance"] <= saved_in_range <= 2.6 * saved["finance"]
        (burn,) = (await result_of("Burn rate ($/h)")).values()
        assert burn > 0
        by_model = await result_of("Spend by team and model (range)")
        assert set(by_model) == {"finance/gpt-4o-mini", "lab/gpt-4o-mini"}, by_model
        assert set(await result_of("Spend by team and model (range)", 1)) == {"finance/gpt-4o-mini"}
        # The forecasts: lab's trend runs out its cent within the minute, finance's lasts.
        # Near a month's end they extrapolate to the reset only: too close, lab's may last.
        month_left = seconds_left_in_month(at)
        forecast = await result_of("Month-end forecast (% of budget)")
        assert set(forecast) == {"finance", "lab"}, forecast
        assert forecast["finance"] < 1, forecast
        runs_out = await result_of("Monthly budgets", 5)
        assert set(runs_out) == {"finance", "lab"}, runs_out
        assert at * 1000 < runs_out["lab"] < runs_out["finance"], runs_out
        (count,) = (await result_of("Budgets forecast to run out this month")).values()
        alert = next(r for r in load_rules() if r["alert"] == "GatewayTeamBudgetForecastExhausted")
        firing = {r["metric"]["team"] for r in await prom.vector(alert["expr"], at)}
        if month_left > 600:
            assert forecast["lab"] > 1, forecast
            assert count == 1
            # Not on the 1st (UTC): there the fit would straddle the month's reset.
            on_the_first = dt.datetime.fromtimestamp(at, dt.UTC).day == 1
            assert firing == (set() if on_the_first else {"lab"}), firing
        else:
            assert firing <= {"lab"}, firing
    finally:
        prom.stop()
    elapsed = time.monotonic() - started
    print(f"spend: {elapsed:.1f}s, spent {total.spent}, saved {total.saved}")
    assert elapsed < 30, f"took {elapsed:.1f}s"
