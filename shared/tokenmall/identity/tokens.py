"""JWT access tokens: issued by the built-in issuer, verified by every service.

:class:`TokenIssuer` signs with the newest key of a :class:`~.keys.KeySet` (EdDSA,
Ed25519).  :class:`TokenVerifier` turns a bearer token into a :class:`Caller` or
raises :class:`InvalidToken`; nothing else about the token leaves it, so a route
only ever sees a checked identity.

What the verifier holds to, and why:

* **Algorithms are pinned** (EdDSA, and RS256 only when asked for an external
  provider), and the algorithm must match the type of the key the ``kid`` names.
  ``none`` and every HMAC algorithm are impossible by construction: a token whose
  header says HS256 would otherwise be checked with the *public* key as the HMAC
  secret, which anybody can do (the classic algorithm-confusion forgery).
* **The key comes from the trusted set only**, by ``kid``; ``jwk``/``jku``/``x5u``
  headers are never looked at.
* **iss, aud, exp, iat, sub** are always required, ``jti`` unless configured off
  (some OpenID Connect providers leave it out); time checks allow ``leeway_seconds``
  of clock skew and use the verifier's clock, so tests need no sleeping.
* **The header ``typ`` is ``at+jwt``** (RFC 9068) for built-in tokens, so an ID
  token or some other JWT signed by the same key cannot be replayed as an access
  token; verifiers of an external provider may switch the check off.
* A ``member`` or ``merchant`` token without a member id is refused: every route
  takes the member from the token, so such a token could only fail later.

Claim names for role, member id and scope are parameters, so an external provider's
claims map onto :class:`Caller` (a name, or a path such as
``("realm_access", "roles")`` into nested claims; a role claim may be one string or
a list holding exactly one of the platform's roles).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from tokenmall.identity.keys import Jwks, KeyProvider, KeySet, VerificationKey

Clock = Callable[[], float]  # seconds since the epoch, like time.time

ACCESS_TOKEN_TYPE: Final = "at+jwt"  # RFC 9068 §2.1
SIGNING_ALGORITHM: Final = "EdDSA"
# every algorithm a verifier may be configured with, and the key type each needs
_KEY_TYPES: Final[Mapping[str, type]] = {"EdDSA": Ed25519PublicKey, "RS256": RSAPublicKey}
_BASE_CLAIMS: Final = ("iss", "aud", "sub", "iat", "exp")
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN: Final = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")


class Role(StrEnum):
    MEMBER = "member"
    MERCHANT = "merchant"
    MALL = "mall"
    OPERATOR = "operator"
    ADMIN = "admin"
    SERVICE = "service"


# roles that act for one member, whose id must come from the token
MEMBER_ROLES: Final = frozenset({Role.MEMBER, Role.MERCHANT})


class InvalidToken(Exception):
    """A bearer token that does not identify a caller.

    ``reason`` is a short stable code (``expired``, ``audience``, ``signature``,
    ``unknown_key`` …) for metrics and the ``WWW-Authenticate`` error description;
    the message says what was wrong without echoing attacker-chosen values at length.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Caller:
    """Who is calling, as a verified token says."""

    subject: str
    role: Role
    scopes: frozenset[str]
    member: str | None
    auth_time: int | None  # when the user authenticated (OIDC), not when the token was issued
    token_id: str | None  # jti; None only for an external provider configured without it
    expires_at: int
    amr: frozenset[str] = frozenset()  # how the user authenticated (RFC 8176: pwd, sms, …)

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def authenticated_within(self, seconds: float, now: float, method: str | None = None) -> bool:
        """Whether the user authenticated at most ``seconds`` ago (by ``method``, if given).

        The password change after an SMS login asks this ("a token obtained by SMS
        code within the last 10 minutes"); a token without ``auth_time`` never counts.
        """
        if self.auth_time is None or (method is not None and method not in self.amr):
            return False
        return 0 <= now - self.auth_time <= seconds


@dataclass(frozen=True)
class IssuedToken:
    """An access token and what the token endpoint answers about it (RFC 6749 §5.1)."""

    access_token: str
    token_id: str
    issued_at: int
    expires_at: int

    @property
    def expires_in(self) -> int:
        return self.expires_at - self.issued_at


def _check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(scopes))  # keep the caller's order, drop repeats
    for scope in out:
        if not isinstance(scope, str) or not _SCOPE_TOKEN.match(scope):
            raise ValueError(f"not an RFC 6749 scope token: {scope!r}")
    return out


class TokenIssuer:
    """Signs access tokens with the newest key of ``keys``."""

    def __init__(
        self,
        keys: KeySet,
        issuer: str,
        audience: str,
        ttl_seconds: int,
        *,
        clock: Clock = time.time,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("issuer and audience are required")
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    def issue(
        self,
        subject: str,
        role: Role | str,
        *,
        scopes: Iterable[str] = (),
        member: str | None = None,
        auth_time: int | None = None,
        amr: Iterable[str] = (),
        ttl_seconds: int | None = None,
    ) -> IssuedToken:
        """A signed token for ``subject`` acting as ``role``.

        Refuses what the verifier would refuse (an unknown role, a member role
        without a member id, a malformed scope), so a bad token is a bug here and
        not a 401 somewhere else.
        """
        if not isinstance(subject, str) or not subject:
            raise ValueError("subject is required")
        role = Role(role)
        if role in MEMBER_ROLES and not member:
            raise ValueError(f"a {role} token needs the member id")
        ttl = self.ttl_seconds if ttl_seconds is None else ttl_seconds
        if ttl <= 0:
            raise ValueError("ttl_seconds must be positive")
        now = int(self._clock())
        token_id = secrets.token_urlsafe(16)  # 128 random bits: unique without coordination
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": now,
            "exp": now + ttl,
            "jti": token_id,
            "role": role.value,
            "scope": " ".join(_check_scopes(scopes)),
        }
        if member is not None:
            claims["member"] = member
        if auth_time is not None:
            claims["auth_time"] = int(auth_time)
        methods = _check_scopes(amr)  # same harmless-token syntax
        if methods:
            claims["amr"] = list(methods)
        key = self.keys.signing_key
        token = jwt.encode(
            claims,
            key.private_key,
            algorithm=SIGNING_ALGORITHM,
            headers={"kid": key.kid, "typ": ACCESS_TOKEN_TYPE},
        )
        return IssuedToken(token, token_id, now, now + ttl)


ClaimName = str | Sequence[str]  # a top-level claim, or a path into nested objects


class TokenVerifier:
    """Checks bearer tokens against one issuer, one audience and a trusted key set."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        keys: KeyProvider | Mapping[str, Any],
        *,
        leeway_seconds: float = 30.0,
        algorithms: Collection[str] = (SIGNING_ALGORITHM,),
        role_claim: ClaimName = "role",
        member_claim: ClaimName = "member",
        scope_claim: ClaimName = "scope",
        require_jti: bool = True,
        token_type: str | None = ACCESS_TOKEN_TYPE,
        clock: Clock = time.time,
    ) -> None:
        """``keys`` is a provider or a JWKS document (``{"keys": [...]}``).

        ``leeway_seconds`` (default 30) absorbs clock skew between the issuer's host
        and this one.  ``algorithms`` may only name EdDSA and RS256.
        """
        if not issuer or not audience:
            raise ValueError("issuer and audience are required")
        unknown = set(algorithms) - set(_KEY_TYPES)
        if unknown or not algorithms:
            raise ValueError(f"algorithms must be a subset of {sorted(_KEY_TYPES)}")
        if leeway_seconds < 0:
            raise ValueError("leeway_seconds must not be negative")
        self.issuer = issuer
        self.audience = audience
        self._keys: KeyProvider = Jwks.from_document(keys) if isinstance(keys, Mapping) else keys
        self.leeway_seconds = float(leeway_seconds)
        self.algorithms = frozenset(algorithms)
        self._role_claim = _path(role_claim)
        self._member_claim = _path(member_claim)
        self._scope_claim = _path(scope_claim)
        self._required = [*_BASE_CLAIMS, *(("jti",) if require_jti else ())]
        self._token_type = token_type
        self._clock = clock

    def verify(self, token: str) -> Caller:
        """The caller a bearer token identifies; :class:`InvalidToken` if it does not."""
        claims = self._checked_claims(token)
        subject = _optional_str(claims, "sub")  # PyJWT < 2.10 does not type-check sub
        if subject is None:
            raise InvalidToken("claims", "missing claim 'sub'")
        role, member = self._role(claims), self._member(claims)
        if role in MEMBER_ROLES and member is None:
            raise InvalidToken("claims", f"a {role} token must carry the member id")
        return Caller(
            subject=subject,
            role=role,
            scopes=self._scopes(claims),
            member=member,
            auth_time=_optional_int(claims, "auth_time"),
            token_id=_optional_str(claims, "jti"),
            expires_at=int(claims["exp"]),
            amr=_string_set(claims.get("amr"), "amr"),
        )

    def _checked_claims(self, token: str) -> dict[str, Any]:
        if not isinstance(token, str) or not token:
            raise InvalidToken("malformed", "no token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise InvalidToken("malformed", "not a JWT") from exc
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise InvalidToken("algorithm", f"algorithm {str(alg)[:16]!r} is not accepted")
        if self._token_type is not None:
            typ = header.get("typ")
            # RFC 9068 §4: compare case-insensitively; the "application/" prefix is optional
            shown = typ.lower().removeprefix("application/") if isinstance(typ, str) else None
            if shown != self._token_type:
                raise InvalidToken("type", f"not an access token (typ must be {self._token_type})")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("unknown_key", "the token names no signing key (kid)")
        key = self._keys.verification_key(kid)
        if key is None:
            raise InvalidToken("unknown_key", "the token's signing key (kid) is not trusted")
        if not isinstance(key, _KEY_TYPES[alg]):
            raise InvalidToken("algorithm", f"algorithm {alg} does not match the signing key")
        return self._decode(token, key, alg)

    def _decode(self, token: str, key: VerificationKey, alg: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": self._required,
                    # time claims are checked below against our clock
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken("signature", "bad signature") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken("claims", f"missing claim {exc.claim!r}") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidToken("audience", "wrong audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise InvalidToken("issuer", "wrong issuer") from exc
        except jwt.DecodeError as exc:
            raise InvalidToken("malformed", "malformed token") from exc
        except jwt.InvalidTokenError as exc:  # the rest: bad sub/jti types, algorithm …
            raise InvalidToken("claims", f"invalid token: {exc}") from exc
        self._check_times(claims)
        return claims

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now, leeway = self._clock(), self.leeway_seconds
        exp, iat = _number(claims, "exp"), _number(claims, "iat")
        if now >= exp + leeway:
            raise InvalidToken("expired", "token expired")
        if iat > now + leeway:
            raise InvalidToken("claims", "token issued in the future")
        if "nbf" in claims and _number(claims, "nbf") > now + leeway:
            raise InvalidToken("claims", "token not valid yet")

    def _role(self, claims: Mapping[str, Any]) -> Role:
        value = _claim(claims, self._role_claim)
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidToken("claims", "missing or malformed role claim")
        # a provider's role list also holds roles of its own (offline_access, …)
        roles = {Role(n) for n in names if n in Role._value2member_map_}
        if len(roles) != 1:
            raise InvalidToken("claims", "the token must carry exactly one platform role")
        return roles.pop()

    def _member(self, claims: Mapping[str, Any]) -> str | None:
        value = _claim(claims, self._member_claim)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise InvalidToken("claims", "malformed member claim")
        return value

    def _scopes(self, claims: Mapping[str, Any]) -> frozenset[str]:
        value = _claim(claims, self._scope_claim)
        # RFC 9068 / RFC 8693: a space-separated string; some providers send a list (scp)
        if isinstance(value, str):
            return frozenset(value.split())
        return _string_set(value, "scope")


def _path(name: ClaimName) -> tuple[str, ...]:
    path = (name,) if isinstance(name, str) else tuple(name)
    if not path or not all(isinstance(p, str) and p for p in path):
        raise ValueError("a claim name is a non-empty string or a path of them")
    return path


def _claim(claims: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = claims
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    # bool is an int in Python, but true is not a NumericDate
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken("claims", f"claim {name!r} must be a number")
    return float(value)


def _optional_int(claims: Mapping[str, Any], name: str) -> int | None:
    return None if claims.get(name) is None else int(_number(claims, name))


def _optional_str(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidToken("claims", f"claim {name!r} must be a string")
    return value


def _string_set(value: Any, name: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidToken("claims", f"malformed {name} claim")
    return frozenset(value)
