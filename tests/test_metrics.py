"""Prometheus metrics as an SRE scrapes them: real gateway, real traffic, parsed exposition."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from gateway.mock import MockUpstream
from gateway.reload import ConfigReloader
from gateway.state import STATE
from tests.support.gateway_proc import RunningGateway, base_config, token

MESSAGES = [{"role": "user", "content": "hi"}]


async def scrape(
    gw: RunningGateway, headers: dict[str, str] | None = None
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(gw.root + "/metrics", headers=headers or {}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_traffic_shows_up_by_team_model_and_token_kind(make_gateway) -> None:
    gw = await make_gateway(
        teams={
            "ml": {
                "models": ["o3*", "gpt-4o*", "*"],
                "quotas": [
                    {"metric": "completion_tokens", "limit": 100_000, "window": "day"},
                    {"metric": "requests", "limit": 3, "window": "day", "models": ["gpt-4o*"]},
                ],
            }
        }
    )
    client = openai.AsyncOpenAI(base_url=gw.url, api_key=token(), max_retries=0)
    await client.chat.completions.create(model="o3-mini", messages=MESSAGES)
    stream = await client.chat.completions.create(model="o3-mini", messages=MESSAGES, stream=True)
    async for _ in stream:
        pass
    await client.chat.completions.create(model="some-unlisted-model", messages=MESSAGES)
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-mock-status": "502"}
        )
    for _ in range(3):
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    await client.close()

    m = await scrape(gw)
    ok = {"team": "ml", "endpoint": "chat_completions", "status_class": "2xx", "cache": "none"}
    assert value(m, "gateway_requests_total", model="o3-mini", **ok) == 2
    assert value(m, "gateway_requests_total", model="other", **ok) == 1  # unlisted model folded
    assert (
        value(m, "gateway_requests_total", model="gpt-4o-mini", **{**ok, "status_class": "4xx"})
        == 1
    )
    assert (
        value(m, "gateway_requests_total", model="gpt-4o-mini", **{**ok, "status_class": "5xx"})
        == 1
    )
    chat = {"team": "ml", "model": "o3-mini", "endpoint": "chat_completions"}
    assert value(m, "gateway_tokens_total", **chat, kind="reasoning") == 32
    assert value(m, "gateway_tokens_total", **chat, kind="completion") == 56
    assert (
        value(m, "gateway_quota_rejections_total", team="ml", metric="requests", reason="exhausted")
        == 1
    )
    assert value(m, "gateway_upstream_errors_total", kind="status_5xx") == 1
    assert (
        value(m, "gateway_quota_limit", team="ml", metric="requests", window="day", scope="gpt-4o*")
        == 3
    )
    assert (
        value(m, "gateway_quota_used", team="ml", metric="requests", window="day", scope="gpt-4o*")
        == 3
    )
    assert (
        value(
            m,
            "gateway_quota_remaining",
            team="ml",
            metric="requests",
            window="day",
            scope="gpt-4o*",
        )
        == 0
    )
    assert (
        value(
            m, "gateway_quota_used", team="ml", metric="completion_tokens", window="day", scope="*"
        )
        == 56 + 12 + 36
    )
    assert value(m, "gateway_overhead_seconds_count", endpoint="chat_completions") == 7
    assert (
        value(m, "gateway_stream_time_to_first_byte_seconds_count", endpoint="chat_completions")
        == 1
    )
    assert value(m, "gateway_inflight_requests") == 0
    assert value(m, "gateway_build_info", version="0.1.0") == 1


async def test_metrics_bearer_token_and_no_secrets(make_gateway) -> None:
    gw = await make_gateway(metrics={"bearer_token": "metrics-secret-123"})
    async with aiohttp.ClientSession() as s, s.get(gw.root + "/metrics") as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_api_key"
    samples = await scrape(gw, {"Authorization": "Bearer metrics-secret-123"})
    text = repr(samples)
    assert "sk-upstream" not in text and "metrics-secret-123" not in text


async def test_bounded_error_and_quota_series_exist_at_zero_from_the_start(
    make_gateway, upstream: MockUpstream, tmp_path: Path
) -> None:
    """Dashboards and alerts (rate, increase, absent) need the series before the first event."""
    requests = [{"metric": "requests", "limit": 5, "window": "day"}]
    tokens = [{"metric": "completion_tokens", "limit": 500, "window": "hour"}]
    teams = {
        "ml": {"quotas": requests + tokens},
        "web": {"quotas": requests},
        "free": {},
        "capped": {"max_concurrent_requests": 2},
    }
    gw: RunningGateway = await make_gateway(teams=teams)
    samples = await scrape(gw)

    def at_zero(name: str, **labels: str) -> bool:
        return samples.get((name, frozenset(labels.items()))) == 0.0

    def labelled(name: str, label: str) -> set[str]:
        return {dict(labels)[label] for n, labels in samples if n == name}

    # Every value the gateway counts (the label sets gateway.metrics declares), exactly those.
    assert metrics.UPSTREAM_ERROR_KINDS and metrics.STORE_OPERATIONS  # nothing vacuous below
    assert metrics.STORE_FALLBACK_MODES
    for kind in metrics.UPSTREAM_ERROR_KINDS:
        assert at_zero("gateway_upstream_errors_total", kind=kind), kind
    for operation in metrics.STORE_OPERATIONS:
        assert at_zero("gateway_store_errors_total", operation=operation), operation
    for mode in metrics.STORE_FALLBACK_MODES:
        assert at_zero("gateway_store_fallbacks_total", mode=mode), mode
    assert labelled("gateway_upstream_errors_total", "kind") == set(metrics.UPSTREAM_ERROR_KINDS)
    assert labelled("gateway_store_errors_total", "operation") == set(metrics.STORE_OPERATIONS)
    assert labelled("gateway_store_fallbacks_total", "mode") == set(metrics.STORE_FALLBACK_MODES)
    for team, metric in (("ml", "requests"), ("ml", "completion_tokens"), ("web", "requests")):
        for reason in ("exhausted", "congested"):
            assert at_zero(
                "gateway_quota_rejections_total", team=team, metric=metric, reason=reason
            )
        assert at_zero("gateway_quota_clamps_total", team=team, metric=metric)
    # A concurrency cap alone: its own rejection series, and the queue gauge of its team.
    assert at_zero(
        "gateway_quota_rejections_total",
        team="capped",
        metric="concurrent_requests",
        reason="concurrency",
    )
    for team in ("ml", "web", "capped"):
        assert at_zero("gateway_quota_queued_requests", team=team), team
    assert "free" not in labelled("gateway_quota_queued_requests", "team")
    # Only the metrics a team's rules can refuse on: bounded by the config.
    assert (
        "gateway_quota_rejections_total",
        frozenset({("team", "web"), ("metric", "completion_tokens"), ("reason", "exhausted")}),
    ) not in samples
    assert not any(
        name == "gateway_quota_rejections_total" and ("team", "free") in labels
        for name, labels in samples
    )

    # A reload that adds a team (what SIGHUP and the file poll run) adds its series at once.
    teams["new"] = {"quotas": tokens}
    path = tmp_path / "gw.yaml"
    path.write_text(json.dumps(base_config(upstream.url, teams=teams)))
    assert ConfigReloader(path, gw.runner.app[STATE], env={}).reload()
    samples = await scrape(gw)
    assert at_zero(
        "gateway_quota_rejections_total", team="new", metric="completion_tokens", reason="exhausted"
    )
    assert at_zero("gateway_quota_clamps_total", team="new", metric="completion_tokens")
