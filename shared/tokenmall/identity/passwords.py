"""Password hashes: argon2id (RFC 9106), through argon2-cffi's ``PasswordHasher``.

The stored form is the PHC string (``$argon2id$v=19$m=…,t=…,p=…$salt$hash``): it
carries its own salt and parameters, so raising the cost later needs no migration —
:func:`needs_rehash` says when a stored hash is below the current parameters and the
login that just verified it re-hashes the password.

Production defaults (:data:`PRODUCTION`) are RFC 9106's second recommended option
(argon2id, t=3, 64 MiB, p=4), which is also argon2-cffi's default: about 50-100 ms of
one core per login on current hardware, which is what makes a leaked table
expensive to crack.  Tests pass :data:`FOR_TESTS` (t=1, 8 KiB, p=1), far too weak for
real passwords and only there to keep the suite fast.

Passwords are NFKC-normalised before hashing (NIST SP 800-63B §5.1.1.2), so the same
password typed with a full-width IME layout (``ｐａｓｓ``) and a half-width one gives
the same hash.
"""

from __future__ import annotations

import contextlib
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError


@dataclass(frozen=True)
class PasswordParams:
    """argon2id cost parameters; the defaults are the production ones."""

    time_cost: int = 3  # passes over memory
    memory_cost: int = 64 * 1024  # KiB
    parallelism: int = 4  # lanes
    hash_len: int = 32  # bytes of output
    salt_len: int = 16  # bytes of random salt (RFC 9106 recommends 16)


PRODUCTION = PasswordParams()
FOR_TESTS = PasswordParams(time_cost=1, memory_cost=8, parallelism=1)


@lru_cache(maxsize=8)
def _hasher(params: PasswordParams) -> PasswordHasher:
    return PasswordHasher(
        time_cost=params.time_cost,
        memory_cost=params.memory_cost,
        parallelism=params.parallelism,
        hash_len=params.hash_len,
        salt_len=params.salt_len,
        type=Type.ID,
    )


@lru_cache(maxsize=8)
def _dummy_hash(params: PasswordParams) -> str:
    # verified against when an account has no password, so that answer takes as long
    # as a wrong password does and response times do not reveal which accounts exist
    return _hasher(params).hash("tokenmall: no password is set")


def _normalised(password: str) -> str:
    if not isinstance(password, str):
        raise TypeError("a password is a str")
    return unicodedata.normalize("NFKC", password)


def hash_password(password: str, params: PasswordParams = PRODUCTION) -> str:
    """The argon2id PHC string of ``password``, with a fresh random salt."""
    return _hasher(params).hash(_normalised(password))


def verify_password(
    stored_hash: str | None, password: str, params: PasswordParams = PRODUCTION
) -> bool:
    """Whether ``password`` matches ``stored_hash``; False, never an exception, on a mismatch.

    The comparison inside libargon2 is constant-time.  ``stored_hash=None`` (an
    unknown account, or one that only ever signed in by SMS) costs one verification
    with ``params`` all the same and is False.  A stored value that is not an argon2
    hash is also False: it can let no one in, and the caller cannot fix it mid-login.
    """
    candidate = _normalised(password)
    if stored_hash is None:
        with contextlib.suppress(VerificationError):
            _hasher(params).verify(_dummy_hash(params), candidate)
        return False
    try:
        return _hasher(params).verify(stored_hash, candidate)
    except (VerificationError, InvalidHashError):  # VerifyMismatchError is a VerificationError
        return False


def needs_rehash(stored_hash: str, params: PasswordParams = PRODUCTION) -> bool:
    """Whether ``stored_hash`` was made with other parameters (or another argon2 type)."""
    try:
        return _hasher(params).check_needs_rehash(stored_hash)
    except InvalidHashError:
        return True
