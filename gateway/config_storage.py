"""Where the gateway keeps state: the quota store (``store:``) and the response cache
(``cache:``, and per team ``teams.<name>.cache``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator

from gateway.config_base import ConfigModel, PositiveSeconds


class StoreConfig(ConfigModel):
    """Shared state (quotas, cache). No redis_url: an embedded in-memory store for one process."""

    redis_url: SecretStr | None = Field(
        default=None,
        description="redis://[:password@]host:port/db, rediss:// or unix://: one server, or any "
        "node of a Redis Cluster (detected). "
        "redis+sentinel://[:password@]host:26379[,host2:26379...]/service[/db]: the primary "
        "the Sentinels name for `service`, followed across failovers.",
    )
    key_prefix: str = Field(default="gw", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    timeout_seconds: PositiveSeconds = Field(
        default=0.5, description="Bound on every store call; past it the store counts as down."
    )

    reservation_grace_seconds: PositiveSeconds = Field(
        default=60.0,
        description="A reservation is held for upstream.total_timeout_seconds plus this; a "
        "replica that dies mid-request leaks budget for at most that long.",
    )

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_means_embedded(cls, value: Any) -> Any:
        return None if value == "" else value

    allow_evicting_policy: bool = Field(
        default=False,
        description="Start even if the quota Redis has an evicting maxmemory-policy "
        "(allkeys-*, volatile-*), which can silently drop counters and reset budgets.",
    )
    state_check_seconds: PositiveSeconds = Field(
        default=10.0,
        description="How often the gateway checks that the quota Redis still holds its marker "
        "key (gone: state was lost; logged, counted in gateway_quota_state_resets_total).",
    )

    on_error: Literal["local", "open", "closed"] = Field(
        default="local",
        description=(
            "Quotas when Redis is unreachable: local = enforce with this replica's memory; "
            "open = admit unmetered; closed = answer 503."
        ),
    )


class CacheConfig(ConfigModel):
    """Response cache for deterministic requests (global settings and defaults)."""

    enabled: bool = Field(default=True, description="Master switch.")
    redis_url: SecretStr | None = Field(
        default=None,
        description="Where cache entries live, if not with the quota counters "
        "(store.redis_url, the default). Same URL forms as store.redis_url. Production: a "
        "separate, evicting instance (maxmemory + allkeys-lru), so cache entries can never "
        "evict or crowd out counters.",
    )

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_means_store(cls, value: Any) -> Any:
        return None if value == "" else value

    ttl_seconds: int = Field(default=3600, ge=1, description="How long an entry lives.")
    max_entry_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Larger responses are not stored."
    )
    scope: Literal["team", "shared"] = Field(
        default="team", description="team: entries are private to a team; shared: pooled."
    )
    models: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: ["*"], description="Model patterns whose responses may be cached."
    )
    exclude_models: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Model patterns never cached (wins over `models`)."
    )
    images: bool = Field(default=False, description="Cache image generations too.")
    responses_with_store: bool = Field(
        default=False,
        description="Cache Responses API calls whose `store` is not false (they have effects).",
    )
    lock_seconds: PositiveSeconds = Field(
        default=30.0,
        description="Cross-replica single-flight: how long one replica may hold a request's lock.",
    )
    wait_seconds: PositiveSeconds = Field(
        default=30.0,
        description="How long an identical request waits for the one in flight before going "
        "upstream itself.",
    )


class TeamCacheConfig(ConfigModel):
    """Per-team overrides of the cache settings; unset fields inherit the global ones."""

    enabled: bool | None = None
    ttl_seconds: int | None = Field(default=None, ge=1)
    scope: Literal["team", "shared"] | None = None
    models: list[Annotated[str, Field(min_length=1)]] | None = None
    exclude_models: list[Annotated[str, Field(min_length=1)]] | None = None
    images: bool | None = None
