"""``POST /v1/batches`` for capped teams: check every line, reserve the whole batch at once.

The gateway reads the input file upstream (streamed, bounded by
``admission.batch_input_max_bytes``) and applies the team's policy to each line; a line that
breaks it rejects the batch (400 naming the line), since a file cannot be rewritten the way a
request body is. Each line asks for its output budget (its own limit or the model profile's
default) and its prompt estimate, as a live request would; the sum is reserved in one store
call, or the batch gets 429 (a batch cannot be clamped). The reservation becomes an open job
settled from the output file's per-line usage when the batch finishes (``pipeline.jobs``).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway import apis, json_codec
from gateway.apis import BAD_JSON, ApiSpec
from gateway.config import GatewayConfig
from gateway.errors import GatewayError, InvalidRequestError
from gateway.pipeline import team_policy
from gateway.pipeline.forward import Call, forward_whole
from gateway.pipeline.jobs import settle_if_terminal
from gateway.quota.policy import PlannedWindow, QuotaPlan, plan_request, reserved_amounts
from gateway.quota.pricing import UnitPrice
from gateway.quota.service import Reservation
from gateway.upstream.headers import upstream_request_headers

#: Batch endpoints that run no model and so reserve nothing.
_FREE_ENDPOINTS = frozenset({"/v1/moderations"})
#: A batch may take its whole 24 h completion window, then finalize: its hold must outlast
#: that, or a batch that ends late would have stopped counting (and be charged as reserved)
#: before the reconciler could read its output file. The hour covers finalizing and polling.
BATCH_HOLD_FLOOR_SECONDS = 25 * 3600.0


def batch_hold_seconds(config: GatewayConfig) -> float:
    """A batch's hold: ``admission.background_hold_seconds``, never under the floor."""
    return max(config.admission.background_hold_seconds, BATCH_HOLD_FLOOR_SECONDS)


async def handle_batch_create(call: Call) -> web.StreamResponse:
    raw = await call.request.read()
    body = _json_object(raw, "The request body must be a JSON object.")
    file_id, endpoint = body.get("input_file_id"), body.get("endpoint")
    if not isinstance(file_id, str) or not isinstance(endpoint, str):
        raise InvalidRequestError(
            "A batch needs 'input_file_id' and 'endpoint' strings.", param="input_file_id"
        )
    api = apis.classify("POST", endpoint.removeprefix("/v1"))
    reservation: Reservation | None = None
    if endpoint not in _FREE_ENDPOINTS:
        if not api.metered:
            raise InvalidRequestError(
                f"Batches to {endpoint} are not metered by the gateway.", param="endpoint"
            )
        plan = _plan(call, api, endpoint, await _input_lines(call, file_id))
        reservation = await _reserve(call, plan)
    return await _create(call, raw, endpoint, reservation)


def _json_object(raw: bytes, message: str) -> dict[str, Any]:
    try:
        obj = json_codec.loads(raw)
    except BAD_JSON:
        obj = None
    if not isinstance(obj, dict):
        raise InvalidRequestError(message, code="invalid_json")
    return obj


async def _input_lines(call: Call, file_id: str) -> list[bytes]:
    limit = call.config.admission.batch_input_max_bytes
    state = call.state
    headers = upstream_request_headers(
        CIMultiDictProxy(CIMultiDict()), state.upstream.config, accept_encoding=None
    )
    upstream = await state.upstream.send("GET", f"/files/{file_id}/content", "", headers, None)
    try:
        if upstream.status >= 300:
            raise InvalidRequestError(
                f"The batch input file {file_id!r} could not be read ({upstream.status}).",
                param="input_file_id",
            )
        data = bytearray()
        async for chunk in upstream.chunks():
            data += chunk
            if len(data) > limit:
                raise InvalidRequestError(
                    f"The batch input file is larger than the gateway reads ({limit} bytes; "
                    "admission.batch_input_max_bytes).",
                    param="input_file_id",
                )
    finally:
        upstream.release()
    return [line for line in bytes(data).splitlines() if line.strip()]


def _plan(call: Call, api: ApiSpec, endpoint: str, lines: list[bytes]) -> QuotaPlan:
    """One plan for the whole batch: per window, the sum of what each line would reserve."""
    rules = call.config.quota_rules(call.team_name)
    user_rules = call.config.user_quota_rules(call.team_name)
    now = call.state.quotas.clock()
    hold = batch_hold_seconds(call.config)
    totals: dict[str, tuple[PlannedWindow, int]] = {}
    price: UnitPrice | None = None
    model: str | None = None
    for number, raw in enumerate(lines, start=1):
        info, profile = _check_line(call, api, endpoint, number, raw)
        if number == 1:
            model = info.model
            price = team_policy.request_price(call.config, info, batch=True)
        elif info.model != model:
            # OpenAI's rule too; one model means one price for the batch's summed usage.
            raise InvalidRequestError(
                f"Line {number} of the batch input file names model {info.model!r}, line 1 "
                f"{model!r}: a batch runs one model.",
                param="input_file_id",
            )
        plan = plan_request(
            rules,
            info,
            profile,
            call.team,
            body_bytes=len(raw),
            now=now,
            hold_seconds=hold,
            price=price,
            user=call.user,
            user_rules=user_rules,
        )
        for planned, amount in zip(
            plan.windows, reserved_amounts(plan, plan.requested_output), strict=True
        ):
            known = totals.get(planned.charge.key)
            totals[planned.charge.key] = (planned, amount + (known[1] if known else 0))
    windows = tuple(
        replace(planned, charge=replace(planned.charge, fixed=total, per_output=0))
        for planned, total in totals.values()
    )
    return QuotaPlan(windows=windows, requested_output=0, min_output=0, choices=0, price=price)


def _check_line(
    call: Call, api: ApiSpec, endpoint: str, number: int, raw: bytes
) -> tuple[apis.RequestInfo, Any]:
    try:
        line = _json_object(raw, "is not a JSON object")
        if line.get("url") != endpoint:
            raise InvalidRequestError(f"its url must be the batch's endpoint {endpoint}")
        body = line.get("body")
        if not isinstance(body, dict):
            raise InvalidRequestError("its body must be a JSON object")
        info = api.parse(body)
        team_policy.check_model(call.team, call.team_name, info.model)
        profile = call.config.model_profile(info.model)
        if team_policy.reasoning_effort(call.team, info, profile) is not None:
            raise InvalidRequestError(
                f"its reasoning effort is above this team's maximum of "
                f"{call.team.max_reasoning_effort!r}"
            )
        ceiling = call.team.max_output_tokens
        if (
            ceiling is not None
            and api.produces_output
            and (info.max_output_tokens is None or info.max_output_tokens > ceiling)
        ):
            raise InvalidRequestError(
                f"it must set an output limit of at most this team's {ceiling} tokens"
            )
    except GatewayError as exc:
        raise InvalidRequestError(
            f"Batch input line {number} is not allowed: {exc.message}",
            param="input_file_id",
            code="batch_line_not_allowed",
        ) from None
    return info, profile


async def _reserve(call: Call, plan: QuotaPlan) -> Reservation | None:
    if not plan.windows:
        return None
    return await call.state.quotas.reserve(
        call.team_name,
        call.exchange.request_id,
        plan,
        hold_seconds=batch_hold_seconds(call.config),
    )


async def _create(
    call: Call, raw: bytes, endpoint: str, reservation: Reservation | None
) -> web.StreamResponse:
    released = True
    job: dict[str, Any] | None = None
    try:
        forwarded, data = await forward_whole(call, raw, content_type="application/json")
        upstream = forwarded.upstream
        if upstream.status < 300:
            released = False
            try:
                job = _json_object(data, "")
            except InvalidRequestError:
                job = None
        return web.Response(status=upstream.status, body=data, headers=forwarded.headers)
    finally:
        if reservation is not None:
            await asyncio.shield(_hand_over(call, reservation, endpoint, job, released))


async def _hand_over(
    call: Call,
    reservation: Reservation,
    endpoint: str,
    batch: dict[str, Any] | None,
    released: bool,
) -> None:
    state = call.state
    if released:
        await state.quotas.settle(reservation, None, release=True)
        return
    job_id = batch.get("id") if batch is not None else None
    hold = batch_hold_seconds(call.config)
    if (
        batch is not None
        and isinstance(job_id, str)
        and await state.jobs.open(reservation, "batch", job_id, endpoint, hold_seconds=hold)
    ):
        await settle_if_terminal(state, call.team_name, "batch", batch)  # done already?
        return
    await state.quotas.settle(reservation, None, release=False)  # keep it charged
