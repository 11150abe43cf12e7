"""Team JWTs: verify a bearer token and name the team it speaks for.

Security decisions, in one place:

- The allowed algorithms come from the config. A token's ``alg`` header only selects which of
  them applies, and each algorithm family has its own key: HS* tokens are checked against the
  shared secret only, asymmetric ones against the public key or JWKS only. So ``alg: none`` is
  never accepted and an HS256 token "signed" with the RSA public key fails (PyJWT also refuses to
  use a PEM key as an HMAC secret).
- JWKS documents are fetched with the shared aiohttp session, so the event loop never blocks; an
  unknown ``kid`` triggers at most one refetch per ``jwks_min_refresh_interval_seconds``.
- Verified tokens are remembered in a bounded LRU until their ``exp`` so signature checks are not
  paid on every request. The cache maps a token to its team *name*; whether the team exists and
  is enabled is looked up in the current config on every request, so a reload that disables a
  team takes effect at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from gateway.config import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, AuthConfig, TeamConfig
from gateway.errors import AuthenticationError
from gateway.upstream.client import FetchError, fetch_json

MAX_TOKEN_BYTES = 8192


@dataclass(frozen=True, slots=True)
class Principal:
    team: str
    expires_at: float | None
    #: The person behind the token (``auth.user_claim``), when the token names one.
    user: str | None = None


#: A JWKS document is small and its endpoint is local to the identity provider.
JWKS_TIMEOUT_SECONDS = 5.0


class JwksCache:
    """Keys from a JWKS URL, by kid, refreshed lazily and rate-limited."""

    def __init__(
        self,
        url: str,
        session_factory: Callable[[], aiohttp.ClientSession],
        *,
        cache_seconds: float,
        min_refresh_interval_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._session_factory = session_factory
        self._cache_seconds = cache_seconds
        self._min_interval = min_refresh_interval_seconds
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str | None) -> jwt.PyJWK:
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at > self._cache_seconds
        if stale or (kid not in self._keys and self._may_refetch(now)):
            await self._refresh()
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        key = self._keys.get(kid or "")
        if key is None:
            raise AuthenticationError("Invalid API key: unknown signing key (kid).")
        return key

    def _may_refetch(self, now: float) -> bool:
        return self._last_attempt is None or now - self._last_attempt >= self._min_interval

    async def _refresh(self) -> None:
        async with self._lock:
            now = self._clock()
            if self._last_attempt is not None and now - self._last_attempt < self._min_interval:
                return
            self._last_attempt = now
            try:
                document = await fetch_json(
                    self._session_factory(), self._url, timeout_seconds=JWKS_TIMEOUT_SECONDS
                )
                keyset = jwt.PyJWKSet.from_dict(document)
            except (FetchError, ValueError, jwt.PyJWTError):
                # Keep the keys we had: a JWKS outage must not lock out tokens we can verify.
                return
            self._keys = {k.key_id: k for k in keyset.keys if k.key_id}
            if not self._keys and keyset.keys:
                self._keys = {"": keyset.keys[0]}
            self._fetched_at = now


class Authenticator:
    def __init__(
        self,
        config: AuthConfig,
        *,
        jwks: JwksCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._jwks = jwks
        self._clock = clock
        self._hmac_algorithms = [a for a in config.algorithms if a in HMAC_ALGORITHMS]
        self._asym_algorithms = [a for a in config.algorithms if a in ASYMMETRIC_ALGORITHMS]
        self._secret = config.hs_secret.get_secret_value() if config.hs_secret else None
        self._public_key = config.public_key.get_secret_value() if config.public_key else None
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        required = ["exp"] if config.require_exp else []
        if config.issuer is not None:
            required.append("iss")
        if config.audience is not None:
            required.append("aud")
        self._options: jwt.types.Options = {"require": required, "verify_aud": True}

    async def authenticate(
        self, authorization: str | None, teams: dict[str, TeamConfig]
    ) -> Principal:
        token = _bearer_token(authorization)
        principal = self._cached(token)
        if principal is None:
            principal = await self._verify(token)
            self._remember(token, principal)
        team = teams.get(principal.team)
        if team is None:
            raise AuthenticationError(f"Invalid API key: unknown team {principal.team!r}.")
        if not team.enabled:
            raise AuthenticationError(f"Invalid API key: team {principal.team!r} is disabled.")
        return principal

    def _cached(self, token: str) -> Principal | None:
        principal = self._cache.get(token)
        if principal is None:
            return None
        if principal.expires_at is not None and principal.expires_at <= self._clock():
            del self._cache[token]
            return None
        self._cache.move_to_end(token)
        return principal

    def _remember(self, token: str, principal: Principal) -> None:
        size = self._config.token_cache_size
        if size == 0:
            return
        self._cache[token] = principal
        if len(self._cache) > size:
            self._cache.popitem(last=False)

    async def _verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthenticationError("Invalid API key: not a valid JWT.") from None
        alg = header.get("alg")
        key: Any
        if alg in self._hmac_algorithms:
            key = self._secret
        elif alg in self._asym_algorithms:
            if self._jwks is not None:
                kid = header.get("kid")
                key = await self._jwks.key_for(kid if isinstance(kid, str) else None)
            else:
                key = self._public_key
        else:
            raise AuthenticationError(f"Invalid API key: algorithm {alg!r} is not allowed.")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self._config.audience,
                issuer=self._config.issuer,
                leeway=self._config.leeway_seconds,
                options=self._options,
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("Invalid API key: the token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationError("Invalid API key: the token is not yet valid.") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError("Invalid API key: wrong audience.") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationError("Invalid API key: wrong issuer.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError(f"Invalid API key: missing claim {exc.claim!r}.") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise AuthenticationError("Invalid API key: bad signature or token.") from None
        team = claims.get(self._config.team_claim)
        if not isinstance(team, str) or not team:
            raise AuthenticationError(
                f"Invalid API key: claim {self._config.team_claim!r} must be a team name."
            )
        user = claims.get(self._config.user_claim)
        if isinstance(user, int) and not isinstance(user, bool):
            user = str(user)
        return Principal(
            team=team,
            expires_at=self._cache_expiry(claims.get("exp")),
            user=user if isinstance(user, str) and user else None,
        )

    def _cache_expiry(self, exp: Any) -> float | None:
        """When a verified token stops being valid, read the way PyJWT reads ``exp``.

        PyJWT accepts any ``exp`` that ``int()`` takes (a fractional NumericDate, as RFC 7519
        allows, or a numeric string). Reading only ``int`` here cached such tokens with no
        expiry, so they kept working after ``exp``. ``None`` only when there is no ``exp``.
        """
        if exp is None:
            return None
        try:
            seconds = int(exp)
        except (TypeError, ValueError, OverflowError):
            return self._clock()  # unreachable after PyJWT's check; never cache past now
        return seconds + self._config.leeway_seconds


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationError(
            "Missing API key: send a team token as 'Authorization: Bearer <token>'."
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("Invalid API key: expected 'Authorization: Bearer <token>'.")
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthenticationError("Invalid API key: token too long.")
    return token


def mint_token(
    secret: str,
    team: str,
    *,
    ttl_seconds: float,
    algorithm: str = "HS256",
    team_claim: str = "team",
    issuer: str | None = None,
    audience: str | None = None,
    now: float | None = None,
    user: str | None = None,
    user_claim: str = "sub",
) -> str:
    """An HS* team token, for operators (``gateway token``) and tests; ``user`` names the
    person (``user_claim``, default ``sub``: else ``team:<team>``)."""
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        team_claim: team,
        "sub": f"team:{team}",
        **({user_claim: user} if user is not None else {}),
        "iat": issued,
        "exp": issued + int(ttl_seconds),
    }
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm=algorithm)


def mint_configured_token(
    auth: AuthConfig, team: str, *, ttl_seconds: float, user: str | None = None
) -> str:
    """A team token the gateway configured by ``auth`` accepts (its ``hs_secret`` must be set),
    naming ``user`` in ``auth.user_claim`` when given."""
    if auth.hs_secret is None:
        raise ValueError("auth.hs_secret is not set")
    audience = auth.audience
    if isinstance(audience, list):
        audience = audience[0] if audience else None
    return mint_token(
        auth.hs_secret.get_secret_value(),
        team,
        ttl_seconds=ttl_seconds,
        algorithm=next((a for a in auth.algorithms if a.startswith("HS")), "HS256"),
        team_claim=auth.team_claim,
        issuer=auth.issuer,
        audience=audience,
        user=user,
        user_claim=auth.user_claim,
    )
