"""Reader access codes: PBKDF2-SHA256 hashes for the study file (``hash-password``), checked in constant time; a
plain ``password`` in the study file is compared by digest, also in constant time. Nothing here prints or logs a
password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from chexone.reader_study.study import Reader

SCHEME = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    """``pbkdf2_sha256$ITERATIONS$SALT$HASH`` (salt and hash URL-safe base64), for ``password_hash:``."""
    if not password:
        raise ValueError("empty password")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"{SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


def check_hash_format(text: str) -> str | None:
    """Why ``text`` is not a usable hash, or None."""
    parts = text.split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        return f"expected '{SCHEME}$ITERATIONS$SALT$HASH' (make one with: python -m chexone.reader_study hash-password)"
    if not parts[1].isdigit() or not 1 <= int(parts[1]) <= 10_000_000:
        return "the iteration count must be a number between 1 and 10000000"
    try:
        if len(_unb64(parts[2])) < 8 or len(_unb64(parts[3])) != 32:
            return "the salt must have at least 8 bytes and the hash 32"
    except (ValueError, TypeError):
        return "the salt and hash must be URL-safe base64"
    return None


def verify_password(password: str, stored_hash: str) -> bool:
    _, iterations, salt, digest = stored_hash.split("$")
    got = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), _unb64(salt), int(iterations))
    return hmac.compare_digest(got, _unb64(digest))


def check_reader(reader: Reader, password: str) -> bool:
    """Whether ``password`` opens ``reader`` (always true for a reader without an access code)."""
    if reader.password_hash:
        return verify_password(password, reader.password_hash)
    if reader.password:
        return hmac.compare_digest(hashlib.sha256(password.encode("utf-8")).digest(),
                                   hashlib.sha256(reader.password.encode("utf-8")).digest())
    return True
