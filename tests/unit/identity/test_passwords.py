"""argon2id password hashes."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher, Type

from tokenmall.identity.passwords import (
    FOR_TESTS,
    PRODUCTION,
    PasswordParams,
    hash_password,
    needs_rehash,
    verify_password,
)


def test_hash_is_argon2id_with_the_given_parameters() -> None:
    stored = hash_password("s3cret!", FOR_TESTS)
    assert stored.startswith("$argon2id$v=19$m=8,t=1,p=1$")
    assert "s3cret" not in stored


def test_production_parameters_are_rfc9106_second_option() -> None:
    stored = hash_password("s3cret!", PRODUCTION)
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert verify_password(stored, "s3cret!", PRODUCTION)


def test_right_and_wrong_password() -> None:
    stored = hash_password("correct horse", FOR_TESTS)
    assert verify_password(stored, "correct horse", FOR_TESTS) is True
    assert verify_password(stored, "correct horse ", FOR_TESTS) is False
    assert verify_password(stored, "", FOR_TESTS) is False


def test_each_hash_has_its_own_salt() -> None:
    a, b = hash_password("same", FOR_TESTS), hash_password("same", FOR_TESTS)
    assert a != b
    assert verify_password(a, "same", FOR_TESTS) and verify_password(b, "same", FOR_TESTS)


def test_verification_uses_the_stored_parameters() -> None:
    # a hash made with old parameters still verifies under new ones (then is rehashed)
    stored = hash_password("pw", FOR_TESTS)
    assert verify_password(stored, "pw", PasswordParams(time_cost=2, memory_cost=16, parallelism=1))


@pytest.mark.parametrize("stored", [None, "", "plain text", "$argon2id$v=19$m=8,t=1,p=1$broken"])
def test_no_hash_or_a_broken_one_is_false_not_an_error(stored: str | None) -> None:
    assert verify_password(stored, "anything", FOR_TESTS) is False


def test_needs_rehash() -> None:
    stored = hash_password("pw", FOR_TESTS)
    assert not needs_rehash(stored, FOR_TESTS)
    assert needs_rehash(stored, PasswordParams(time_cost=2, memory_cost=8, parallelism=1))
    assert needs_rehash(stored, PRODUCTION)
    argon2i = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.I).hash("pw")
    assert verify_password(argon2i, "pw", FOR_TESTS)  # still lets the user in once …
    assert needs_rehash(argon2i, FOR_TESTS)  # … and is then replaced by argon2id
    assert needs_rehash("not a hash", FOR_TESTS)


def test_passwords_are_nfkc_normalised() -> None:
    stored = hash_password("pass123", FOR_TESTS)
    assert verify_password(stored, "ｐａｓｓ１２３", FOR_TESTS)  # full-width IME input
    assert not verify_password(stored, "PASS123", FOR_TESTS)


def test_a_password_is_text() -> None:
    with pytest.raises(TypeError):
        hash_password(b"bytes", FOR_TESTS)  # type: ignore[arg-type]
