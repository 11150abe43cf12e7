"""Hostile tokens against the real HTTP gateway: every one is refused with an OpenAI-shaped
401 (or 403 for a valid team asking beyond its policy) and nothing reaches the upstream.

``tests/test_auth.py`` checks the same rules on ``Authenticator`` directly; this file proves
they hold end to end, through aiohttp's header parsing, the middleware and the handler, with a
gateway that allows RS256 *and* HS256 (the set-up where key confusion would bite).

Decisions recorded here (and in docs/security.md):

- ``iat`` in the future (beyond ``auth.leeway_seconds``) is refused: PyJWT >= 2.10 treats it
  like ``nbf`` ("not yet valid").
- An ``Authorization`` line longer than aiohttp's header limit (8190 bytes) never reaches the
  gateway: aiohttp answers 400 itself (plain text, not OpenAI-shaped). Anything shorter is the
  gateway's to refuse, OpenAI-shaped.
- Headers never select a team: ``OpenAI-Organization``, ``OpenAI-Project`` or any ``x-team``
  are ignored for authorisation (and the first two are replaced upstream).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.mock import MockUpstream
from tests.support.gateway_proc import JWT_SECRET, RunningGateway, token
from tests.support.redis_proc import free_port
from tests.test_quota_gateway import wait_until

ISSUER = "https://idp.example"
AUDIENCE = "gateway"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC_PEM = (
    RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
TEAMS = {
    "ml": {"models": ["gpt-4o*", "gpt-5*", "text-embedding-*"]},
    "web": {"models": ["gpt-4o-mini"], "paths": ["/chat/completions", "/models*"]},
    "off": {"enabled": False},
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "team": "ml",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def hs(payload: dict[str, Any] | None = None, key: str = JWT_SECRET, alg: str = "HS256") -> str:
    return jwt.encode(payload if payload is not None else claims(), key, algorithm=alg)


def rs(
    payload: dict[str, Any] | None = None,
    key: rsa.RSAPrivateKey = RSA_KEY,
    headers: dict[str, Any] | None = None,
) -> str:
    return jwt.encode(
        payload if payload is not None else claims(), key, algorithm="RS256", headers=headers
    )


def unsigned(alg: str, payload: dict[str, Any] | None = None) -> str:
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(payload or claims()).encode())}."


def hmac_signed(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def jwk_of(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    data: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return data | {"kid": kid, "alg": "RS256", "use": "sig"}


NOW = int(time.time())
# name -> (Authorization header value, message fragment the 401 must carry)
REJECTED: dict[str, tuple[str, str]] = {
    "alg none": ("Bearer " + unsigned("none"), "algorithm 'none' is not allowed"),
    "alg None (case variant)": ("Bearer " + unsigned("None"), "is not allowed"),
    "HS256 signed with the RS public key": (
        "Bearer " + hmac_signed({"alg": "HS256", "typ": "JWT"}, claims(), RSA_PUBLIC_PEM.encode()),
        "bad signature",
    ),
    "RS256 header over an HMAC signature": (
        "Bearer " + hmac_signed({"alg": "RS256", "typ": "JWT"}, claims(), JWT_SECRET.encode()),
        "bad signature",
    ),
    "RS256 signed by another key": ("Bearer " + rs(key=OTHER_RSA_KEY), "bad signature"),
    "HS256 with a wrong secret": ("Bearer " + hs(key="w" * 48), "bad signature"),
    "HS512 (not configured)": ("Bearer " + hs(alg="HS512"), "algorithm 'HS512' is not allowed"),
    "expired": ("Bearer " + hs(claims(exp=NOW - 3600)), "expired"),
    "nbf in the future": ("Bearer " + hs(claims(nbf=NOW + 3600)), "not yet valid"),
    "iat in the future": ("Bearer " + hs(claims(iat=NOW + 3600)), "not yet valid"),
    "wrong audience": ("Bearer " + hs(claims(aud="other")), "wrong audience"),
    "missing audience": ("Bearer " + hs(claims(aud=None)), "missing claim 'aud'"),
    "wrong issuer": ("Bearer " + hs(claims(iss="https://evil.example")), "wrong issuer"),
    "missing issuer": ("Bearer " + hs(claims(iss=None)), "missing claim 'iss'"),
    "missing exp": ("Bearer " + hs(claims(exp=None)), "missing claim 'exp'"),
    "missing team claim": ("Bearer " + hs(claims(team=None)), "must be a team name"),
    "empty team claim": ("Bearer " + hs(claims(team="")), "must be a team name"),
    "numeric team claim": ("Bearer " + hs(claims(team=7)), "must be a team name"),
    "list team claim": ("Bearer " + hs(claims(team=["ml"])), "must be a team name"),
    "object team claim": ("Bearer " + hs(claims(team={"name": "ml"})), "must be a team name"),
    "unknown team": ("Bearer " + hs(claims(team="nobody")), "unknown team"),
    "team name with path characters": ("Bearer " + hs(claims(team="../ml")), "unknown team"),
    "disabled team": ("Bearer " + hs(claims(team="off")), "disabled"),
    "oversized token (under the header limit)": ("Bearer " + "a" * 8100, "not a valid JWT"),
    "non-base64 segments": ("Bearer @@@.###.$$$", "not a valid JWT"),
    "extra segments": ("Bearer " + hs() + ".extra", "not a valid JWT"),
    "two segments": ("Bearer " + hs().rpartition(".")[0], "not a valid JWT"),
    "empty bearer": ("Bearer ", "expected 'Authorization: Bearer <token>'"),
    "basic scheme": ("Basic " + _b64(b"ml:" + JWT_SECRET.encode()), "expected 'Authorization"),
    "embedded jwk header (attacker key)": (
        "Bearer " + rs(key=OTHER_RSA_KEY, headers={"jwk": jwk_of(OTHER_RSA_KEY, "attacker")}),
        "bad signature",
    ),
}


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    text: str
    headers: dict[str, str]


async def call(
    gw: RunningGateway,
    authorization: str | None,
    *,
    path: str = "/chat/completions",
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> Reply:
    sent = dict(headers or {})
    if authorization is not None:
        sent["Authorization"] = authorization
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method,
            gw.url + path,
            json=(CHAT if body is None else body) if method == "POST" else None,
            headers=sent,
        ) as resp,
    ):
        text = await resp.text()
        payload = json.loads(text) if resp.content_type == "application/json" else {}
        return Reply(resp.status, payload, text, {k.lower(): v for k, v in resp.headers.items()})


def assert_openai_error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply.text
    assert set(reply.body) == {"error"}
    error = reply.body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["type"] == "invalid_request_error"
    assert reply.headers["x-gateway-request-id"].startswith("gw-")


@pytest.fixture
async def gw(make_gateway) -> RunningGateway:
    gateway: RunningGateway = await make_gateway(
        auth={
            "algorithms": ["RS256", "HS256"],
            "hs_secret": JWT_SECRET,
            "public_key": RSA_PUBLIC_PEM,
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "leeway_seconds": 5,
        },
        teams=TEAMS,
    )
    return gateway


async def test_jwt_matrix_every_bad_token_is_401_and_nothing_is_forwarded(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    assert len(REJECTED) >= 20
    for name, (authorization, message) in REJECTED.items():
        reply = await call(gw, authorization)
        assert_openai_error(reply, 401, "invalid_api_key")
        assert message in reply.body["error"]["message"], name
        credential = authorization.partition(" ")[2]
        if credential:
            assert credential not in reply.text, f"{name}: the token was echoed"
    assert upstream.requests == []
    # Control: the same gateway does let well-formed tokens of both families in.
    for good in (hs(), rs()):
        assert (await call(gw, f"Bearer {good}")).status == 200
    assert len(upstream.requests) == 2


async def test_missing_credentials_and_credentials_outside_the_header(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    good = hs()
    for reply in (
        await call(gw, None),
        await call(gw, None, path=f"/chat/completions?api_key={good}"),
        await call(gw, None, headers={"api-key": good, "x-api-key": good}),  # Azure/other styles
        await call(gw, None, headers={"Cookie": f"token={good}"}),
        await call(gw, None, path="/models", method="GET"),
    ):
        assert_openai_error(reply, 401, "invalid_api_key")
        assert "Missing API key" in reply.body["error"]["message"]
    assert upstream.requests == []


async def test_headers_never_choose_the_team(gw: RunningGateway, upstream: MockUpstream) -> None:
    """A token for `web` with every header that could be read as a team claim for `ml`: the
    token's team decides (its model and path allow-lists apply) and nothing is forwarded."""
    claiming_ml = {
        "OpenAI-Organization": "ml",
        "OpenAI-Project": "ml",
        "x-team": "ml",
        "x-gateway-team": "ml",
        "x-forwarded-user": "ml",
    }
    web_token = f"Bearer {hs(claims(team='web'))}"
    reply = await call(gw, web_token, body={**CHAT, "model": "gpt-5"}, headers=claiming_ml)
    assert_openai_error(reply, 403, "model_not_allowed")
    assert "Team 'web'" in reply.body["error"]["message"]
    reply = await call(
        gw,
        web_token,
        path="/embeddings",
        body={"model": "gpt-4o-mini", "input": "x"},
        headers=claiming_ml,
    )
    assert_openai_error(reply, 403, "path_not_allowed")
    # A second token in another header does not count either.
    reply = await call(
        gw,
        web_token,
        body={**CHAT, "model": "gpt-5"},
        headers={"x-api-key": hs(), "Proxy-Authorization": f"Bearer {hs()}"},
    )
    assert_openai_error(reply, 403, "model_not_allowed")
    assert upstream.requests == []
    # Allowed for web: forwarded, with the client's organisation/project headers dropped.
    assert (await call(gw, web_token, body=CHAT, headers=claiming_ml)).status == 200
    seen = upstream.requests[-1].headers
    assert "openai-organization" not in seen and "openai-project" not in seen
    assert seen["authorization"] != web_token and "proxy-authorization" not in seen


async def test_authorization_line_beyond_the_header_limit_is_a_4xx_from_the_server(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(
        b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
        + b"a" * 9000
        + b"\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500
    assert upstream.requests == []
    assert (await call(gw, f"Bearer {hs()}", path="/models", method="GET")).status == 200


async def test_token_with_fractional_exp_stops_working_when_it_expires(
    make_gateway, upstream: MockUpstream
) -> None:
    """RFC 7519 NumericDate may be fractional and PyJWT accepts it, but the token cache only
    read an integer ``exp``: a float ``exp`` was cached with no expiry, so the token kept
    working after it expired (until evicted). Fixed in ``auth.Authenticator._verify``."""
    gw = await make_gateway(auth={"leeway_seconds": 0})
    # PyJWT reads int(exp): the token is valid until the next whole second after `now`, or
    # the one after when that is too close.
    now = time.time()
    exp = float(int(now) + (1 if now % 1 < 0.6 else 2)) + 0.5
    fractional = hs(claims(exp=exp, iss=None, aud=None))
    assert (await call(gw, f"Bearer {fractional}", body=CHAT)).status == 200  # now cached

    async def expired() -> bool:
        return time.time() > int(exp) + 0.05

    await wait_until(expired, within_seconds=5)  # waiting for the wall clock, not for a task
    reply = await call(gw, f"Bearer {fractional}", body=CHAT)
    assert_openai_error(reply, 401, "invalid_api_key")
    assert "expired" in reply.body["error"]["message"]
    assert len(upstream.requests) == 1


# --- JWKS ----------------------------------------------------------------------------------


class KeyServer:
    """A JWKS endpoint (or an attacker's) that counts its hits."""

    def __init__(self, keys: list[dict[str, Any]], *, body: bytes | None = None) -> None:
        self.keys = keys
        self.body = body
        self.hits = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.body is not None:
            return web.Response(body=self.body, content_type="application/json")
        return web.json_response({"keys": self.keys})

    async def start(self) -> KeyServer:
        app = web.Application()
        app.router.add_get("/jwks", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/jwks"
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def key_servers() -> AsyncIterator[list[KeyServer]]:
    servers: list[KeyServer] = []
    yield servers
    for server in servers:
        await server.close()


def jwks_auth(url: str) -> dict[str, Any]:
    return {"algorithms": ["RS256"], "jwks_url": url, "hs_secret": None}


async def test_jwks_unknown_kid_wrong_key_and_foreign_jku_are_401(
    make_gateway, upstream: MockUpstream, key_servers: list[KeyServer]
) -> None:
    idp = await KeyServer([jwk_of(RSA_KEY, "k1")]).start()
    attacker = await KeyServer([jwk_of(OTHER_RSA_KEY, "evil")]).start()
    key_servers += [idp, attacker]
    gw = await make_gateway(auth=jwks_auth(idp.url), teams=TEAMS)
    plain = claims(iss=None, aud=None)
    cases = {
        "unknown kid": rs(plain, key=OTHER_RSA_KEY, headers={"kid": "k9"}),
        "known kid, another key": rs(plain, key=OTHER_RSA_KEY, headers={"kid": "k1"}),
        "jku to the attacker's JWKS": rs(
            plain, key=OTHER_RSA_KEY, headers={"kid": "evil", "jku": attacker.url}
        ),
        "x5u to the attacker": rs(
            plain, key=OTHER_RSA_KEY, headers={"kid": "evil", "x5u": attacker.url}
        ),
        "kid with path characters": rs(plain, key=OTHER_RSA_KEY, headers={"kid": "../../k1"}),
        "HS256 signed with the JWK's modulus": hmac_signed(
            {"alg": "HS256", "kid": "k1"}, plain, json.dumps(jwk_of(RSA_KEY, "k1")).encode()
        ),
    }
    for name, bad in cases.items():
        reply = await call(gw, f"Bearer {bad}")
        assert_openai_error(reply, 401, "invalid_api_key")
        assert reply.status == 401, name
    assert attacker.hits == 0  # token headers never choose where keys come from
    assert upstream.requests == []
    assert (await call(gw, f"Bearer {rs(plain, headers={'kid': 'k1'})}")).status == 200


@pytest.mark.parametrize("failure", ["connection refused", "not JSON", "no keys"])
async def test_jwks_endpoint_down_or_broken_is_401_quickly(
    make_gateway, upstream: MockUpstream, key_servers: list[KeyServer], failure: str
) -> None:
    if failure == "connection refused":
        url = f"http://127.0.0.1:{free_port()}/jwks"
    else:
        server = await KeyServer([], body=b"<html>oops" if failure == "not JSON" else None).start()
        key_servers.append(server)
        url = server.url
    gw = await make_gateway(auth=jwks_auth(url), teams=TEAMS)
    started = time.perf_counter()
    reply = await call(gw, f"Bearer {rs(claims(iss=None, aud=None), headers={'kid': 'k1'})}")
    assert time.perf_counter() - started < 3.0
    assert_openai_error(reply, 401, "invalid_api_key")
    assert "unknown signing key" in reply.body["error"]["message"]
    assert upstream.requests == []


async def test_cross_team_usage_is_only_ever_the_callers(
    gw: RunningGateway, upstream: MockUpstream
) -> None:
    """`/v1/gateway/usage` answers for the token's team; parameters and headers naming
    another team change nothing, and bad tokens get the same 401 as everywhere."""
    web_token = f"Bearer {hs(claims(team='web'))}"
    for path in ("/gateway/usage?team=ml", "/gateway/usage"):
        reply = await call(gw, web_token, path=path, method="GET", headers={"x-team": "ml"})
        assert reply.status == 200 and reply.body["team"] == "web"
    for authorization, _ in list(REJECTED.values())[:8]:
        reply = await call(gw, authorization, path="/gateway/usage", method="GET")
        assert_openai_error(reply, 401, "invalid_api_key")
    reply = await call(gw, f"Bearer {token('ml', secret='w' * 48)}", path="/gateway/usage")
    assert reply.status == 401
    assert upstream.requests == []
