"""Batches are checked line by line, reserved whole at create and settled once from their
output file (real redis-server, mock upstream, the official SDK)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import openai
import pytest

from gateway.app import RECONCILER
from gateway.mock import MockUpstream
from gateway.state import STATE
from tests.support.gateway_proc import UPSTREAM_KEY, RunningGateway, token
from tests.support.jobs import nothing_reserved, open_jobs, reconcile_until_settled, sample, usage
from tests.support.redis_proc import RedisProcess

BURN = {"x-mock-completion-tokens": "1000"}  # every line would use more than its limit


def rules(completion: int = 100_000) -> list[dict[str, Any]]:
    return [
        {"metric": "completion_tokens", "limit": completion, "window": "day"},
        {"metric": "total_tokens", "limit": 1_000_000, "window": "day"},
        {"metric": "requests", "limit": 1000, "window": "day"},
    ]


def sections(redis_server: RedisProcess, prefix: str | None = None, **team: Any) -> dict[str, Any]:
    return {
        "store": {
            "redis_url": redis_server.url,
            "key_prefix": prefix or "b" + uuid.uuid4().hex[:10],
        },
        "admission": {"reconcile_interval_seconds": 3600},  # tests drive the reconciler
        "teams": {"ml": {"models": ["gpt-4o*"], "quotas": rules(), **team}},
    }


def chat_lines(count: int, model: str = "gpt-4o-mini", **body: Any) -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": f"q{i}"}]} | body,
            }
        ).encode()
        + b"\n"
        for i in range(count)
    )


async def submit(
    gw: RunningGateway, data: bytes, delay_ms: int = 200, headers: dict[str, str] | None = None
) -> openai.types.Batch:
    async with openai.AsyncOpenAI(base_url=gw.url, api_key=token("ml"), max_retries=0) as c:
        file = await c.files.create(file=("in.jsonl", data), purpose="batch")
        return await c.batches.create(
            input_file_id=file.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_headers={**BURN, "x-mock-batch-delay-ms": str(delay_ms), **(headers or {})},
        )


async def output_usage(upstream: MockUpstream, batch_id: str) -> tuple[int, int]:
    """Completion and total tokens the batch's output file reports, summed over its lines."""
    async with openai.AsyncOpenAI(base_url=upstream.url, api_key=UPSTREAM_KEY) as direct:
        batch = await direct.batches.retrieve(batch_id)
        assert batch.output_file_id is not None
        raw = (await direct.files.content(batch.output_file_id)).read()
    lines = [json.loads(line)["response"]["body"]["usage"] for line in raw.splitlines()]
    return sum(u["completion_tokens"] for u in lines), sum(u["total_tokens"] for u in lines)


async def test_a_batch_reserves_whole_and_settles_to_its_output_file(
    make_gateway: Any, redis_server: RedisProcess, upstream: MockUpstream
) -> None:
    gw = await make_gateway(**sections(redis_server))
    batch = await submit(gw, chat_lines(10, max_tokens=100))
    held = await usage(gw)
    assert held["completion_tokens"]["reserved"] >= 1000
    assert held["requests"]["reserved"] == 10
    await reconcile_until_settled(gw)
    completion, total = await output_usage(upstream, batch.id)
    assert completion == 1000  # ten lines cut at their own limit
    after = await usage(gw)
    assert after["completion_tokens"]["used"] == completion
    assert after["total_tokens"]["used"] == total
    assert after["requests"]["used"] == 10
    assert all(rule["reserved"] == 0 for rule in after.values())
    registry = gw.runner.app[STATE].metrics.registry
    counted = registry.get_sample_value(
        "gateway_tokens_total",
        {"team": "ml", "model": "other", "endpoint": "batches", "kind": "completion"},
    )
    assert counted == completion  # batch usage shows up as such in gateway_tokens_total


async def test_charged_once_with_two_replicas_one_restarted(
    make_gateway: Any, redis_server: RedisProcess, upstream: MockUpstream
) -> None:
    prefix = "b" + uuid.uuid4().hex[:10]
    first = await make_gateway(**sections(redis_server, prefix))
    second = await make_gateway(**sections(redis_server, prefix))
    batch = await submit(first, chat_lines(10, max_tokens=100), delay_ms=300)
    await first.close()
    first = await make_gateway(**sections(redis_server, prefix))
    await reconcile_until_settled(second, first)
    for gw in (first, second):  # a late client retrieve settles nothing more
        async with openai.AsyncOpenAI(base_url=gw.url, api_key=token("ml")) as client:
            assert (await client.batches.retrieve(batch.id)).status == "completed"
    completion, _ = await output_usage(upstream, batch.id)
    after = await usage(second)
    assert after["completion_tokens"]["used"] == completion == 1000
    assert after["completion_tokens"]["reserved"] == 0
    assert await open_jobs(second) == 0


async def test_a_batch_larger_than_what_is_left_gets_429(
    make_gateway: Any, redis_server: RedisProcess
) -> None:
    gw = await make_gateway(**{**sections(redis_server), "teams": {"ml": {"quotas": rules(900)}}})
    with pytest.raises(openai.RateLimitError):
        await submit(gw, chat_lines(10, max_tokens=100))
    assert (await usage(gw))["completion_tokens"]["reserved"] == 0


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        (chat_lines(2, max_tokens=9) + chat_lines(1, model="o3", max_tokens=9), "line 3"),
        (chat_lines(1, max_tokens=5000), "line 1"),
        (b"not json\n", "line 1"),
        (
            chat_lines(1, model="o4-mini", max_tokens=9, reasoning_effort="low")
            + chat_lines(1, model="o4-mini", max_tokens=9, reasoning_effort="high"),
            "line 2",
        ),
    ],
    ids=["model", "output-ceiling", "not-json", "effort-ceiling"],
)
async def test_a_line_breaking_the_policy_rejects_the_batch(
    make_gateway: Any, redis_server: RedisProcess, lines: bytes, says: str
) -> None:
    # o4-mini is a reasoning model the team may use, up to low effort; o3 it may not use.
    policy = {"models": ["gpt-4o*", "o4-mini"], "max_reasoning_effort": "low"}
    gw = await make_gateway(**sections(redis_server, max_output_tokens=1000, **policy))
    with pytest.raises(openai.BadRequestError) as caught:
        await submit(gw, lines)
    assert says in str(caught.value)
    assert (await usage(gw))["completion_tokens"]["reserved"] == 0


async def test_a_lawful_reasoning_batch_is_admitted(
    make_gateway: Any, redis_server: RedisProcess
) -> None:
    # The control for the effort case above: the same model within the ceiling is accepted.
    policy = {"models": ["gpt-4o*", "o4-mini"], "max_reasoning_effort": "low"}
    gw = await make_gateway(**sections(redis_server, max_output_tokens=1000, **policy))
    lines = chat_lines(2, model="o4-mini", max_tokens=9, reasoning_effort="low")
    assert (await submit(gw, lines)).status == "in_progress"


async def test_an_input_file_over_the_size_limit_gets_400_naming_it(
    make_gateway: Any, redis_server: RedisProcess
) -> None:
    config = sections(redis_server)
    config["admission"]["batch_input_max_bytes"] = 1024
    gw = await make_gateway(**config)
    small = chat_lines(5, max_tokens=10)
    large = chat_lines(20, max_tokens=10)
    assert len(small) < 1024 < len(large)
    assert (await submit(gw, small)).status == "in_progress"  # under the limit: admitted
    with pytest.raises(openai.BadRequestError) as caught:
        await submit(gw, large)
    assert caught.value.status_code == 400
    assert "admission.batch_input_max_bytes" in str(caught.value)
    assert (await usage(gw))["requests"]["reserved"] == 5  # only the small batch


async def test_cancelled_mid_way_settles_to_its_partial_output_file(
    make_gateway: Any, redis_server: RedisProcess, upstream: MockUpstream
) -> None:
    gw = await make_gateway(**sections(redis_server))
    # Ten lines over 3 s, one every 0.3 s: cancelled once one has finished, before the last.
    batch = await submit(gw, chat_lines(10, max_tokens=100), delay_ms=3000)
    async with openai.AsyncOpenAI(base_url=gw.url, api_key=token("ml")) as client:
        seen = await client.batches.retrieve(batch.id)
        deadline = time.monotonic() + 10
        while seen.request_counts is None or seen.request_counts.completed == 0:
            assert time.monotonic() < deadline, "no line of the batch ever finished"
            seen = await client.batches.retrieve(batch.id)
        assert seen.status == "in_progress"
        cancelled = await client.batches.cancel(batch.id)
    assert cancelled.status == "cancelled" and cancelled.output_file_id is not None
    completion, total = await output_usage(upstream, batch.id)
    assert 0 < completion < 1000  # some lines, not all
    after = await usage(gw)
    assert after["completion_tokens"] == after["completion_tokens"] | {
        "used": completion,
        "reserved": 0,
    }
    assert after["total_tokens"]["used"] == total
    assert cancelled.request_counts is not None
    assert after["requests"]["used"] == cancelled.request_counts.completed == completion // 100
    assert await open_jobs(gw) == 0


async def test_cancelled_before_any_line_settles_to_nothing(
    make_gateway: Any, redis_server: RedisProcess
) -> None:
    gw = await make_gateway(**sections(redis_server))
    batch = await submit(gw, chat_lines(10, max_tokens=100), delay_ms=600_000)
    async with openai.AsyncOpenAI(base_url=gw.url, api_key=token("ml")) as client:
        cancelled = await client.batches.cancel(batch.id)
    assert cancelled.status == "cancelled" and cancelled.output_file_id is None
    after = await usage(gw)
    assert after["completion_tokens"] == after["completion_tokens"] | {"used": 0, "reserved": 0}
    assert await open_jobs(gw) == 0


async def test_open_job_gauges_and_reconciler_errors(
    make_gateway: Any, redis_server: RedisProcess
) -> None:
    gw = await make_gateway(**sections(redis_server))
    reconciler = gw.runner.app[RECONCILER]
    team = {"team": "ml"}
    # The batch's first poll upstream fails (the mock answers 500 once).
    batch = await submit(
        gw, chat_lines(2, max_tokens=10), 600_000, {"x-mock-batch-poll-failures": "1"}
    )
    async with openai.AsyncOpenAI(base_url=gw.url, api_key=token("ml"), max_retries=0) as c:
        response = await c.responses.create(
            model="gpt-4o-mini",
            input="later",
            background=True,
            max_output_tokens=50,
            extra_headers={"x-mock-background-delay-ms": "600000"},
        )
        errors = sample(gw, "gateway_reconciler_errors_total")
        assert await reconciler.poll() == 0
        assert sample(gw, "gateway_open_batches", team) == 1
        assert sample(gw, "gateway_open_background_total", team) == 1
        assert sample(gw, "gateway_reconciler_errors_total") == errors + 1
        assert await reconciler.poll() == 0  # the upstream answers again: no new error
        assert sample(gw, "gateway_reconciler_errors_total") == errors + 1
        assert sample(gw, "gateway_open_batches", team) == 1
        await c.batches.cancel(batch.id)
        await c.responses.cancel(response.id)
    assert await open_jobs(gw) == 0
    await reconciler.poll()
    assert sample(gw, "gateway_open_batches", team) == 0
    assert sample(gw, "gateway_open_background_total", team) == 0
    assert await nothing_reserved(gw)


async def test_caps_hold_with_batches_background_and_live_requests_together(
    make_gateway: Any, redis_server: RedisProcess
) -> None:
    # The reconciler runs on its own here: live requests queued behind the jobs' reservations
    # are woken when it settles them.
    gw = await make_gateway(
        **{
            **sections(redis_server),
            "admission": {"reconcile_interval_seconds": 0.05},
            "teams": {"ml": {"quotas": rules(2000)}},
        }
    )
    client = openai.AsyncOpenAI(base_url=gw.url, api_key=token("ml"), max_retries=0)

    async def background() -> openai.types.responses.Response:
        return await client.responses.create(
            model="gpt-4o-mini",
            input="later",
            background=True,
            max_output_tokens=300,
            extra_headers={**BURN, "x-mock-background-delay-ms": "100"},
        )

    async def live() -> None:
        await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "now"}],
            max_completion_tokens=100,
            extra_headers=BURN,
        )

    # The jobs go first, so that they are admitted (1,000 + 300 of the 2,000): the cap must
    # then hold while the rest runs alongside them.
    batch = await submit(gw, chat_lines(10, max_tokens=100), delay_ms=100)
    first = await background()
    assert batch.status == "in_progress" and first.status == "queued"
    calls = [background(), *(live() for _ in range(10))]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    await client.close()
    assert all(
        not isinstance(o, BaseException) or isinstance(o, openai.RateLimitError) for o in outcomes
    ), outcomes
    await reconcile_until_settled(gw)
    after = (await usage(gw))["completion_tokens"]
    assert after["reserved"] == 0
    assert 1000 + 300 <= after["used"] <= 2000  # the batch and the first background, at least
