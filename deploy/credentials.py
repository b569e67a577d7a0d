"""Endpoint keys, endpoint tokens and the admin token.

The store keeps only a SHA-256 hash of each endpoint key (what the data plane
checks) and a random nonce. The key itself is HMAC(server secret, endpoint,
key type, nonce): `get-credentials` can show it again, but a copy of the
database alone reveals no key. Regenerating a key draws a new nonce, so the
old key's hash is gone at once. Keys are 256-bit random-equivalent values,
so a plain SHA-256 (not a slow password hash) is the right check.

Tokens (`auth_mode: token`) are `<endpoint>.<expiry unix s>.<hmac>`, verified
without any lookup; they expire after `TOKEN_LIFETIME_S`. The HMAC also covers the
endpoint's current key hashes (its key generation), so `regenerate-keys`, or
deleting and recreating the endpoint, revokes every token issued before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

TOKEN_LIFETIME_S = 3600
KEY_TYPES = ("primary", "secondary")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hash_key(key: str) -> str:
    """SHA-256 of a key (hex)."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_generation(key_hashes: Iterable[str]) -> str:
    """What tokens are bound to: changes whenever any of the endpoint's keys does."""
    return ":".join(sorted(key_hashes))


def read_or_create_secret(path: Path, nbytes: int = 32) -> str:
    """Read a secret file, creating it (mode 0600) with a random value if absent."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


class Credentials:
    """Derives endpoint keys and signs/verifies tokens with the server secret."""

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()

    @classmethod
    def from_home(cls, home: Path) -> Credentials:
        return cls(read_or_create_secret(home / "server_secret"))

    def _mac(self, message: str) -> bytes:
        return hmac.new(self._secret, message.encode(), hashlib.sha256).digest()

    def derive_key(self, endpoint: str, key_type: str, nonce: str) -> str:
        return _b64(self._mac(f"key:{endpoint}:{key_type}:{nonce}"))

    @staticmethod
    def new_nonce() -> str:
        return secrets.token_hex(16)

    def issue_token(
        self, endpoint: str, generation: str, now: float | None = None
    ) -> tuple[str, int]:
        """A token for `endpoint` at key `generation`, and its expiry (unix seconds)."""
        expiry = int((now if now is not None else time.time()) + TOKEN_LIFETIME_S)
        signature = _b64(self._mac(f"token:{endpoint}:{expiry}:{generation}"))
        return f"{endpoint}.{expiry}.{signature}", expiry

    def verify_token(
        self, endpoint: str, token: str, generation: str, now: float | None = None
    ) -> bool:
        parts = token.rsplit(".", 2)
        # isascii first: str.isdigit() also accepts digits such as '²' that int() refuses.
        if (
            len(parts) != 3
            or parts[0] != endpoint
            or not (parts[1].isascii() and parts[1].isdigit())
        ):
            return False
        expected = _b64(self._mac(f"token:{endpoint}:{parts[1]}:{generation}"))
        if not hmac.compare_digest(expected.encode(), parts[2].encode("utf-8", "replace")):
            return False
        return int(parts[1]) > (now if now is not None else time.time())


def expiry_text(expiry: int) -> str:
    return datetime.fromtimestamp(expiry, UTC).isoformat()
