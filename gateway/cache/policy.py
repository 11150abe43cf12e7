"""What may be cached, under which key: pure functions, no I/O.

Decisions written down here (design.md "Cache, precisely"; contract §4, §10.6):

- **Cacheable**: embeddings always; Chat, Completions and Responses when ``temperature`` is 0 and
  one output is asked for (``n``, and ``best_of`` for Completions, 1 or absent). A client header
  ``x-gateway-cache: force`` lifts exactly those two sampling checks and nothing else: team
  policy (``enabled``, models, images, store) and safety (stateful requests, passthrough paths)
  are not the client's to override.
- **Never**: passthrough (``OTHER``) paths; Responses that depend on server-side state or
  return before the result exists (``previous_response_id``, ``conversation``, ``background``).
- **Side effects**: a request that asks OpenAI to keep the result (Responses with ``store`` not
  false, its default; Chat with ``store: true``) is cached only when ``responses_with_store``
  allows it. That one switch covers Chat too, because the risk is the same (contract §10.6).
- **Images** only when the settings opt in. The images API's own ``background`` field is a colour
  option, not the Responses flag, so the stateful checks apply to Responses only.
- **Master switch**: a team can turn its cache off, but not on when the global switch is off.

The key is computed over the body the client sent *after* the gateway's own policy rewrites
(reasoning-effort downgrade, output ceiling) and *before* the quota clamp and the injected
``include_usage``: a response produced under a quota-lowered output limit must not be stored,
since the same key would then replay a truncated answer to a team that has budget left.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal

from gateway import json_codec
from gateway.apis import RequestInfo
from gateway.config import CacheConfig, TeamCacheConfig, UpstreamConfig

__all__ = [
    "IGNORED_FIELDS",
    "KEY_VERSION",
    "SHARED_SCOPE",
    "CacheSettings",
    "Decision",
    "Directives",
    "cache_key",
    "cache_scope",
    "decide",
    "effective_settings",
    "request_directives",
    "upstream_identity",
]

#: Part of every key: bump it when the key's recipe changes, so old entries are never read.
KEY_VERSION = 1
SHARED_SCOPE = "shared"

#: Top-level request fields left out of the key because they cannot change the response
#: content. Everything else is part of the key, including fields the gateway does not know:
#: an unknown field is assumed to matter.
IGNORED_FIELDS: frozenset[str] = frozenset(
    {
        # Deprecated end-user ID, used by OpenAI for abuse monitoring only.
        "user",
        # Free-form tags kept with stored objects; never seen by the model.
        "metadata",
        # include_usage only changes framing (the usage chunk and "usage":null keys), which the
        # gateway always requests upstream and strips at replay for clients that did not ask;
        # include_obfuscation is random padding that does not depend on the content.
        "stream_options",
        # Successor of `user`: abuse-detection ID, not an input of the model.
        "safety_identifier",
        # OpenAI's own prompt-cache routing hints: they change latency and the reported
        # cached_tokens, not the output.
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        # The billing/latency tier (auto, default, flex, priority, ...): same model, same
        # sampling, so the same output. A hit costs no upstream tokens and is served at once,
        # so the tier has nothing left to buy. The replayed body still reports the tier the
        # original call ran on.
        "service_tier",
        # Represented by the separate `stream` flag of the key (absent and false are the same).
        "stream",
    }
)
# `store` is deliberately NOT ignored: it does not change the generated text, but it decides
# whether the response id can be fetched again or chained with previous_response_id. With
# `responses_with_store` on, a store:true client must not receive the id of a store:false call
# (it would 404 on the next turn), so the two are separate entries.

Reason = Literal[
    "ok",
    "forced",
    "disabled",
    "other",
    "stateful",
    "store",
    "images",
    "model",
    "temperature",
    "n",
]


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The cache settings in force for one team: its overrides merged over the globals."""

    enabled: bool
    ttl_seconds: int
    max_entry_bytes: int
    scope: Literal["team", "shared"]
    models: tuple[str, ...]
    exclude_models: tuple[str, ...]
    images: bool
    responses_with_store: bool
    lock_seconds: float
    wait_seconds: float

    def allows_model(self, model: str | None) -> bool:
        """``models`` match and ``exclude_models`` do not; a missing model matches as ``""``."""
        name = model or ""
        return _matches(name, self.models) and not _matches(name, self.exclude_models)


@functools.lru_cache(maxsize=4096)
def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    # Memoised, bounded: asked on every request, by few distinct (model, patterns) pairs.
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def effective_settings(global_: CacheConfig, team: TeamCacheConfig) -> CacheSettings:
    """Team overrides replace the global values; unset team fields inherit them.

    ``enabled`` is the exception: the global switch is a master switch, so a team can only
    turn caching off for itself.
    """
    return CacheSettings(
        enabled=global_.enabled and team.enabled is not False,
        ttl_seconds=team.ttl_seconds if team.ttl_seconds is not None else global_.ttl_seconds,
        max_entry_bytes=global_.max_entry_bytes,
        scope=team.scope if team.scope is not None else global_.scope,
        models=tuple(team.models if team.models is not None else global_.models),
        exclude_models=tuple(
            team.exclude_models if team.exclude_models is not None else global_.exclude_models
        ),
        images=team.images if team.images is not None else global_.images,
        responses_with_store=global_.responses_with_store,
        lock_seconds=global_.lock_seconds,
        wait_seconds=global_.wait_seconds,
    )


def cache_scope(settings: CacheSettings, team: str) -> str:
    """``"team:<name>"`` (the default: entries private to the team) or ``"shared"``."""
    return SHARED_SCOPE if settings.scope == "shared" else f"team:{team}"


def upstream_identity(upstream: UpstreamConfig) -> str:
    """What makes two upstreams interchangeable for caching: URL, organization and project.

    The API key is left out on purpose: rotating it must not empty the cache.
    """
    known = _IDENTITIES.get(id(upstream))
    if known is not None and known[0] is upstream:
        return known[1]
    identity = "|".join(
        (str(upstream.base_url).rstrip("/"), upstream.organization or "", upstream.project or "")
    )
    if len(_IDENTITIES) > 64:  # configs replaced by reloads
        _IDENTITIES.clear()
    _IDENTITIES[id(upstream)] = (upstream, identity)
    return identity


#: id(upstream config) -> (the config, its identity): asked on every cacheable request.
_IDENTITIES: dict[int, tuple[UpstreamConfig, str]] = {}


# --------------------------------------------------------------------------------------------
# Decision
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    cacheable: bool
    #: Short and from a fixed set, so it can label a metric: "ok" or "forced" when cacheable,
    #: else the first rule that refused.
    reason: Reason

    def __bool__(self) -> bool:
        return self.cacheable


_OK = Decision(True, "ok")
_FORCED = Decision(True, "forced")


def _no(reason: Reason) -> Decision:
    return Decision(False, reason)


def decide(
    info: RequestInfo, body: dict[str, Any], settings: CacheSettings, *, force: bool
) -> Decision:
    """May this request be answered from, and stored into, the cache?"""
    if not settings.enabled:
        return _no("disabled")
    refusal = info.api.cache_refusal(body, settings)
    if refusal is not None:
        return _no(refusal)
    if not settings.allows_model(info.model):
        return _no("model")
    if not info.api.sampled:  # Embeddings; Images, once a deployment opted in
        return _OK
    # Sampled APIs: deterministic sampling and a single output.
    if info.temperature != 0:  # None is the default, 1
        return _FORCED if force else _no("temperature")
    if info.n != 1:  # Completions: max(n, best_of)
        return _FORCED if force else _no("n")
    return _OK


@dataclass(frozen=True, slots=True)
class Directives:
    """What the client's request headers ask of the cache."""

    lookup: bool = True  # false on Cache-Control: no-cache
    store: bool = True  # false on Cache-Control: no-store
    force: bool = False  # x-gateway-cache: force


def request_directives(cache_control: str | None, gateway_cache: str | None) -> Directives:
    """Parse ``Cache-Control`` (``no-cache``, ``no-store``) and ``x-gateway-cache: force``."""
    tokens: set[str] = set()
    if cache_control:
        for part in cache_control.split(","):
            tokens.add(part.split("=", 1)[0].strip().lower())
    force = gateway_cache is not None and gateway_cache.strip().lower() == "force"
    return Directives(lookup="no-cache" not in tokens, store="no-store" not in tokens, force=force)


# --------------------------------------------------------------------------------------------
# Key
# --------------------------------------------------------------------------------------------

#: An integral float as orjson writes it below 1e16 (``0.0``, ``-2.0``), then the delimiter that
#: ends a JSON number in compact output. Only when this occurs is the slower walk needed.
_INTEGRAL_FLOAT = re.compile(rb"[0-9]\.0(?=[,}\]])")
#: Integral floats up to here are exact as ints and printed by orjson with ".0".
_EXACT_INT_LIMIT = 1e15


def _canonical_numbers(value: Any) -> Any:
    """``0.0`` -> ``0``: JSON has one number type and OpenAI reads 0 and 0.0 alike."""
    if type(value) is float:
        if value.is_integer() and abs(value) < _EXACT_INT_LIMIT:
            return int(value)
        return value
    if isinstance(value, dict):
        return {k: _canonical_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical_numbers(v) for v in value]
    return value


def cache_key(
    *, method: str, path: str, body: dict[str, Any], stream: bool, scope: str, upstream_id: str
) -> str:
    """The entry's key: ``"<scope>:<sha256 hex>"``.

    The digest covers the key version, method, path (relative to the upstream base, query
    included, as the gateway forwards it), upstream identity, scope, stream flag and the body
    without ``IGNORED_FIELDS``, as canonical JSON (sorted keys, no whitespace, integral floats
    written as integers). Headers never take part. The scope is repeated in clear in front of
    the digest only so that a backend can purge one scope (the digest covers it as well).
    """
    if not scope or any(c in scope for c in "*?[]\\"):
        raise ValueError(f"invalid cache scope {scope!r}")
    document = {
        "v": KEY_VERSION,
        "method": method.upper(),
        "path": path,
        "upstream": upstream_id,
        "scope": scope,
        "stream": stream,
        "body": {k: v for k, v in body.items() if k not in IGNORED_FIELDS},
    }
    canonical = json_codec.dumps_sorted(document)
    if _INTEGRAL_FLOAT.search(canonical):
        canonical = json_codec.dumps_sorted(_canonical_numbers(document))
    return f"{scope}:{hashlib.sha256(canonical).hexdigest()}"
