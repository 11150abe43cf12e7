"""What a team may do, as pure functions: paths and models it may use, the reasoning effort
and output limit it may spend. Each check raises the OpenAI-shaped error a client sees."""

from __future__ import annotations

from urllib.parse import unquote

from gateway import json_codec
from gateway.apis import BAD_JSON, REASONING_EFFORTS, RequestInfo, surfaces
from gateway.config import GatewayConfig, ModelProfile, TeamConfig
from gateway.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from gateway.quota.pricing import UnitPrice
from gateway.quota.service import Reservation

_MODEL_PATH = "/models/"


def check_path(team: TeamConfig, team_name: str, path: str) -> None:
    if not team.allows_path(path):
        raise PermissionDeniedError(
            f"Team {team_name!r} may not call {path}.", code="path_not_allowed"
        )


def check_user(config: GatewayConfig, team_name: str, user: str | None) -> None:
    """A team with per-user caps needs to know whose request it is."""
    if user is None and config.user_quota_rules(team_name):
        claim = config.auth.user_claim
        raise AuthenticationError(
            f"Invalid API key: team {team_name!r} has per-user quotas, and the token has no "
            f"{claim!r} claim naming the user (auth.user_claim)."
        )


def request_price(
    config: GatewayConfig, info: RequestInfo, *, batch: bool = False
) -> UnitPrice | None:
    """The request's prices per token (model, service tier, Batch discount); None: unpriced."""
    price = config.pricing.price_of(info.model)
    if price is None:
        return None
    return UnitPrice.of(price, service_tier=info.service_tier, batch=batch)


def check_model(team: TeamConfig, team_name: str, model: str | None) -> None:
    if model is not None and not team.allows_model(model):
        raise PermissionDeniedError(
            f"Team {team_name!r} is not allowed to use model {model!r}.", param="model"
        )


def is_model_listing(method: str, path: str) -> bool:
    return method == "GET" and path.rstrip("/") == "/models"


def looked_up_model(method: str, path: str, team: TeamConfig) -> str | None:
    """The model a ``GET /models/{id}`` names; a model the team may not use does not exist for
    it (404, as OpenAI answers for models a key cannot see)."""
    if method != "GET" or not path.startswith(_MODEL_PATH):
        return None
    model = unquote(path[len(_MODEL_PATH) :])
    if not team.allows_model(model):
        raise NotFoundError(
            f"The model '{model}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    return model


def visible_models(listing: bytes, team: TeamConfig) -> bytes:
    """A model list narrowed to what the team may use (SDK model pickers show only those).

    A body of a shape the gateway does not know passes unchanged.
    """
    try:
        obj = json_codec.loads(listing)
        obj["data"] = [
            m
            for m in obj["data"]
            if isinstance(m, dict) and team.allows_model(str(m.get("id", "")))
        ]
    except (*BAD_JSON, KeyError, TypeError, AttributeError):  # type: ignore[misc]
        return listing
    return json_codec.dumps(obj)


def reasoning_effort(team: TeamConfig, info: RequestInfo, profile: ModelProfile) -> str | None:
    """The effort to write into the request, or None to leave it; raises to reject."""
    ceiling = team.max_reasoning_effort
    if ceiling is None or not profile.reasoning:
        return None
    asked = info.reasoning_effort or "medium"  # OpenAI's documented default
    if REASONING_EFFORTS.index(asked) <= REASONING_EFFORTS.index(ceiling):
        return None
    if team.on_effort_exceeded == "reject":
        raise InvalidRequestError(
            f"Reasoning effort {asked!r} is above this team's maximum of {ceiling!r}.",
            param=info.api.effort_param or "reasoning_effort",
            code="reasoning_effort_not_allowed",
        )
    return ceiling


def output_limit(
    info: RequestInfo, team: TeamConfig, reservation: Reservation | None
) -> int | None:
    """The output limit the gateway must write into the request, if any.

    With output caps, the granted budget is written whenever it is below what the client
    asked (or the client asked for nothing): the upstream then cannot exceed the reservation.
    """
    if info.output_limit_field is None:
        return None
    limit: int | None = None
    if reservation is not None and any(c.per_output > 0 for c in reservation.plan.charges):
        limit = reservation.output
    elif team.max_output_tokens is not None:
        limit = team.max_output_tokens
    if limit is None or (info.max_output_tokens is not None and info.max_output_tokens <= limit):
        return None
    return limit


def check_surface(config: GatewayConfig, team_name: str, method: str, path: str) -> None:
    """Fail closed: a team with quota rules reaches only metered and free APIs, plus the
    billable ones its ``allow_unmetered`` patterns name; without rules, nothing changes."""
    if not config.is_capped(team_name):
        return
    found = surfaces.surface(method, path)
    if found.treatment != "refused" or config.allows_unmetered(team_name, path):
        return
    raise PermissionDeniedError(
        f"Team {team_name!r} has quota rules and may not call {method} {path}: {found.why} "
        f"An operator can allow it with teams.{team_name}.allow_unmetered "
        "(or defaults.allow_unmetered).",
        code="unmetered_path_not_allowed",
    )
