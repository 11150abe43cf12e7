"""The gateway's configuration: the pydantic models of its one YAML file.

Every model forbids unknown keys: a typo is an error at start, not a silently ignored setting.
Reading a file, ``${VAR}`` substitution and error messages are in ``gateway.config_loader``;
the store and cache sections in ``gateway.config_storage``.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator, model_validator

from gateway.config_admission import AdmissionConfig as AdmissionConfig
from gateway.config_base import ConfigModel as _Model
from gateway.config_base import PositiveSeconds as PositiveSeconds
from gateway.config_base import compile_patterns as compile_patterns
from gateway.config_pricing import PricingConfig as PricingConfig
from gateway.config_quota import PathPattern
from gateway.config_quota import QuotaDefaults as QuotaDefaults
from gateway.config_quota import QuotaMetric as QuotaMetric
from gateway.config_quota import QuotaRule as QuotaRule

# The state sections live in their own module; importing them from here keeps working.
from gateway.config_storage import CacheConfig as CacheConfig
from gateway.config_storage import StoreConfig as StoreConfig
from gateway.config_storage import TeamCacheConfig as TeamCacheConfig

TEAM_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
_HMAC_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
Algorithm = Literal[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"
]


class UpstreamConfig(_Model):
    """Where requests go, and with which credentials. Clients never see these."""

    base_url: AnyHttpUrl = Field(
        default=AnyHttpUrl("https://api.openai.com/v1"),
        description="Base URL of the OpenAI-compatible upstream, including /v1.",
    )
    api_key: SecretStr = Field(description="The real upstream API key; injected on every request.")
    organization: str | None = Field(
        default=None, description="Sent upstream as OpenAI-Organization (clients' values dropped)."
    )
    project: str | None = Field(
        default=None, description="Sent upstream as OpenAI-Project (clients' values dropped)."
    )
    connect_timeout_seconds: PositiveSeconds = 10.0
    read_timeout_seconds: PositiveSeconds = Field(
        default=600.0,
        description="Longest wait for the next bytes (first byte or between stream chunks).",
    )
    total_timeout_seconds: PositiveSeconds = Field(
        default=1800.0, description="Longest a whole upstream exchange may take."
    )
    max_connections: int = Field(default=1000, ge=1, description="Size of the connection pool.")


class AuthConfig(_Model):
    """How team JWTs are verified. Allowed algorithms come from here, never from the token."""

    algorithms: list[Algorithm] = Field(default_factory=lambda: ["HS256"], min_length=1)  # type: ignore[arg-type]
    hs_secret: SecretStr | None = Field(
        default=None, description="Shared secret for HS* tokens (at least 32 bytes)."
    )
    public_key: SecretStr | None = Field(
        default=None, description="PEM public key for RS*/PS*/ES*/EdDSA tokens."
    )
    jwks_url: AnyHttpUrl | None = Field(
        default=None, description="JWKS endpoint for asymmetric tokens (keys chosen by kid)."
    )
    jwks_cache_seconds: PositiveSeconds = 3600.0
    jwks_min_refresh_interval_seconds: PositiveSeconds = Field(
        default=60.0, description="An unknown kid triggers a refetch at most this often."
    )
    issuer: str | None = None
    audience: str | list[str] | None = None
    leeway_seconds: Annotated[float, Field(ge=0)] = 30.0
    require_exp: bool = True
    team_claim: str = Field(default="team", min_length=1)
    user_claim: str = Field(
        default="sub",
        min_length=1,
        description="The claim that names the person behind a token, for `user_quotas`.",
    )
    token_cache_size: int = Field(
        default=10_000, ge=0, description="Verified tokens remembered (0 disables the cache)."
    )

    @field_validator("hs_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes (RFC 7518 3.2)")
        return value

    @model_validator(mode="after")
    def _keys_for_algorithms(self) -> AuthConfig:
        wants_hmac = any(a in HMAC_ALGORITHMS for a in self.algorithms)
        wants_asym = any(a in ASYMMETRIC_ALGORITHMS for a in self.algorithms)
        if wants_hmac and self.hs_secret is None:
            raise ValueError("hs_secret is required when an HS* algorithm is allowed")
        if self.hs_secret is not None:
            # RFC 7518 3.2: a key at least as long as the hash output.
            needed = max((_HMAC_KEY_BYTES.get(a, 32) for a in self.algorithms), default=32)
            if len(self.hs_secret.get_secret_value().encode()) < needed:
                raise ValueError(f"hs_secret must be at least {needed} bytes for {self.algorithms}")
        if wants_asym and self.public_key is None and self.jwks_url is None:
            raise ValueError(
                "public_key or jwks_url is required when an asymmetric algorithm is allowed"
            )
        if self.public_key is not None and self.jwks_url is not None:
            raise ValueError("set public_key or jwks_url, not both")
        return self


class ServerConfig(_Model):
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="Largest JSON request body (413 above)."
    )
    max_upload_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1024,
        description="Largest streamed (multipart or other non-JSON) request body.",
    )
    shutdown_grace_seconds: PositiveSeconds = Field(
        default=30.0, description="Time in-flight requests and streams get to finish on SIGTERM."
    )
    shutdown_delay_seconds: Annotated[float, Field(ge=0)] = Field(
        default=0.0,
        description="On SIGTERM, answer /readyz 503 for this long before closing the listener, "
        "so load balancers stop sending new requests first (Kubernetes: a few seconds).",
    )
    config_poll_seconds: Annotated[float, Field(ge=0)] = Field(
        default=5.0,
        description="How often to check the config file for changes (0: only on SIGHUP).",
    )


class MetricsConfig(_Model):
    enabled: bool = Field(default=True, description="Serve Prometheus metrics at /metrics.")
    port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve /metrics on this separate port (unset: on the API port).",
    )
    bearer_token: SecretStr | None = Field(
        default=None, description="When set, /metrics requires 'Authorization: Bearer <token>'."
    )
    quota_refresh_seconds: PositiveSeconds = Field(
        default=5.0,
        description="Quota gauges are read from the store at scrape time, at most this often.",
    )


class LoggingConfig(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access_log: bool = Field(default=True, description="One JSON line per proxied request.")


ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


class ModelProfile(_Model):
    """What the gateway assumes about a family of models (first matching profile wins)."""

    match: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1, description="Model name patterns."
    )
    reasoning: bool = Field(
        default=False, description="Spends reasoning tokens (counted against reasoning caps)."
    )
    default_output_tokens: int = Field(
        default=4096,
        ge=1,
        description="Output reserved (and written into the request) when a client sets no limit.",
    )
    min_output_tokens: int = Field(
        default=16,
        ge=1,
        description="Smallest useful output budget; a request that can't get it is refused (429).",
    )
    max_output_tokens_per_second: float = Field(
        default=200.0,
        gt=0,
        le=100_000,
        description=(
            "Upper bound on the model's generation speed, per choice (reasoning included). When "
            "a client leaves before the usage arrives, the request is charged the tokens it was "
            "relayed plus this rate times the seconds the upstream ran, capped by what it "
            "reserved: set it above the model's fastest real speed, or stops are under-counted."
        ),
    )


def _default_model_profiles() -> list[ModelProfile]:
    # OpenAI advises leaving about 25,000 tokens for reasoning and output on reasoning models.
    return [
        ModelProfile(
            match=["o[0-9]*", "gpt-5*", "*-reasoning*", "*deep-research*", "codex*"],
            reasoning=True,
            default_output_tokens=25_000,
            min_output_tokens=256,
        ),
        ModelProfile(
            match=["*"], reasoning=False, default_output_tokens=4096, min_output_tokens=16
        ),
    ]


class TeamConfig(_Model):
    enabled: bool = True
    models: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: ["*"],
        description="Model name patterns (fnmatch: *, ?, [..]) this team may use.",
    )
    paths: list[PathPattern] = Field(
        default_factory=lambda: ["*"],
        description=(
            "API path patterns (without /v1) this team may call, e.g. /chat/completions, "
            "/files*. Requests to other paths get 403."
        ),
    )

    quotas: list[QuotaRule] | None = Field(
        default=None, description="This team's caps; unset = `defaults.quotas`."
    )
    user_quotas: list[QuotaRule] | None = Field(
        default=None,
        description="Caps applied to each user of the team on their own (the token's "
        "`auth.user_claim`), on top of the team's; unset = `defaults.user_quotas`.",
    )
    max_output_tokens: int | None = Field(
        default=None, ge=1, description="Ceiling on any one request's output-token limit."
    )
    max_reasoning_effort: ReasoningEffort | None = Field(
        default=None, description="Highest reasoning effort this team may ask for."
    )
    on_effort_exceeded: Literal["downgrade", "reject"] = Field(
        default="downgrade",
        description="downgrade: rewrite the request to max_reasoning_effort; reject: 400.",
    )
    allow_unmetered: list[PathPattern] | None = Field(
        default=None,
        description="Path patterns (without /v1, e.g. /fine_tuning/jobs*) of billable APIs the "
        "gateway does not meter that this team may call although it has quota rules (others "
        "get 403); unset = `defaults.allow_unmetered`.",
    )
    max_concurrent_requests: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Metered requests in flight across replicas; unset = "
            "`defaults.max_concurrent_requests`. More wait like congested ones."
        ),
    )
    cache: TeamCacheConfig = Field(default_factory=TeamCacheConfig)

    # Matching runs on every request: each pattern list is compiled once per config object
    # into one regular expression (a reload builds new objects, so nothing stale survives).
    @cached_property
    def _model_matcher(self) -> re.Pattern[str]:
        return compile_patterns(self.models)

    @cached_property
    def _path_matcher(self) -> re.Pattern[str]:
        return compile_patterns(self.paths)

    def allows_model(self, model: str) -> bool:
        return self._model_matcher.match(model) is not None

    def allows_path(self, path: str) -> bool:
        return self._path_matcher.match(path) is not None

    @cached_property
    def _unmetered_matcher(self) -> re.Pattern[str] | None:
        return None if self.allow_unmetered is None else compile_patterns(self.allow_unmetered)

    def allows_unmetered(self, path: str) -> bool | None:
        """None when the team sets no patterns of its own (the defaults' apply)."""
        matcher = self._unmetered_matcher
        return None if matcher is None else matcher.match(path) is not None


class GatewayConfig(_Model):
    upstream: UpstreamConfig
    auth: AuthConfig
    store: StoreConfig = Field(default_factory=StoreConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    defaults: QuotaDefaults = Field(default_factory=QuotaDefaults)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    models: list[ModelProfile] = Field(
        default_factory=_default_model_profiles,
        description="Model profiles, first match wins; a catch-all `*` profile is implied.",
    )
    cache: CacheConfig = Field(default_factory=CacheConfig)
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    teams: dict[Annotated[str, Field(pattern=TEAM_NAME_PATTERN)], TeamConfig] = Field(
        default_factory=dict, description="Team name -> settings; the JWT's team claim names one."
    )

    def quota_rules(self, team: str) -> list[QuotaRule]:
        own = self.teams[team].quotas
        return own if own is not None else self.defaults.quotas

    def user_quota_rules(self, team: str) -> list[QuotaRule]:
        own = self.teams[team].user_quotas
        return own if own is not None else self.defaults.user_quotas

    def is_capped(self, team: str) -> bool:
        """Whether any rule, the team's or its users', counts the team's requests."""
        return bool(self.quota_rules(team) or self.user_quota_rules(team))

    def allows_unmetered(self, team: str, path: str) -> bool:
        """Whether ``team`` may call a billable, unmetered ``path`` despite its caps."""
        own = self.teams[team].allows_unmetered(path)
        return own if own is not None else self.defaults.allows_unmetered(path)

    def max_concurrent(self, team: str) -> int | None:
        own = self.teams[team].max_concurrent_requests
        return own if own is not None else self.defaults.max_concurrent_requests

    @cached_property
    def _profile_matchers(self) -> list[tuple[re.Pattern[str], ModelProfile]]:
        return [(compile_patterns(profile.match), profile) for profile in self.models]

    def model_profile(self, model: str | None) -> ModelProfile:
        if model is not None:
            for matcher, profile in self._profile_matchers:
                if matcher.match(model) is not None:
                    return profile
        return _FALLBACK_PROFILE


def config_json_schema() -> dict[str, Any]:
    return GatewayConfig.model_json_schema()


_FALLBACK_PROFILE = ModelProfile(match=["*"])
