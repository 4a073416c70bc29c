"""Signing keys: thumbprint kids, PEM files, rotation sets and JWKS documents."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from tokenmall.identity.keys import (
    Jwks,
    KeySet,
    SigningKey,
    b64url,
    b64url_decode,
    ed25519_thumbprint,
    load_signing_key,
    save_signing_key,
)

# RFC 8037 Appendix A.1-A.3: an Ed25519 key and its RFC 7638 thumbprint
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def rfc8037_key() -> SigningKey:
    return SigningKey(Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC8037_D)))


def test_kid_is_the_rfc7638_thumbprint() -> None:
    key = rfc8037_key()
    assert key.public_jwk()["x"] == RFC8037_X
    assert key.kid == RFC8037_THUMBPRINT
    assert ed25519_thumbprint(key.public_key) == RFC8037_THUMBPRINT


def test_kids_differ_between_keys_and_repr_hides_the_key() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    assert a.kid != b.kid
    assert len(a.kid) == 43  # 32 bytes of SHA-256, unpadded base64url
    assert repr(a) == f"SigningKey(kid={a.kid!r})"


def test_pem_round_trip_keeps_the_kid(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "issuer.pem"
    save_signing_key(key, path)
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_signing_key(path).kid == key.kid
    assert [p.name for p in tmp_path.iterdir()] == ["issuer.pem"]  # no temp file left


def test_save_refuses_to_replace_a_key_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "issuer.pem"
    first, second = SigningKey.generate(), SigningKey.generate()
    save_signing_key(first, path)
    with pytest.raises(FileExistsError):
        save_signing_key(second, path)
    assert load_signing_key(path).kid == first.kid
    save_signing_key(second, path, overwrite=True)
    assert load_signing_key(path).kid == second.kid


def test_encrypted_pem(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "k.pem"
    save_signing_key(key, path, password=b"correct horse")
    assert b"ENCRYPTED" in path.read_bytes()
    assert load_signing_key(path, password=b"correct horse").kid == key.kid
    with pytest.raises(ValueError):
        load_signing_key(path, password=b"wrong")


def test_from_pem_refuses_other_key_types() -> None:
    for other in (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP256R1()),
    ):
        pem = other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with pytest.raises(ValueError, match="not Ed25519"):
            SigningKey.from_pem(pem)


def test_jwks_shape() -> None:
    key = rfc8037_key()
    document = KeySet([key]).jwks()
    assert document == {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": RFC8037_X,
                "kid": RFC8037_THUMBPRINT,
                "use": "sig",
                "alg": "EdDSA",
            }
        ]
    }
    assert all("d" not in jwk for jwk in document["keys"])  # never the private member


def test_key_set_signs_with_the_newest_and_lists_all() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    keys = KeySet([old]).rotate(new)
    assert keys.signing_key is new
    assert keys.kids == (new.kid, old.kid)
    assert [k["kid"] for k in keys.jwks()["keys"]] == [new.kid, old.kid]
    assert isinstance(keys.verification_key(old.kid), Ed25519PublicKey)
    assert keys.verification_key("nope") is None

    retired = keys.without(old.kid)
    assert retired.kids == (new.kid,)
    assert retired.verification_key(old.kid) is None
    with pytest.raises(KeyError):
        retired.without(old.kid)
    with pytest.raises(ValueError):
        retired.without(new.kid)  # never an empty set


def test_key_set_refuses_empty_and_duplicates() -> None:
    key = SigningKey.generate()
    with pytest.raises(ValueError):
        KeySet([])
    with pytest.raises(ValueError, match="twice"):
        KeySet([key, SigningKey(key.private_key)])


def test_key_set_load_keeps_the_order(tmp_path: Path) -> None:
    new, old = SigningKey.generate(), SigningKey.generate()
    save_signing_key(new, tmp_path / "new.pem")
    save_signing_key(old, tmp_path / "old.pem")
    keys = KeySet.load([tmp_path / "new.pem", tmp_path / "old.pem"])
    assert keys.kids == (new.kid, old.kid)
    assert keys.signing_key.kid == new.kid


def test_jwks_document_round_trip() -> None:
    keys = KeySet([SigningKey.generate(), SigningKey.generate()])
    parsed = Jwks.from_document(json.loads(json.dumps(keys.jwks())))
    assert set(parsed.keys) == set(keys.kids)
    for kid in keys.kids:
        ours = keys.verification_key(kid)
        theirs = parsed.verification_key(kid)
        assert ours is not None and theirs is not None
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        assert theirs.public_bytes(*raw) == ours.public_bytes(*raw)


def rsa_jwk(bits: int = 2048, kid: str = "rsa-1") -> dict[str, str]:
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    pub = numbers.public_numbers()
    return {
        "kty": "RSA",
        "kid": kid,
        "use": "sig",
        "alg": "RS256",
        "n": b64url(pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big")),
        "e": b64url(pub.e.to_bytes(3, "big")),
    }


def test_jwks_reads_rsa_and_skips_what_it_does_not_verify_with() -> None:
    ed = SigningKey.generate().public_jwk()
    document = {
        "keys": [
            ed,
            rsa_jwk(),
            {"kty": "EC", "crv": "P-256", "kid": "ec", "x": "AA", "y": "AA"},
            {**rsa_jwk(kid="enc"), "use": "enc"},
            {k: v for k, v in rsa_jwk().items() if k != "kid"},
            {**rsa_jwk(kid="ps"), "alg": "PS256"},
        ]
    }
    parsed = Jwks.from_document(document)
    assert set(parsed.keys) == {ed["kid"], "rsa-1"}
    assert isinstance(parsed.verification_key("rsa-1"), RSAPublicKey)


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"keys": "x"},
        {"keys": ["x"]},
        {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": "AAAA"}]},  # 3 bytes
        {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k"}]},  # no x
        {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": RFC8037_X + "="}]},
    ],
)
def test_jwks_refuses_malformed_documents(document: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Jwks.from_document(document)


def test_jwks_refuses_short_rsa_keys_and_duplicate_kids() -> None:
    with pytest.raises(ValueError, match="2048"):
        Jwks.from_document({"keys": [rsa_jwk(bits=1024)]})
    jwk = SigningKey.generate().public_jwk()
    with pytest.raises(ValueError, match="twice"):
        Jwks.from_document({"keys": [jwk, jwk]})
