"""Secrets stay secret: the upstream key, the JWT secret, the metrics token and every team
token never show up where clients or operators can read them.

The main test drives the suite's kinds of traffic (successes, streams, cache hits, 4xx, 429,
upstream errors, timeouts, cut streams, invalid tokens, an internal error with a traceback)
against gateways configured with recognisable secrets, captures every response (status line,
headers, body), every log record of every logger at DEBUG (formatted by the gateway's own
``JsonFormatter``, plus the raw record attributes) and the ``/metrics`` text, and searches all
of it for each secret. ``gateway check-config`` on broken files that hold the secrets must name
the bad field's path, never a value.

Admin surfaces refuse team tokens: ``/metrics`` behind ``metrics.bearer_token`` and
``/v1/gateway/usage`` (which only ever answers for the caller's own team).

Rotation: a config reload (what SIGHUP and the file poll run) puts a new upstream key and a new
JWT secret in force at once; tokens signed with the old secret are refused even when cached.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from gateway.cli import main as cli_main
from gateway.log import JsonFormatter
from gateway.mock import MockUpstream, start_mock_upstream
from gateway.reload import ConfigReloader
from gateway.state import STATE
from tests.support.gateway_proc import (
    JWT_SECRET,
    UPSTREAM_KEY,
    RunningGateway,
    base_config,
    token,
)
from tests.support.gateway_subprocess import GatewayProcess
from tests.support.redis_proc import free_port
from tests.test_quota_gateway import wait_until

METRICS_TOKEN = "metrics-BEARER-SECRET-91c2e0aa"
OTHER_UPSTREAM_KEY = "sk-upstream-WRONG-KEY-5e8d41b7"
REDIS_PASSWORD = "redis-PASSWORD-0d9c7f33"
MESSAGES = [{"role": "user", "content": "Colour of the sky?"}]
TEAMS = {
    "ml": {"models": ["gpt-4o*", "gpt-5*", "text-embedding-*"]},
    "web": {"models": ["gpt-4o-mini"], "paths": ["/chat/completions", "/models*"]},
    "capped": {"quotas": [{"metric": "requests", "limit": 1, "window": "day"}]},
    "off": {"enabled": False},
}
JWT_SHAPE = re.compile(r"eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{16,}")


@dataclass
class Capture:
    """Everything a client saw."""

    seen: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    async def call(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        *,
        auth: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> int:
        sent = dict(headers or {})
        if auth is not None:
            sent["Authorization"] = f"Bearer {auth}"
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        async with session.request(method, url, data=data, headers=sent) as resp:
            content = await resp.read()
            self.seen.append(
                f"{resp.status} {resp.reason}\n"
                + "\n".join(f"{k}: {v}" for k, v in resp.headers.items())
                + "\n\n"
                + content.decode("utf-8", "replace")
            )
            self.statuses.append(resp.status)
            return resp.status


def secrets_in(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value in text]


async def test_no_secret_in_any_response_log_line_metric_or_trace(
    make_gateway, upstream: MockUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    explode = [False]

    def clock() -> float:
        if explode[0]:
            raise RuntimeError("injected fault: clock unavailable")
        return time.time()

    gw: RunningGateway = await make_gateway(
        clock=clock,
        upstream={"read_timeout_seconds": 0.5},
        metrics={"bearer_token": METRICS_TOKEN},
        teams=TEAMS,
    )
    dead = await make_gateway(
        upstream={"base_url": f"http://127.0.0.1:{free_port()}/v1"}, teams=TEAMS
    )
    wrong_key = await make_gateway(upstream={"api_key": OTHER_UPSTREAM_KEY}, teams=TEAMS)
    tokens = {team: token(team) for team in ("ml", "web", "capped", "off")}
    bad_tokens = {
        "wrong secret": token("ml", secret="w" * 48),
        "expired": token("ml", ttl=-3600),
        "unknown team": token("nobody"),
        "garbage": "sk-not-a-jwt-" + "x" * 40,
    }
    secrets = {
        "upstream key": UPSTREAM_KEY,
        "other upstream key": OTHER_UPSTREAM_KEY,
        "JWT secret": JWT_SECRET,
        "metrics token": METRICS_TOKEN,
        **{f"token {team}": value for team, value in tokens.items()},
        **{f"bad token {name}": value for name, value in bad_tokens.items()},
    }
    chat = {"model": "gpt-4o-mini", "messages": MESSAGES}
    cap = Capture()
    ml = tokens["ml"]
    async with aiohttp.ClientSession() as s:
        url = gw.url
        # Successes: JSON, streams (usage hidden and shown), other APIs, a cache hit.
        await cap.call(s, "POST", url + "/chat/completions", auth=ml, body=chat)
        await cap.call(s, "POST", url + "/chat/completions", auth=ml, body={**chat, "stream": True})
        await cap.call(
            s,
            "POST",
            url + "/chat/completions",
            auth=ml,
            body={**chat, "stream": True, "stream_options": {"include_usage": True}},
        )
        await cap.call(
            s, "POST", url + "/responses", auth=ml, body={"model": "gpt-5", "input": "x"}
        )
        await cap.call(
            s,
            "POST",
            url + "/responses",
            auth=ml,
            body={"model": "gpt-5", "input": "x", "stream": True},
        )
        await cap.call(
            s,
            "POST",
            url + "/embeddings",
            auth=ml,
            body={"model": "text-embedding-3-small", "input": "a"},
        )
        for _ in range(2):  # miss, then hit
            await cap.call(
                s, "POST", url + "/chat/completions", auth=ml, body={**chat, "temperature": 0}
            )
        await cap.call(s, "GET", url + "/models", auth=tokens["web"])
        await cap.call(s, "GET", url + "/models/gpt-4o-mini", auth=tokens["web"])
        await cap.call(s, "GET", url + "/gateway/usage", auth=tokens["capped"])
        await cap.call(s, "GET", gw.root + "/healthz")
        await cap.call(s, "GET", gw.root + "/readyz")
        # Client errors: 400, 403, 404, 413, 429.
        await cap.call(s, "POST", url + "/chat/completions", auth=ml, raw=b"{not json")
        await cap.call(s, "POST", url + "/chat/completions", auth=ml, body={**chat, "model": 5})
        await cap.call(
            s,
            "POST",
            url + "/chat/completions",
            auth=tokens["web"],
            body={**chat, "model": "gpt-5"},
        )
        await cap.call(
            s, "POST", url + "/embeddings", auth=tokens["web"], body={"model": "x", "input": "a"}
        )
        await cap.call(s, "GET", url + "/models/o3", auth=tokens["web"])
        await cap.call(s, "GET", url + "/v1/%2e%2e/metrics", auth=ml)
        await cap.call(
            s, "POST", url + "/chat/completions", auth=ml, body={**chat, "pad": "x" * (33 << 20)}
        )
        for _ in range(2):  # the second is refused by the quota
            await cap.call(s, "POST", url + "/chat/completions", auth=tokens["capped"], body=chat)
        # Upstream trouble: its own errors, a timeout, a cut stream, unreachable, wrong key.
        for status in ("500", "429", "401"):
            await cap.call(
                s,
                "POST",
                url + "/chat/completions",
                auth=ml,
                body=chat,
                headers={"x-mock-status": status},
            )
        await cap.call(
            s,
            "POST",
            url + "/chat/completions",
            auth=ml,
            body=chat,
            headers={"x-mock-first-byte-delay-ms": "800"},
        )
        await cap.call(
            s,
            "POST",
            url + "/chat/completions",
            auth=ml,
            body={**chat, "stream": True},
            headers={"x-mock-drop-after-chunks": "2"},
        )
        await cap.call(s, "POST", dead.url + "/chat/completions", auth=ml, body=chat)
        await cap.call(s, "POST", wrong_key.url + "/chat/completions", auth=ml, body=chat)
        # Invalid and refused tokens, in every place a client might put them.
        for bad in [*bad_tokens.values(), tokens["off"]]:
            await cap.call(s, "POST", url + "/chat/completions", auth=bad, body=chat)
            await cap.call(s, "GET", url + "/gateway/usage", auth=bad)
        await cap.call(s, "GET", url + f"/models?api_key={ml}")
        await cap.call(s, "GET", url + "/models", headers={"Authorization": f"Basic {ml}"})
        # An internal error: logged with its traceback, answered with a generic 500.
        explode[0] = True
        await cap.call(s, "POST", url + "/chat/completions", auth=tokens["capped"], body=chat)
        explode[0] = False
        # The metrics, with the right token (and refused without it).
        await cap.call(
            s, "GET", gw.root + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
        await cap.call(s, "GET", gw.root + "/metrics", auth=ml)
        await cap.call(s, "GET", dead.root + "/metrics")

    statuses = set(cap.statuses)
    assert {200, 400, 401, 403, 404, 413, 429, 500, 502, 504} <= statuses, statuses
    assert any(r.exc_info for r in caplog.records), "the internal error was logged with a trace"
    assert any("gateway_requests_total" in text for text in cap.seen), "metrics were scraped"

    formatter = JsonFormatter()
    logs = [formatter.format(r) for r in caplog.records]
    logs += [repr(r.__dict__) + r.getMessage() for r in caplog.records]
    for where, texts in (("responses", cap.seen), ("logs", logs)):
        for text in texts:
            assert not secrets_in(text, secrets), (where, secrets_in(text, secrets), text[:500])
    # Nor did a team token ever reach the upstream.
    upstream_side = "".join(
        repr(r.headers) + r.body.decode("utf-8", "replace") for r in upstream.requests
    )
    assert not secrets_in(upstream_side, {k: v for k, v in secrets.items() if "token" in k})


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def check_config(
    path: Path, capsys: pytest.CaptureFixture[str], env: dict[str, str] | None = None
) -> tuple[int, str]:
    """``gateway check-config PATH``: the CLI's own entry point, output captured."""
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        code = cli_main(["check-config", str(path)])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_check_config_names_the_bad_field_never_a_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = {
        "upstream key": UPSTREAM_KEY,
        "JWT secret": JWT_SECRET,
        "metrics token": METRICS_TOKEN,
        "redis password": REDIS_PASSWORD,
        "short secret": "short-SECRET-4411",
    }
    good: dict[str, Any] = {
        "upstream": {"api_key": UPSTREAM_KEY},
        "auth": {"hs_secret": JWT_SECRET},
        "store": {"redis_url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6399/0"},
        "metrics": {"bearer_token": METRICS_TOKEN},
        "teams": {"ml": {}},
    }
    cases: list[tuple[str, Any, list[str], dict[str, str]]] = [
        (
            "bad fields next to the secrets",
            {
                **good,
                "server": {"port": "eighty"},
                "teams": {"ml": {"models": ["gpt-4o", ""]}},
                "upstream": {"api_key": UPSTREAM_KEY, "api_kye": UPSTREAM_KEY},
            },
            ["server.port", "teams.ml.models[1]", "upstream.api_kye"],
            {},
        ),
        (
            "the secret fields themselves invalid",
            {
                **good,
                "upstream": {"api_key": [UPSTREAM_KEY]},
                "auth": {"hs_secret": "short-SECRET-4411"},
                "metrics": {"bearer_token": {"value": METRICS_TOKEN}},
                "store": {"redis_url": f"redis://:{REDIS_PASSWORD}@h:1/0", "on_error": "maybe"},
            },
            ["upstream.api_key", "auth.hs_secret", "metrics.bearer_token", "store.on_error"],
            {},
        ),
        (
            "a secret substituted from the environment",
            {**good, "upstream": {"api_key": "${SECRET_FROM_ENV}"}, "server": {"port": -1}},
            ["server.port"],
            {"SECRET_FROM_ENV": UPSTREAM_KEY},
        ),
    ]
    for i, (name, data, where, env) in enumerate(cases):
        code, out = check_config(write_config(tmp_path / f"{i}.yaml", data), capsys, env)
        assert code == 1, (name, out)
        for path in where:
            assert path in out, (name, path, out)
        assert not secrets_in(out, secrets), (name, secrets_in(out, secrets), out)
    # Invalid YAML on the very line holding the key: line and column, never the line's text.
    broken = tmp_path / "broken.yaml"
    broken.write_text(f'upstream:\n  api_key: "{UPSTREAM_KEY}\nauth: {{hs_secret: x}}\n')
    code, out = check_config(broken, capsys)
    assert code == 1 and "not valid YAML" in out and not secrets_in(out, secrets), out
    code, out = check_config(write_config(tmp_path / "good.yaml", good), capsys)
    assert code == 0 and not secrets_in(out, secrets), out


async def test_serve_writes_no_team_token_to_its_output(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    gw = GatewayProcess(base_config(upstream.url, teams=TEAMS), tmp_path)
    try:
        await gw.start()
        async with aiohttp.ClientSession() as s, s.get(gw.url + "/models") as resp:
            assert resp.status == 401
    finally:
        gw.stop()
    output = gw.log_path.read_text()
    for candidate in JWT_SHAPE.findall(output):
        with pytest.raises(jwt.PyJWTError):
            jwt.decode(candidate, JWT_SECRET, algorithms=["HS256"])
    assert JWT_SECRET not in output and UPSTREAM_KEY not in output


async def _send_malformed_authorization(port: int, tok: str) -> bytes:
    """A token followed by a stray CR, as `curl -H "Authorization: Bearer $(cat token)"`
    sends when the file has Windows line endings: aiohttp's parser refuses the line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
        + tok.encode()
        + b"\r\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    return answer


async def test_malformed_authorization_line_does_not_put_the_token_in_the_log(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    gw = GatewayProcess(base_config(upstream.url, teams=TEAMS), tmp_path)
    tok = token("ml", ttl=7200)
    try:
        await gw.start()
        answer = await _send_malformed_authorization(gw.port, tok)
        assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]

        async def logged() -> bool:
            return "Error handling request" in gw.log()

        await wait_until(logged)  # the parser error reached the log (the token with it?)
    finally:
        gw.stop()
    assert tok not in gw.log_path.read_text()


async def test_malformed_authorization_line_is_not_echoed(gateway: RunningGateway) -> None:
    tok = token("ml", ttl=7200)
    answer = await _send_malformed_authorization(gateway.port, tok)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b" 400 " in head.split(b"\r\n")[0]
    assert tok.encode() not in answer
    # OpenAI-shaped, so an SDK raises BadRequestError, and with the gateway's request id.
    assert b"content-type: application/json" in head.lower()
    assert b"x-gateway-request-id: gw-" in head.lower()
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


async def test_admin_surfaces_refuse_team_tokens(make_gateway, upstream: MockUpstream) -> None:
    gw = await make_gateway(metrics={"bearer_token": METRICS_TOKEN}, teams=TEAMS)
    cap = Capture()
    async with aiohttp.ClientSession() as s:
        refused = [
            await cap.call(s, "GET", gw.root + "/metrics"),
            await cap.call(s, "GET", gw.root + "/metrics", auth=token("ml")),
            await cap.call(s, "GET", gw.root + "/metrics", auth=UPSTREAM_KEY),
            await cap.call(s, "GET", gw.root + "/metrics", auth=JWT_SECRET),
            await cap.call(s, "GET", gw.root + f"/metrics?token={METRICS_TOKEN}"),
            await cap.call(
                s, "GET", gw.root + "/metrics", headers={"Authorization": METRICS_TOKEN}
            ),
            await cap.call(
                s,
                "GET",
                gw.root + "/metrics",
                headers={"Authorization": f"bearer  {METRICS_TOKEN}"},
            ),
            await cap.call(s, "GET", gw.url + "/metrics", auth=token("ml")),  # not the same route
        ]
        assert refused[:-1] == [401] * 7
        assert refused[-1] == 404  # /v1/metrics is an (unknown) upstream path, not the metrics
        assert await cap.call(s, "GET", gw.root + "/metrics", auth=METRICS_TOKEN) == 200
        assert "gateway_requests_total" in cap.seen[-1]
        # The usage of another team is never reachable: every spelling answers for the caller.
        for path in ("/gateway/usage?team=ml", "/gateway/usage/", "/gateway/usage"):
            status = await cap.call(
                s, "GET", gw.url + path, auth=token("web"), headers={"x-team": "ml"}
            )
            if status == 200:
                assert json.loads(cap.seen[-1].partition("\n\n")[2])["team"] == "web"
        assert await cap.call(s, "GET", gw.url + "/gateway/usage", auth=token("off")) == 401
    for text in cap.seen[:-1]:
        assert METRICS_TOKEN not in text and '"team":"ml"' not in text.replace(" ", "")


async def test_rotating_the_upstream_key_and_jwt_secret_by_reload(
    make_gateway, upstream: MockUpstream, tmp_path: Path
) -> None:
    """What the operator's rotation procedure (docs/security.md) relies on: a reloaded config
    with a new upstream key and a new JWT secret is in force for the next request; tokens
    signed with the old secret are refused at once, although the gateway had cached them."""
    gw: RunningGateway = await make_gateway(teams=TEAMS)
    old_token = token("ml")
    new_key, new_secret = "sk-upstream-ROTATED-KEY-aa01", "rotated-jwt-secret-" + "z" * 32
    rotated = await start_mock_upstream(host="127.0.0.1", port=0, api_key=new_key)
    try:
        async with aiohttp.ClientSession() as s:
            cap = Capture()
            assert await cap.call(s, "GET", gw.url + "/models", auth=old_token) == 200  # cached
            assert upstream.requests[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
            path = write_config(
                tmp_path / "gw.yaml",
                base_config(
                    rotated.url,  # the same upstream, now accepting only the new key
                    upstream={"api_key": new_key},
                    auth={"algorithms": ["HS256"], "hs_secret": new_secret},
                    teams=TEAMS,
                ),
            )
            # What SIGHUP and the file poll run in `gateway serve`.
            assert ConfigReloader(path, gw.runner.app[STATE], env={}).reload()
            assert await cap.call(s, "GET", gw.url + "/models", auth=old_token) == 401
            new_token = token("ml", secret=new_secret)
            assert await cap.call(s, "GET", gw.url + "/models", auth=new_token) == 200
        assert rotated.requests[-1].headers["authorization"] == f"Bearer {new_key}"
        assert len(rotated.requests) == 1 and len(upstream.requests) == 1
    finally:
        await rotated.close()
