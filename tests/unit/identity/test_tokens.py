"""Access tokens: what round-trips into a Caller, and every forgery that must not."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenmall.identity import (
    Caller,
    InvalidToken,
    KeySet,
    Role,
    SigningKey,
    TokenIssuer,
    TokenVerifier,
)
from tokenmall.identity.keys import b64url

ISSUER = "https://auth.tokenmall.test"
AUDIENCE = "tokenmall"
T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys() -> KeySet:
    return KeySet.generate()


@pytest.fixture
def issuer(keys: KeySet, clock: Clock) -> TokenIssuer:
    return TokenIssuer(keys, ISSUER, AUDIENCE, 900, clock=clock)


@pytest.fixture
def verifier(keys: KeySet, clock: Clock) -> TokenVerifier:
    return TokenVerifier(ISSUER, AUDIENCE, keys.jwks(), leeway_seconds=30, clock=clock)


def refused(verifier: TokenVerifier, token: str, reason: str) -> InvalidToken:
    with pytest.raises(InvalidToken) as caught:
        verifier.verify(token)
    assert caught.value.reason == reason, str(caught.value)
    return caught.value


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "member:+8613800000001",
        "iat": int(T0),
        "exp": int(T0) + 900,
        "jti": "j-1",
        "role": "member",
        "scope": "wallet:read",
        "member": "+8613800000001",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def signed(
    payload: Mapping[str, Any], key: SigningKey, headers: Mapping[str, Any] | None = None
) -> str:
    header = {"kid": key.kid, "typ": "at+jwt", **(headers or {})}
    return jwt.encode(dict(payload), key.private_key, algorithm="EdDSA", headers=header)


def segment(obj: Mapping[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


# --- what is accepted ---------------------------------------------------------------


def test_round_trip_into_a_caller(
    issuer: TokenIssuer, verifier: TokenVerifier, clock: Clock
) -> None:
    issued = issuer.issue(
        "member:+8613800000001",
        Role.MEMBER,
        scopes=["wallet:read", "orders:write", "wallet:read"],
        member="+8613800000001",
        auth_time=int(T0) - 5,
        amr=["sms"],
    )
    assert issued.expires_in == 900
    assert issued.expires_at == int(T0) + 900
    clock.now += 600
    caller = verifier.verify(issued.access_token)
    assert caller == Caller(
        subject="member:+8613800000001",
        role=Role.MEMBER,
        scopes=frozenset({"wallet:read", "orders:write"}),
        member="+8613800000001",
        auth_time=int(T0) - 5,
        token_id=issued.token_id,
        expires_at=int(T0) + 900,
        amr=frozenset({"sms"}),
    )
    assert caller.has_scope("orders:write") and not caller.has_scope("admin")
    with pytest.raises(AttributeError):
        caller.role = Role.ADMIN  # type: ignore[misc]


def test_token_header_and_claims(issuer: TokenIssuer, keys: KeySet) -> None:
    token = issuer.issue("ops-1", "operator", scopes=["audit:read"]).access_token
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "typ": "at+jwt", "kid": keys.signing_key.kid}
    body = jwt.decode(token, options={"verify_signature": False})
    assert set(body) == {"iss", "aud", "sub", "iat", "exp", "jti", "role", "scope"}
    assert body["role"] == "operator" and body["scope"] == "audit:read"


def test_each_token_has_its_own_id(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    ids = {verifier.verify(issuer.issue("svc", "service").access_token).token_id for _ in range(20)}
    assert len(ids) == 20


def test_verifier_takes_a_key_provider_too(issuer: TokenIssuer, keys: KeySet, clock: Clock) -> None:
    verifier = TokenVerifier(ISSUER, AUDIENCE, keys, clock=clock)
    assert verifier.verify(issuer.issue("mall-1", "mall").access_token).role is Role.MALL


def test_leeway_absorbs_clock_skew(
    issuer: TokenIssuer, verifier: TokenVerifier, clock: Clock
) -> None:
    token = issuer.issue("svc", "service").access_token
    clock.now = T0 + 900 + 29  # expired 29 s ago, inside the 30 s leeway
    assert verifier.verify(token).subject == "svc"
    clock.now = T0 - 29  # issued 29 s "in the future" by a fast issuer clock
    assert verifier.verify(token).subject == "svc"


# --- what is refused ------------------------------------------------------------------


def test_expired(issuer: TokenIssuer, verifier: TokenVerifier, clock: Clock) -> None:
    token = issuer.issue("svc", "service").access_token
    clock.now = T0 + 900 + 30
    error = refused(verifier, token, "expired")
    assert "expired" in str(error)


def test_issued_in_the_future_and_not_yet_valid(keys: KeySet, verifier: TokenVerifier) -> None:
    refused(
        verifier, signed(claims(iat=int(T0) + 60, exp=int(T0) + 960), keys.signing_key), "claims"
    )
    refused(verifier, signed(claims(nbf=int(T0) + 60), keys.signing_key), "claims")
    refused(verifier, signed(claims(exp=True), keys.signing_key), "claims")


def test_wrong_issuer(keys: KeySet, clock: Clock, verifier: TokenVerifier) -> None:
    other = TokenIssuer(keys, "https://evil.test", AUDIENCE, 900, clock=clock)
    assert "issuer" in str(refused(verifier, other.issue("svc", "service").access_token, "issuer"))


def test_wrong_audience(keys: KeySet, clock: Clock, verifier: TokenVerifier) -> None:
    other = TokenIssuer(keys, ISSUER, "another-platform", 900, clock=clock)
    error = refused(verifier, other.issue("svc", "service").access_token, "audience")
    assert "audience" in str(error)


def test_tampered_payload(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token = issuer.issue("m", "member", member="m-1").access_token
    head, body, sig = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["role"] = "admin"
    error = refused(verifier, f"{head}.{segment(payload)}.{sig}", "signature")
    assert "signature" in str(error)


def test_tampered_signature(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    head, body, sig = issuer.issue("svc", "service").access_token.split(".")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    refused(verifier, f"{head}.{body}.{flipped}", "signature")


def test_alg_none(keys: KeySet, verifier: TokenVerifier) -> None:
    header = {"alg": "none", "typ": "at+jwt", "kid": keys.signing_key.kid}
    token = f"{segment(header)}.{segment(claims(role='admin'))}."
    assert "not accepted" in str(refused(verifier, token, "algorithm"))


@pytest.mark.parametrize("secret_form", ["pem", "raw", "jwk-x"])
def test_hs256_signed_with_the_public_key(
    keys: KeySet, verifier: TokenVerifier, secret_form: str
) -> None:
    # the algorithm-confusion forgery: anyone holding the public key can compute this
    public = keys.signing_key.public_key
    secret = {
        "pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "raw": public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        "jwk-x": keys.signing_key.public_jwk()["x"].encode(),
    }[secret_form]
    header = {"alg": "HS256", "typ": "at+jwt", "kid": keys.signing_key.kid}
    signing_input = f"{segment(header)}.{segment(claims(role='admin'))}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    refused(verifier, f"{signing_input}.{b64url(mac)}", "algorithm")


def test_hmac_and_none_cannot_be_configured(keys: KeySet) -> None:
    for algorithms in (["HS256"], ["EdDSA", "none"], ["RS512"], []):
        with pytest.raises(ValueError):
            TokenVerifier(ISSUER, AUDIENCE, keys, algorithms=algorithms)


def test_unknown_kid(clock: Clock, verifier: TokenVerifier) -> None:
    stranger = TokenIssuer(KeySet.generate(), ISSUER, AUDIENCE, 900, clock=clock)
    error = refused(verifier, stranger.issue("svc", "service").access_token, "unknown_key")
    assert "kid" in str(error)


def test_missing_kid(keys: KeySet, verifier: TokenVerifier) -> None:
    token = jwt.encode(
        claims(), keys.signing_key.private_key, algorithm="EdDSA", headers={"typ": "at+jwt"}
    )
    refused(verifier, token, "unknown_key")


def test_a_strangers_key_claiming_our_kid(keys: KeySet, verifier: TokenVerifier) -> None:
    stranger = SigningKey.generate()
    token = jwt.encode(
        claims(role="admin"),
        stranger.private_key,
        algorithm="EdDSA",
        headers={"kid": keys.signing_key.kid, "typ": "at+jwt"},
    )
    refused(verifier, token, "signature")


def test_an_embedded_jwk_header_is_ignored(keys: KeySet, verifier: TokenVerifier) -> None:
    stranger = SigningKey.generate()
    token = signed(claims(role="admin"), stranger, {"jwk": stranger.public_jwk()})
    refused(verifier, token, "unknown_key")


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "a.b", "....."])
def test_malformed(verifier: TokenVerifier, token: str) -> None:
    refused(verifier, token, "malformed")


@pytest.mark.parametrize("missing", ["iss", "aud", "sub", "iat", "exp", "jti", "role"])
def test_required_claims(keys: KeySet, verifier: TokenVerifier, missing: str) -> None:
    error = refused(verifier, signed(claims(**{missing: None}), keys.signing_key), "claims")
    assert missing in str(error)


def test_jti_can_be_optional_for_an_external_provider(keys: KeySet, clock: Clock) -> None:
    verifier = TokenVerifier(ISSUER, AUDIENCE, keys, require_jti=False, clock=clock)
    assert verifier.verify(signed(claims(jti=None), keys.signing_key)).token_id is None


def test_access_token_type(keys: KeySet, verifier: TokenVerifier, clock: Clock) -> None:
    id_token = signed(claims(), keys.signing_key, {"typ": "JWT"})
    refused(verifier, id_token, "type")
    assert verifier.verify(signed(claims(), keys.signing_key, {"typ": "application/AT+JWT"}))
    lax = TokenVerifier(ISSUER, AUDIENCE, keys, token_type=None, clock=clock)
    assert lax.verify(id_token).subject == "member:+8613800000001"


@pytest.mark.parametrize(
    "overrides",
    [
        {"role": "root"},
        {"role": ["member", "admin"]},
        {"role": 3},
        {"role": "member", "member": None},  # a member token must name the member
        {"role": "merchant", "member": None},
        {"member": ""},
        {"member": 7},
        {"scope": 7},
        {"sub": 7},
        {"auth_time": "yesterday"},
        {"amr": "sms"},
    ],
)
def test_malformed_claims(keys: KeySet, verifier: TokenVerifier, overrides: dict[str, Any]) -> None:
    refused(verifier, signed(claims(**overrides), keys.signing_key), "claims")


def test_issuer_refuses_what_the_verifier_would(issuer: TokenIssuer) -> None:
    with pytest.raises(ValueError):
        issuer.issue("m", "root")
    with pytest.raises(ValueError, match="member id"):
        issuer.issue("m", Role.MERCHANT)
    with pytest.raises(ValueError, match="scope"):
        issuer.issue("svc", "service", scopes=["two words"])
    with pytest.raises(ValueError, match="scope"):
        issuer.issue("svc", "service", scopes=['quote"'])
    with pytest.raises(ValueError):
        issuer.issue("", "service")
    with pytest.raises(ValueError):
        TokenIssuer(issuer.keys, ISSUER, AUDIENCE, 0)


# --- rotation -----------------------------------------------------------------------------


def test_key_rotation(clock: Clock) -> None:
    old = KeySet.generate()
    old_token = TokenIssuer(old, ISSUER, AUDIENCE, 900, clock=clock).issue("svc", "service")

    rotated = old.rotate(SigningKey.generate())
    new_token = TokenIssuer(rotated, ISSUER, AUDIENCE, 900, clock=clock).issue("svc", "service")
    assert jwt.get_unverified_header(new_token.access_token)["kid"] == rotated.signing_key.kid

    # while the old key is listed, both verify
    both = TokenVerifier(ISSUER, AUDIENCE, rotated.jwks(), clock=clock)
    assert both.verify(old_token.access_token).token_id == old_token.token_id
    assert both.verify(new_token.access_token).token_id == new_token.token_id

    # once it is retired, only the new one does
    retired = rotated.without(old.signing_key.kid)
    after = TokenVerifier(ISSUER, AUDIENCE, retired.jwks(), clock=clock)
    refused(after, old_token.access_token, "unknown_key")
    assert after.verify(new_token.access_token).token_id == new_token.token_id


# --- an external OpenID Connect provider (RS256, its own claim names) ----------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def rsa_jwks(key: rsa.RSAPrivateKey, kid: str = "kc-1") -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    return {
        "keys": [
            {
                "kty": "RSA",
                "kid": kid,
                "use": "sig",
                "alg": "RS256",
                "n": b64url(numbers.n.to_bytes(256, "big")),
                "e": b64url(numbers.e.to_bytes(3, "big")),
            }
        ]
    }


def external_claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": "https://sso.example",
        "aud": "tokenmall-api",
        "sub": "f3b1c2",
        "iat": int(T0),
        "exp": int(T0) + 300,
        "realm_access": {"roles": ["offline_access", "merchant", "uma_authorization"]},
        "https://tokenmall.example/member": "+8613800000009",
        "scp": ["wallet:read", "exchange"],
        "auth_time": int(T0) - 100,
    }
    base.update(overrides)
    return base


def test_external_provider_claims_map_onto_a_caller(
    rsa_key: rsa.RSAPrivateKey, clock: Clock
) -> None:
    verifier = TokenVerifier(
        "https://sso.example",
        "tokenmall-api",
        rsa_jwks(rsa_key),
        algorithms=["RS256"],
        role_claim=("realm_access", "roles"),
        member_claim="https://tokenmall.example/member",
        scope_claim="scp",
        require_jti=False,
        token_type=None,
        clock=clock,
    )
    token = jwt.encode(external_claims(), rsa_key, algorithm="RS256", headers={"kid": "kc-1"})
    caller = verifier.verify(token)
    assert caller.role is Role.MERCHANT
    assert caller.member == "+8613800000009"
    assert caller.scopes == {"wallet:read", "exchange"}
    assert caller.token_id is None and caller.auth_time == int(T0) - 100

    two_roles = external_claims(realm_access={"roles": ["merchant", "admin"]})
    token = jwt.encode(two_roles, rsa_key, algorithm="RS256", headers={"kid": "kc-1"})
    refused(verifier, token, "claims")


def test_rs256_only_when_configured_and_only_with_an_rsa_key(
    rsa_key: rsa.RSAPrivateKey, keys: KeySet, verifier: TokenVerifier
) -> None:
    # the default verifier accepts EdDSA only
    token = jwt.encode(
        claims(), rsa_key, algorithm="RS256", headers={"kid": "kc-1", "typ": "at+jwt"}
    )
    refused(verifier, token, "algorithm")
    # an RS256 token naming an Ed25519 key is refused before any signature check
    both = TokenVerifier(ISSUER, AUDIENCE, keys, algorithms=["EdDSA", "RS256"])
    token = jwt.encode(
        claims(), rsa_key, algorithm="RS256", headers={"kid": keys.signing_key.kid, "typ": "at+jwt"}
    )
    assert "does not match" in str(refused(both, token, "algorithm"))


# --- recent authentication -----------------------------------------------------------------


def test_authenticated_within() -> None:
    caller = Caller(
        "s", Role.MEMBER, frozenset(), "m", int(T0), "j", int(T0) + 900, frozenset({"sms"})
    )
    assert caller.authenticated_within(600, T0 + 600)
    assert caller.authenticated_within(600, T0 + 600, method="sms")
    assert not caller.authenticated_within(600, T0 + 601)
    assert not caller.authenticated_within(600, T0 + 10, method="pwd")
    assert not caller.authenticated_within(600, T0 - 10)  # auth_time in the future
    without = Caller("s", Role.MEMBER, frozenset(), "m", None, "j", int(T0) + 900)
    assert not without.authenticated_within(600, T0)


# --- a property: whatever is issued comes back --------------------------------------------

scope_tokens = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='"\\'),
    min_size=1,
    max_size=12,
)


@settings(max_examples=50, deadline=None)
@given(
    subject=st.text(min_size=1, max_size=40),
    role=st.sampled_from(list(Role)),
    scopes=st.frozensets(scope_tokens, max_size=6),
    member=st.text(min_size=1, max_size=20),
)
def test_issued_claims_round_trip(
    subject: str, role: Role, scopes: frozenset[str], member: str
) -> None:
    keys = KeySet.generate()
    clock = Clock()
    issued = TokenIssuer(keys, ISSUER, AUDIENCE, 60, clock=clock).issue(
        subject, role, scopes=sorted(scopes), member=member
    )
    caller = TokenVerifier(ISSUER, AUDIENCE, keys.jwks(), clock=clock).verify(issued.access_token)
    assert (caller.subject, caller.role, caller.scopes, caller.member) == (
        subject,
        role,
        scopes,
        member,
    )
