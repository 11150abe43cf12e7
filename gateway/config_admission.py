"""How requests wait for budget, and how long jobs that settle later hold it (``admission:``)."""

from __future__ import annotations

from pydantic import Field

from gateway.config_base import ConfigModel, PositiveSeconds


class AdmissionConfig(ConfigModel):
    """What a request does when other requests' reservations hold its team's budget, and how
    long requests that outlive their HTTP exchange (background responses, batches) stay
    reserved and how they settle."""

    queue_timeout_seconds: float = Field(
        default=30.0,
        ge=0,
        description=(
            "Longest wait for reservations to settle; then the request gets what is left, "
            "or 429 with a short retry-after. 0 = never wait."
        ),
    )
    max_queued_per_team: int = Field(
        default=1000, ge=0, description="Waiting requests per team and replica; more get 429."
    )
    poll_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Waiters re-check this often when no wake-up arrives (pub/sub is lost).",
    )
    background_hold_seconds: PositiveSeconds = Field(
        default=86400.0,
        description="Reservation hold of background responses and batches: they settle when "
        "they reach a terminal status; one that never does stops counting after this.",
    )
    reconcile_interval_seconds: PositiveSeconds = Field(
        default=15.0,
        description="How often each replica polls the upstream for open background responses "
        "and batches (one store call per interval when none is open).",
    )
    batch_input_max_bytes: int = Field(
        default=200 * 1024 * 1024,
        ge=1024,
        description="Largest batch input file the gateway reads to check and reserve (400 above).",
    )
