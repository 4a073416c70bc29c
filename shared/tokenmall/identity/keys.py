"""Ed25519 signing keys for access tokens, and the public key sets that verify them.

A :class:`SigningKey` is one Ed25519 private key; its ``kid`` is the RFC 7638 JWK
thumbprint of the public key, so the same key always gets the same id in every
process and no id has to be stored next to the PEM.  A :class:`KeySet` is the
issuer's keys, newest first: the newest signs, every listed key verifies, so a
rotation is "add a new key in front, drop the old one once its last token has
expired".  :class:`Jwks` is the public side (a parsed ``{"keys": [...]}``
document), which is all a verifying service needs; it also reads RSA keys, because
an external OpenID Connect provider typically signs with RS256.

The only I/O here is :func:`load_signing_key` / :func:`save_signing_key`, on a path
the caller chooses.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey, RSAPublicNumbers

# what a verifier can check a signature with: our own Ed25519 keys, or an external
# provider's RSA keys (RS256)
VerificationKey: TypeAlias = Ed25519PublicKey | RSAPublicKey

MIN_RSA_BITS = 2048  # below this an RS256 signature is not worth checking (NIST SP 800-131A)


def b64url(data: bytes) -> str:
    """Unpadded base64url, the encoding of every binary JWK member (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """The inverse of :func:`b64url`; refuses padding and non-alphabet characters."""
    if not isinstance(text, str) or "=" in text:
        raise ValueError("not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
        raise ValueError("not unpadded base64url") from exc


def ed25519_thumbprint(public_key: Ed25519PublicKey) -> str:
    """The RFC 7638 thumbprint of an Ed25519 public key: base64url(SHA-256(JWK)).

    RFC 7638 §3.2 hashes only the required members, sorted, with no whitespace; for
    an OKP key (RFC 8037 §2) these are ``crv``, ``kty`` and ``x``.  Any other party
    (a verifier, a JWKS client) can recompute it from the published key, so the kid
    is a checkable name for the key, not an arbitrary label.
    """
    x = b64url(public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    canonical = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True
    )
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


@dataclass(frozen=True, eq=False)
class SigningKey:
    """One Ed25519 private key and its thumbprint kid."""

    private_key: Ed25519PrivateKey
    kid: str = field(init=False)

    def __post_init__(self) -> None:
        # computed once: the thumbprint is asked for on every token issued
        object.__setattr__(self, "kid", ed25519_thumbprint(self.private_key.public_key()))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes, password: bytes | None = None) -> SigningKey:
        """A key from PKCS#8 PEM; anything but an Ed25519 private key is refused."""
        key = serialization.load_pem_private_key(data, password=password)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the PEM holds a key that is not Ed25519")
        return cls(key)

    def to_pem(self, password: bytes | None = None) -> bytes:
        """PKCS#8 PEM, encrypted with ``password`` when one is given."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK (RFC 8037): what the JWKS endpoint lists."""
        x = self.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url(x),
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
        }

    def __repr__(self) -> str:  # never the key material, even in a traceback
        return f"SigningKey(kid={self.kid!r})"


def load_signing_key(path: str | os.PathLike[str], password: bytes | None = None) -> SigningKey:
    return SigningKey.from_pem(Path(path).read_bytes(), password)


def save_signing_key(
    key: SigningKey,
    path: str | os.PathLike[str],
    password: bytes | None = None,
    *,
    overwrite: bool = False,
) -> None:
    """Write the key as PEM, readable by its owner only (mode 0600).

    Refuses to replace an existing file unless ``overwrite``: replacing the issuer's
    key by accident would invalidate every token it has issued.  The file is written
    beside the target and renamed into place, so a crash never leaves half a key.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; refusing to replace a signing key")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)  # mkstemp already creates 0600; stated, not assumed
        with os.fdopen(fd, "wb") as out:
            out.write(key.to_pem(password))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class KeyProvider(Protocol):
    """Where a verifier finds the public key a token names in its ``kid`` header.

    :class:`KeySet` and :class:`Jwks` are providers; a service that follows an
    external provider's JWKS URL supplies one that fetches and caches (and refetches
    on an unknown kid, which is how a verifier learns about a rotation).
    """

    def verification_key(self, kid: str) -> VerificationKey | None: ...


class KeySet:
    """The issuer's signing keys, newest first: ``keys[0]`` signs, all of them verify."""

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        if not keys:
            raise ValueError("a key set needs at least one key")
        kids = [k.kid for k in keys]
        if len(set(kids)) != len(kids):
            raise ValueError("the same key is listed twice")
        self._keys: tuple[SigningKey, ...] = tuple(keys)
        self._by_kid = {k.kid: k for k in keys}

    @classmethod
    def generate(cls) -> KeySet:
        return cls([SigningKey.generate()])

    @classmethod
    def load(cls, paths: Iterable[str | os.PathLike[str]], password: bytes | None = None) -> KeySet:
        """Keys from PEM files, newest first (the first path is the one that signs)."""
        return cls([load_signing_key(p, password) for p in paths])

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        return self._keys

    @property
    def signing_key(self) -> SigningKey:
        return self._keys[0]

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(k.kid for k in self._keys)

    def rotate(self, new_key: SigningKey) -> KeySet:
        """A new set where ``new_key`` signs and the current keys still verify."""
        return KeySet([new_key, *self._keys])

    def without(self, kid: str) -> KeySet:
        """A new set with one key retired: tokens it signed no longer verify."""
        if kid not in self._by_kid:
            raise KeyError(kid)
        return KeySet([k for k in self._keys if k.kid != kid])

    def verification_key(self, kid: str) -> VerificationKey | None:
        key = self._by_kid.get(kid)
        return None if key is None else key.public_key

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public JWKS document (``/.well-known/jwks.json``), newest key first."""
        return {"keys": [k.public_jwk() for k in self._keys]}


@dataclass(frozen=True)
class Jwks:
    """A parsed public JWKS document: the keys a verifier trusts, by kid.

    Keys of a type this platform does not verify with (X25519, EC, Ed448, encryption
    keys) and keys without a kid are skipped rather than refused, because an external
    provider's document may list them next to its signing keys; a key of a supported
    type that is malformed (or an RSA key below 2048 bits) is refused, so a broken
    configuration fails at start-up and not on the first login.
    """

    keys: Mapping[str, VerificationKey]

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Jwks:
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise ValueError('a JWKS document is {"keys": [...]}')
        keys: dict[str, VerificationKey] = {}
        for entry in entries:
            if not isinstance(entry, Mapping):
                raise ValueError("a JWKS entry is an object")
            kid = entry.get("kid")
            if not isinstance(kid, str) or not kid or entry.get("use", "sig") != "sig":
                continue
            key = _public_key(entry)
            if key is None:
                continue
            if kid in keys:
                raise ValueError(f"kid {kid!r} is listed twice")
            keys[kid] = key
        return cls(keys)

    def verification_key(self, kid: str) -> VerificationKey | None:
        return self.keys.get(kid)


def _public_key(jwk: Mapping[str, Any]) -> VerificationKey | None:
    """The key a JWK describes, or None for a type/algorithm we do not verify with."""
    kty, alg = jwk.get("kty"), jwk.get("alg")
    if kty == "OKP" and jwk.get("crv") == "Ed25519" and alg in (None, "EdDSA"):
        raw = b64url_decode(_member(jwk, "x"))
        if len(raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        return Ed25519PublicKey.from_public_bytes(raw)
    if kty == "RSA" and alg in (None, "RS256"):
        n = int.from_bytes(b64url_decode(_member(jwk, "n")), "big")
        e = int.from_bytes(b64url_decode(_member(jwk, "e")), "big")
        if n.bit_length() < MIN_RSA_BITS:
            raise ValueError(f"RSA keys below {MIN_RSA_BITS} bits are refused")
        return RSAPublicNumbers(e, n).public_key()
    return None


def _member(jwk: Mapping[str, Any], name: str) -> str:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"the JWK has no {name!r}")
    return value
