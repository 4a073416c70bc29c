"""Identity building blocks: who a caller is, and how they proved it (issue 14).

Pure pieces, no service wired to them yet:

* :mod:`.keys` — Ed25519 signing keys (PEM on a path the caller gives), kid = RFC 7638
  thumbprint, a :class:`KeySet` for rotation (newest signs, all listed verify), the
  public JWKS document, and :class:`Jwks` to verify against a published one
  (Ed25519, or RSA for an external OpenID Connect provider).
* :mod:`.tokens` — :class:`TokenIssuer` signs JWT access tokens (EdDSA, ``typ``
  at+jwt, iss/aud/sub/iat/exp/jti, ``role``, ``scope``, optional ``member``,
  ``auth_time``, ``amr``); :class:`TokenVerifier` pins the algorithms, checks issuer,
  audience, times and required claims, maps configurable claim names and returns a
  frozen :class:`Caller` or raises :class:`InvalidToken`.
* :mod:`.passwords` — argon2id hashes with :class:`PasswordParams` (production
  defaults, cheap ones for tests).
* :mod:`.sms` — six-digit one-time codes stored as an HMAC, expiry, attempts and
  send limits as pure functions of stored state and the time; the
  :class:`SmsSender` protocol with :class:`LogSender` (development) and
  :class:`HttpSender` (a provider's HTTP API).
"""

from tokenmall.identity.keys import (
    Jwks,
    KeyProvider,
    KeySet,
    SigningKey,
    VerificationKey,
    ed25519_thumbprint,
    load_signing_key,
    save_signing_key,
)
from tokenmall.identity.passwords import (
    FOR_TESTS,
    PRODUCTION,
    PasswordParams,
    hash_password,
    needs_rehash,
    verify_password,
)
from tokenmall.identity.sms import (
    Checked,
    HttpSender,
    Issued,
    LogSender,
    Outcome,
    PendingCode,
    RateLimit,
    SmsCodes,
    SmsPolicy,
    SmsRateLimited,
    SmsSender,
    SmsSendError,
    mask_phone,
    retry_after,
)
from tokenmall.identity.tokens import (
    MEMBER_ROLES,
    Caller,
    InvalidToken,
    IssuedToken,
    Role,
    TokenIssuer,
    TokenVerifier,
)

__all__ = [
    "FOR_TESTS",
    "MEMBER_ROLES",
    "PRODUCTION",
    "Caller",
    "Checked",
    "HttpSender",
    "InvalidToken",
    "Issued",
    "IssuedToken",
    "Jwks",
    "KeyProvider",
    "KeySet",
    "LogSender",
    "Outcome",
    "PasswordParams",
    "PendingCode",
    "RateLimit",
    "Role",
    "SigningKey",
    "SmsCodes",
    "SmsPolicy",
    "SmsRateLimited",
    "SmsSendError",
    "SmsSender",
    "TokenIssuer",
    "TokenVerifier",
    "VerificationKey",
    "ed25519_thumbprint",
    "hash_password",
    "load_signing_key",
    "mask_phone",
    "needs_rehash",
    "retry_after",
    "save_signing_key",
    "verify_password",
]
