"""JWT verification: what gets a team in, and everything that must not."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth import Authenticator, JwksCache
from gateway.config import AuthConfig, TeamConfig
from gateway.errors import AuthenticationError

SECRET = "s" * 64
TEAMS = {"ml": TeamConfig(), "off": TeamConfig(enabled=False)}

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC_PEM = (
    RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"team": "ml", "iat": now, "exp": now + 600}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def hs(payload: dict[str, Any] | None = None, key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(payload if payload is not None else claims(), key, algorithm=alg)


def auth(**config: Any) -> Authenticator:
    return Authenticator(AuthConfig(**({"hs_secret": SECRET} | config)))


async def verify(authenticator: Authenticator, token: str) -> str:
    principal = await authenticator.authenticate(f"Bearer {token}", TEAMS)
    return principal.team


async def test_valid_hs256_token_names_the_team() -> None:
    assert await verify(auth(), hs()) == "ml"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


UNSIGNED = _b64(b'{"alg":"none","typ":"JWT"}') + "." + _b64(b'{"team":"ml","exp":9999999999}') + "."

CASES: dict[str, tuple[str, str]] = {
    "expired": (hs(claims(exp=int(time.time()) - 3600)), "expired"),
    "not yet valid": (hs(claims(nbf=int(time.time()) + 3600)), "not yet valid"),
    "wrong signature": (hs(key="w" * 48), "bad signature"),
    "alg none": (UNSIGNED, "algorithm 'none' is not allowed"),
    "HS512 when only HS256 allowed": (hs(alg="HS512"), "algorithm 'HS512' is not allowed"),
    "missing exp": (hs(claims(exp=None)), "missing claim 'exp'"),
    "missing team claim": (hs(claims(team=None)), "must be a team name"),
    "empty team claim": (hs(claims(team="")), "must be a team name"),
    "list team claim": (hs(claims(team=["ml"])), "must be a team name"),
    "numeric team claim": (hs(claims(team=7)), "must be a team name"),
    "unknown team": (hs(claims(team="nobody")), "unknown team"),
    "disabled team": (hs(claims(team="off")), "disabled"),
    "garbage": ("not-a-jwt", "not a valid JWT"),
    "non-base64 segments": ("@@@.###.$$$", "not a valid JWT"),
    "extra segments": (hs() + ".extra", "not a valid JWT"),
    "oversized": ("a" * 10_000, "too long"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_rejected_tokens(case: str) -> None:
    token, message = CASES[case]
    with pytest.raises(AuthenticationError, match=message) as info:
        await verify(auth(), token)
    assert info.value.status == 401
    assert info.value.code == "invalid_api_key"


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer  "])
async def test_missing_or_malformed_header(header: str | None) -> None:
    with pytest.raises(AuthenticationError):
        await auth().authenticate(header, TEAMS)


async def test_audience_and_issuer_enforced() -> None:
    a = auth(audience="gateway", issuer="https://idp")
    assert await verify(a, hs(claims(aud="gateway", iss="https://idp"))) == "ml"
    for bad, message in [
        (claims(aud="other", iss="https://idp"), "wrong audience"),
        (claims(iss="https://idp"), "missing claim 'aud'"),
        (claims(aud="gateway", iss="https://evil"), "wrong issuer"),
        (claims(aud="gateway"), "missing claim 'iss'"),
    ]:
        with pytest.raises(AuthenticationError, match=message):
            await verify(a, hs(bad))


async def test_leeway_admits_small_clock_skew() -> None:
    token = hs(claims(exp=int(time.time()) - 5))
    assert await verify(auth(leeway_seconds=30), token) == "ml"
    with pytest.raises(AuthenticationError, match="expired"):
        await verify(auth(leeway_seconds=0), token)


async def test_rs256_with_public_key_and_no_hs_confusion() -> None:
    a = Authenticator(
        AuthConfig(algorithms=["RS256", "HS256"], hs_secret=SECRET, public_key=RSA_PUBLIC_PEM)
    )
    assert await verify(a, jwt.encode(claims(), RSA_KEY, algorithm="RS256")) == "ml"
    # The classic confusion attack: HS256 "signed" with the RSA public key as the secret.
    header = _b64(b'{"alg":"HS256","typ":"JWT"}')
    payload = _b64(f'{{"team":"ml","exp":{int(time.time()) + 600}}}'.encode())
    signature = hmac.new(
        RSA_PUBLIC_PEM.encode(), f"{header}.{payload}".encode(), hashlib.sha256
    ).digest()
    with pytest.raises(AuthenticationError, match="bad signature"):
        await verify(a, f"{header}.{payload}.{_b64(signature)}")
    # An RS-only gateway refuses HS tokens outright.
    rs_only = Authenticator(AuthConfig(algorithms=["RS256"], public_key=RSA_PUBLIC_PEM))
    with pytest.raises(AuthenticationError, match="not allowed"):
        await verify(rs_only, hs())


async def test_es256_token_signed_by_another_key_is_rejected() -> None:
    pem = (
        EC_KEY.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    a = Authenticator(AuthConfig(algorithms=["ES256"], public_key=pem))
    assert await verify(a, jwt.encode(claims(), EC_KEY, algorithm="ES256")) == "ml"
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(AuthenticationError):
        await verify(a, jwt.encode(claims(), other, algorithm="ES256"))


async def test_cached_token_still_honours_team_disable() -> None:
    a = auth()
    token = hs()
    assert await verify(a, token) == "ml"
    with pytest.raises(AuthenticationError, match="disabled"):
        await a.authenticate(f"Bearer {token}", {"ml": TeamConfig(enabled=False)})


class JwksServer:
    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.hits = 0
        self.fail = False

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.fail:
            return web.Response(status=503)
        return web.json_response({"keys": self.keys})


def jwk_for(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    data: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return data | {"kid": kid, "alg": "RS256", "use": "sig"}


async def test_jwks_fetch_rotation_and_refetch_rate_limit(aiohttp_client: Any) -> None:
    import aiohttp

    server = JwksServer()
    server.keys = [jwk_for(RSA_KEY, "k1")]
    app = web.Application()
    app.router.add_get("/jwks", server.handle)
    client = await aiohttp_client(app)
    url = str(client.make_url("/jwks"))
    now = [1000.0]
    async with aiohttp.ClientSession() as session:
        jwks = JwksCache(
            url,
            lambda: session,
            cache_seconds=3600,
            min_refresh_interval_seconds=60,
            clock=lambda: now[0],
        )
        a = Authenticator(AuthConfig(algorithms=["RS256"], jwks_url=url), jwks=jwks)
        assert (
            await verify(a, jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "k1"}))
            == "ml"
        )
        assert server.hits == 1

        # A token with an unknown kid refetches once; a second one within the interval does not.
        rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now[0] += 61
        for _ in range(2):
            with pytest.raises(AuthenticationError, match="unknown signing key"):
                await verify(
                    a,
                    jwt.encode(
                        claims(exp=int(time.time()) + 601),
                        rotated,
                        algorithm="RS256",
                        headers={"kid": "k2"},
                    ),
                )
        assert server.hits == 2

        # After rotation is published and the interval has passed, the new key works.
        server.keys.append(jwk_for(rotated, "k2"))
        now[0] += 61
        assert (
            await verify(a, jwt.encode(claims(), rotated, algorithm="RS256", headers={"kid": "k2"}))
            == "ml"
        )
        assert server.hits == 3

        # JWKS endpoint down: known keys keep working, unknown kids are refused.
        server.fail = True
        now[0] += 4000
        assert (
            await verify(
                a,
                jwt.encode(
                    claims(exp=int(time.time()) + 602),
                    RSA_KEY,
                    algorithm="RS256",
                    headers={"kid": "k1"},
                ),
            )
            == "ml"
        )
