"""Secrets by reference: deployment specs say `${secret:NAME}` where a credential goes
(environment variables, a remote runtime's headers); the store keeps each secret
encrypted (Fernet: AES-128-CBC with HMAC-SHA256) under a key the store does not hold,
and the value is resolved only where it is used (a worker's environment, an outgoing
header). Answers, the audit log and logs show the reference, never the value.

The key: SERVEGATE_SECRETS_KEY (Fernet keys, comma-separated, newest first), or the file
SERVEGATE_SECRETS_KEY_FILE names, else `<home>/secrets.key` (created 0600). Rotation:
put a new key first, keep the old ones after it, run `servegate secret rotate` (every
secret is re-encrypted with the newest key), then drop the old keys. Replicas must share
the key, as they share the server secret. It is not SERVEGATE_SECRET_KEY (the server
secret, which derives endpoint keys): rotating one must not change the other.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from deploy.errors import SpecError, StoreUnavailable

KEY_ENV = "SERVEGATE_SECRETS_KEY"
KEY_FILE_ENV = "SERVEGATE_SECRETS_KEY_FILE"
#: `${secret:NAME}` anywhere in a value
REFERENCE = re.compile(r"\$\{secret:([^}]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def check_secret_name(name: str, field: str = "name") -> str:
    if not _NAME.match(name):
        raise SpecError(
            f"{field}: '{name}' is not a secret name (letters, digits, '_', '.', '-'; "
            "at most 128 characters)"
        )
    return name


def references(value: str) -> list[str]:
    """The secret names a value refers to."""
    return REFERENCE.findall(value)


def is_reference(value: object) -> bool:
    """The whole value is one `${secret:NAME}` reference."""
    return isinstance(value, str) and REFERENCE.fullmatch(value) is not None


def resolve(value: str, lookup: Callable[[str], str]) -> str:
    """`value` with every reference replaced by its secret."""
    return REFERENCE.sub(lambda match: lookup(match.group(1)), value)


class SecretBox:
    """Encrypts with the newest key, decrypts with any of them."""

    def __init__(self, keys: list[bytes]) -> None:
        try:
            self._fernets = [Fernet(key) for key in keys]
        except ValueError:
            raise StoreUnavailable(
                f"{KEY_ENV}: each key must be 32 url-safe base64-encoded bytes "
                "(python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())')"
            ) from None
        self._box = MultiFernet(self._fernets)

    @classmethod
    def load(cls, home: Path) -> SecretBox:
        raw = os.environ.get(KEY_ENV, "")
        if not raw and os.environ.get(KEY_FILE_ENV):
            source = os.environ[KEY_FILE_ENV]
            try:
                raw = Path(source).read_text()
            except OSError as exc:
                raise StoreUnavailable(f"{KEY_FILE_ENV}: cannot read '{source}': {exc}") from None
        if not raw:
            path = home / "secrets.key"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(Fernet.generate_key() + b"\n")
            raw = path.read_text()
        keys = [k.strip().encode() for k in raw.replace("\n", ",").split(",") if k.strip()]
        return cls(keys)

    def encrypt(self, value: str) -> str:
        return self._box.encrypt(value.encode()).decode()

    def decrypt(self, ciphertext: str, name: str) -> str:
        try:
            return self._box.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise SpecError(
                f"secret '{name}' cannot be decrypted with the configured key(s) "
                f"({KEY_ENV}); was it set with another key?"
            ) from None

    def rotate(self, ciphertext: str) -> str:
        """The same secret, encrypted with the newest key."""
        return self._box.rotate(ciphertext.encode()).decode()
