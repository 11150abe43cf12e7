"""Fail closed: capped teams reach only metered and free APIs (real gateway, mock upstream,
the official SDK)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.support.gateway_proc import RunningGateway, token

CAP = [{"metric": "total_tokens", "limit": 100_000, "window": "day"}]


def sdk(gw: RunningGateway, team: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url, api_key=token(team), max_retries=0)


async def create_job(gw: RunningGateway, team: str) -> Any:
    async with sdk(gw, team) as client:
        return await client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-1")


async def test_a_capped_team_may_not_start_fine_tuning(make_gateway: Any) -> None:
    gw = await make_gateway(teams={"ml": {"quotas": CAP}})
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await create_job(gw, "ml")
    message = str(caught.value)
    assert "POST /fine_tuning/jobs" in message
    assert "teams.ml.allow_unmetered" in message
    assert caught.value.code == "unmetered_path_not_allowed"


@pytest.mark.parametrize(
    "where",
    [
        {"teams": {"ml": {"quotas": CAP, "allow_unmetered": ["/fine_tuning/jobs*"]}}},
        {"defaults": {"allow_unmetered": ["/fine_tuning/*"]}, "teams": {"ml": {"quotas": CAP}}},
    ],
    ids=["team", "defaults"],
)
async def test_an_allowed_pattern_forwards(make_gateway: Any, where: dict[str, Any]) -> None:
    gw = await make_gateway(**where)
    with pytest.raises(openai.NotFoundError):  # the mock has no fine-tuning: it reached it
        await create_job(gw, "ml")


async def test_the_team_s_own_patterns_replace_the_defaults(make_gateway: Any) -> None:
    gw = await make_gateway(
        defaults={"allow_unmetered": ["/fine_tuning/*"]},
        teams={"ml": {"quotas": CAP, "allow_unmetered": ["/audio/*"]}},
    )
    with pytest.raises(openai.PermissionDeniedError):
        await create_job(gw, "ml")


async def test_default_quotas_make_a_team_capped(make_gateway: Any) -> None:
    gw = await make_gateway(defaults={"quotas": CAP}, teams={"ml": {}})
    with pytest.raises(openai.PermissionDeniedError):
        await create_job(gw, "ml")


async def test_a_team_without_rules_is_forwarded(make_gateway: Any) -> None:
    gw = await make_gateway(teams={"ml": {}})
    with pytest.raises(openai.NotFoundError):
        await create_job(gw, "ml")


async def test_a_capped_team_still_reaches_metered_and_free_apis(make_gateway: Any) -> None:
    gw = await make_gateway(teams={"ml": {"quotas": CAP}})
    async with sdk(gw, "ml") as client:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        await client.models.list()
        await client.files.list()
        await client.moderations.create(input="hello")
