"""gateway.cache.policy: what is cacheable, and the canonical key (pure)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gateway import apis
from gateway.apis import ApiSpec, classify
from gateway.cache.policy import (
    IGNORED_FIELDS,
    CacheSettings,
    Directives,
    cache_key,
    cache_scope,
    decide,
    effective_settings,
    request_directives,
    upstream_identity,
)
from gateway.config import CacheConfig, TeamCacheConfig, UpstreamConfig

SETTINGS = effective_settings(CacheConfig(), TeamCacheConfig())
PERMISSIVE = effective_settings(
    CacheConfig(images=True, responses_with_store=True), TeamCacheConfig()
)

CHAT: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Colour of the sky?"}],
    "temperature": 0,
}
RESPONSES: dict[str, Any] = {
    "model": "gpt-5-mini",
    "input": "Colour of the sky?",
    "temperature": 0,
    "store": False,
}
COMPLETIONS: dict[str, Any] = {"model": "gpt-3.5-turbo-instruct", "prompt": "Hi", "temperature": 0}
EMBEDDINGS: dict[str, Any] = {"model": "text-embedding-3-small", "input": "hello"}
IMAGES: dict[str, Any] = {"model": "gpt-image-1", "prompt": "a cat"}

PATHS = {
    apis.CHAT: "/chat/completions",
    apis.RESPONSES: "/responses",
    apis.COMPLETIONS: "/completions",
    apis.EMBEDDINGS: "/embeddings",
    apis.IMAGES: "/images/generations",
}
BASES = {
    apis.CHAT: CHAT,
    apis.RESPONSES: RESPONSES,
    apis.COMPLETIONS: COMPLETIONS,
    apis.EMBEDDINGS: EMBEDDINGS,
    apis.IMAGES: IMAGES,
}


def run(
    api: ApiSpec,
    changes: dict[str, Any] | None = None,
    *,
    settings: CacheSettings = SETTINGS,
    force: bool = False,
    drop: tuple[str, ...] = (),
) -> tuple[bool, str]:
    body = {**BASES[api], **(changes or {})}
    for name in drop:
        body.pop(name, None)
    info = api.parse(body)
    decision = decide(info, body, settings, force=force)
    return decision.cacheable, decision.reason


# ------------------------------------------------------------------------------ settings


def test_effective_settings_inherit_and_override() -> None:
    glob = CacheConfig(ttl_seconds=60, models=["gpt-*"], exclude_models=["gpt-4o"], images=False)
    inherited = effective_settings(glob, TeamCacheConfig())
    assert inherited.ttl_seconds == 60
    assert inherited.models == ("gpt-*",)
    assert inherited.exclude_models == ("gpt-4o",)
    assert inherited.scope == "team"
    assert inherited.enabled is True

    team = TeamCacheConfig(
        ttl_seconds=5, scope="shared", models=["o*"], exclude_models=[], images=True
    )
    merged = effective_settings(glob, team)
    assert (merged.ttl_seconds, merged.scope, merged.images) == (5, "shared", True)
    assert merged.models == ("o*",)
    assert merged.exclude_models == ()
    assert merged.lock_seconds == glob.lock_seconds
    assert merged.wait_seconds == glob.wait_seconds
    assert merged.max_entry_bytes == glob.max_entry_bytes


@pytest.mark.parametrize(
    ("global_on", "team", "expected"),
    [
        (True, None, True),
        (True, True, True),
        (True, False, False),
        (False, None, False),
        (False, True, False),  # the global switch is a master switch
    ],
)
def test_enabled_is_a_master_switch(global_on: bool, team: bool | None, expected: bool) -> None:
    settings = effective_settings(CacheConfig(enabled=global_on), TeamCacheConfig(enabled=team))
    assert settings.enabled is expected


def test_scope_names() -> None:
    assert cache_scope(SETTINGS, "ml") == "team:ml"
    shared = effective_settings(CacheConfig(scope="shared"), TeamCacheConfig())
    assert cache_scope(shared, "ml") == "shared"


def test_upstream_identity_ignores_the_key() -> None:
    a = UpstreamConfig(api_key="sk-1", base_url="https://api.openai.com/v1/")
    b = UpstreamConfig(api_key="sk-2", base_url="https://api.openai.com/v1")
    c = UpstreamConfig(api_key="sk-1", project="proj_x")
    assert upstream_identity(a) == upstream_identity(b)
    assert upstream_identity(a) != upstream_identity(c)


# ------------------------------------------------------------------------------ decide


@pytest.mark.parametrize(
    ("api", "changes", "expected"),
    [
        # deterministic and single output
        (apis.CHAT, {}, (True, "ok")),
        (apis.CHAT, {"temperature": 0.0, "n": 1}, (True, "ok")),
        (apis.CHAT, {"temperature": 0.2}, (False, "temperature")),
        (apis.CHAT, {"temperature": None}, (False, "temperature")),
        (apis.CHAT, {"n": 2}, (False, "n")),
        (apis.CHAT, {"store": True}, (False, "store")),
        (apis.CHAT, {"store": False}, (True, "ok")),
        (apis.CHAT, {"stream": True}, (True, "ok")),
        (apis.COMPLETIONS, {}, (True, "ok")),
        (apis.COMPLETIONS, {"best_of": 1}, (True, "ok")),
        (apis.COMPLETIONS, {"best_of": 3}, (False, "n")),
        (apis.COMPLETIONS, {"n": 2}, (False, "n")),
        (apis.COMPLETIONS, {"temperature": 1}, (False, "temperature")),
        (apis.RESPONSES, {}, (True, "ok")),
        (apis.RESPONSES, {"temperature": 0.7}, (False, "temperature")),
        (apis.RESPONSES, {"store": True}, (False, "store")),
        (apis.RESPONSES, {"store": None}, (False, "store")),  # default is true
        (apis.RESPONSES, {"previous_response_id": "resp_1"}, (False, "stateful")),
        (apis.RESPONSES, {"conversation": "conv_1"}, (False, "stateful")),
        (apis.RESPONSES, {"conversation": {"id": "conv_1"}}, (False, "stateful")),
        (apis.RESPONSES, {"background": True}, (False, "stateful")),
        (apis.RESPONSES, {"background": False}, (True, "ok")),
        # embeddings: always, whatever sampling-looking fields say
        (apis.EMBEDDINGS, {}, (True, "ok")),
        (apis.EMBEDDINGS, {"encoding_format": "base64", "dimensions": 8}, (True, "ok")),
        # images: only when opted in
        (apis.IMAGES, {}, (False, "images")),
        (apis.IMAGES, {"n": 3, "background": "transparent"}, (False, "images")),
    ],
)
def test_decide_matrix(api: ApiSpec, changes: dict[str, Any], expected: tuple[bool, str]) -> None:
    assert run(api, changes) == expected


def test_responses_store_absent_is_store_true() -> None:
    assert run(apis.RESPONSES, drop=("store",)) == (False, "store")
    assert run(apis.RESPONSES, drop=("store",), settings=PERMISSIVE) == (True, "ok")
    assert run(apis.CHAT, {"store": True}, settings=PERMISSIVE) == (True, "ok")


def test_images_opt_in_ignores_sampling_and_background_colour() -> None:
    assert run(apis.IMAGES, {"n": 3, "background": "transparent"}, settings=PERMISSIVE) == (
        True,
        "ok",
    )
    team_images = effective_settings(CacheConfig(), TeamCacheConfig(images=True))
    assert run(apis.IMAGES, drop=("model",), settings=team_images) == (True, "ok")


def test_other_never() -> None:
    for method, path, body in [
        ("POST", "/files", {"purpose": "batch"}),
        ("GET", "/models", None),
        ("POST", "/audio/speech", {"model": "tts-1", "input": "hi", "temperature": 0}),
    ]:
        api = classify(method, path)
        assert api is apis.OTHER
        info = api.parse(body)
        for force in (False, True):
            decision = decide(info, body or {}, PERMISSIVE, force=force)
            assert (decision.cacheable, decision.reason) == (False, "other")
            assert not decision


def test_disabled_wins() -> None:
    off = effective_settings(CacheConfig(), TeamCacheConfig(enabled=False))
    for api in BASES:
        assert run(api, settings=off, force=True) == (False, "disabled")


@pytest.mark.parametrize(
    ("models", "exclude", "model", "ok"),
    [
        (["*"], [], "gpt-4o-mini", True),
        (["gpt-4o*"], [], "gpt-4o-mini", True),
        (["gpt-4o*"], [], "o3", False),
        (["*"], ["gpt-4o-mini"], "gpt-4o-mini", False),
        (["gpt-*"], ["gpt-4o*"], "gpt-4o", False),  # exclude wins
        (["gpt-*"], ["gpt-4o*"], "gpt-5", True),
        (["GPT-*"], [], "gpt-5", False),  # case-sensitive like the rest of the config
    ],
)
def test_model_patterns(models: list[str], exclude: list[str], model: str, ok: bool) -> None:
    settings = effective_settings(
        CacheConfig(models=models, exclude_models=exclude), TeamCacheConfig()
    )
    result = run(apis.CHAT, {"model": model}, settings=settings)
    assert result == ((True, "ok") if ok else (False, "model"))
    assert run(apis.EMBEDDINGS, {"model": model}, settings=settings)[0] is ok


def test_force_lifts_sampling_checks_only() -> None:
    assert run(apis.CHAT, {"temperature": 1.0}, force=True) == (True, "forced")
    assert run(apis.CHAT, {"n": 4}, force=True) == (True, "forced")
    assert run(apis.CHAT, drop=("temperature",), force=True) == (True, "forced")
    assert run(apis.COMPLETIONS, {"best_of": 5}, force=True) == (True, "forced")
    assert run(apis.RESPONSES, {"temperature": 2}, force=True) == (True, "forced")
    # deterministic requests stay "ok" under force
    assert run(apis.CHAT, force=True) == (True, "ok")
    # never lifted: stateful, store, images, models, disabled
    assert run(apis.RESPONSES, {"previous_response_id": "r"}, force=True) == (False, "stateful")
    assert run(apis.RESPONSES, {"background": True}, force=True) == (False, "stateful")
    assert run(apis.RESPONSES, {"store": True}, force=True) == (False, "store")
    assert run(apis.IMAGES, force=True) == (False, "images")
    excluded = effective_settings(CacheConfig(exclude_models=["gpt-*"]), TeamCacheConfig())
    assert run(apis.CHAT, settings=excluded, force=True) == (False, "model")


@pytest.mark.parametrize(
    ("cache_control", "gateway_cache", "expected"),
    [
        (None, None, Directives()),
        ("no-cache", None, Directives(lookup=False)),
        ("No-Store", None, Directives(store=False)),
        ("max-age=0, no-cache, no-store", None, Directives(lookup=False, store=False)),
        ("no-cache-please", None, Directives()),
        (None, "force", Directives(force=True)),
        (None, " FORCE ", Directives(force=True)),
        (None, "hit", Directives()),
    ],
)
def test_request_directives(
    cache_control: str | None, gateway_cache: str | None, expected: Directives
) -> None:
    assert request_directives(cache_control, gateway_cache) == expected


# ------------------------------------------------------------------------------ key


def key(body: dict[str, Any], **overrides: Any) -> str:
    args: dict[str, Any] = {
        "method": "POST",
        "path": "/chat/completions",
        "body": body,
        "stream": False,
        "scope": "team:ml",
        "upstream_id": "https://api.openai.com/v1||",
    }
    args.update(overrides)
    return cache_key(**args)


def test_key_shape() -> None:
    k = key(CHAT)
    scope, _, digest = k.rpartition(":")
    assert scope == "team:ml"
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert key(CHAT, scope="shared").startswith("shared:")


def test_key_is_stable_under_order_and_ignored_fields() -> None:
    base = key(CHAT)
    reordered = dict(reversed(list(CHAT.items())))
    assert key(reordered) == base
    nested_reordered = {**CHAT, "messages": [{"content": "Colour of the sky?", "role": "user"}]}
    assert key(nested_reordered) == base
    noisy = {
        **CHAT,
        "user": "u-1",
        "metadata": {"trace": "abc"},
        "stream_options": {"include_usage": True, "include_obfuscation": False},
        "safety_identifier": "team-17:u-8812",
        "prompt_cache_key": "team-17",
        "prompt_cache_retention": "24h",
        "prompt_cache_options": {"ttl": "30m", "mode": "implicit"},
        "service_tier": "flex",
        "stream": False,
    }
    assert key(noisy) == base
    assert set(noisy) - set(CHAT) == IGNORED_FIELDS


def test_key_numbers_are_canonical() -> None:
    assert key({**CHAT, "temperature": 0}) == key({**CHAT, "temperature": 0.0})
    assert key({**CHAT, "temperature": -0.0}) == key({**CHAT, "temperature": 0})
    assert key({**CHAT, "top_p": 1}) == key({**CHAT, "top_p": 1.0})
    deep_int = {**CHAT, "logit_bias": {"50256": -100}, "tools": [{"x": {"minimum": 2}}]}
    deep_float = {**CHAT, "logit_bias": {"50256": -100.0}, "tools": [{"x": {"minimum": 2.0}}]}
    assert key(deep_int) == key(deep_float)
    assert key({**CHAT, "temperature": 0.5}) != key({**CHAT, "temperature": 0})
    # strings that look like integral floats stay strings
    assert key({**CHAT, "stop": ["1.0"]}) != key({**CHAT, "stop": ["1"]})
    assert key({**CHAT, "stop": "1.0,"}) != key({**CHAT, "stop": "1,"})


def test_key_separates_what_matters() -> None:
    base = key(CHAT)
    different = [
        key(CHAT, stream=True),
        key(CHAT, scope="team:other"),
        key(CHAT, scope="shared"),
        key(CHAT, upstream_id="https://example.test/v1||"),
        key(CHAT, path="/completions"),
        key(CHAT, method="PUT"),
        key({**CHAT, "model": "gpt-4o"}),
        key({**CHAT, "max_completion_tokens": 10}),
        key({**CHAT, "seed": 1}),
        key({**CHAT, "store": False}),  # store decides whether the id can be fetched again
        key({**CHAT, "messages": [{"role": "user", "content": "Colour of the sea?"}]}),
        key({**CHAT, "unknown_new_field": True}),
    ]
    assert base not in different
    assert len(set(different)) == len(different)
    assert key(CHAT, method="post") == base


def test_stream_field_and_flag() -> None:
    # the body's stream field is not hashed; the flag is
    assert key({**CHAT, "stream": True}) == key(CHAT)
    assert key({**CHAT, "stream": False}, stream=True) == key(CHAT, stream=True)


def test_embeddings_float_vs_base64() -> None:
    float_key = key({**EMBEDDINGS, "encoding_format": "float"}, path="/embeddings")
    base64_key = key({**EMBEDDINGS, "encoding_format": "base64"}, path="/embeddings")
    absent_key = key(EMBEDDINGS, path="/embeddings")
    assert len({float_key, base64_key, absent_key}) == 3


def test_key_does_not_mutate_body() -> None:
    body = {**CHAT, "user": "x", "temperature": 0.0}
    snapshot = repr(body)
    key(body)
    assert repr(body) == snapshot


@pytest.mark.parametrize("scope", ["", "team:*", "team:a?", "team:[ab]"])
def test_key_rejects_glob_scopes(scope: str) -> None:
    with pytest.raises(ValueError):
        key(CHAT, scope=scope)
