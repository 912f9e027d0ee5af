"""Encryption of provider credentials at rest: AES-256-GCM under one 32-byte data key.

Each encryption draws a fresh random 96-bit nonce, and the associated data binds a ciphertext
to its row (organization, provider, credential id), so a ciphertext copied into another row
does not decrypt. Rows record the data key's version (a short hash of it, never the key) so
that a wrong key is reported as such instead of as corrupt data.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.common.errors import Unavailable

KEY_BYTES = 32
NONCE_BYTES = 12
_AAD_PREFIX = b"sluice.provider-credential.v1"


class CredentialKeyMismatch(Unavailable):
    """A stored credential cannot be decrypted with the configured data key."""


@dataclass(frozen=True)
class Sealed:
    ciphertext: bytes  # includes the 16-byte GCM tag
    nonce: bytes
    key_version: str


def generate_data_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def key_version(key: bytes) -> str:
    """A short, non-secret id of a data key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:16]


def associated_data(org_id: str, provider: str, credential_id: str) -> bytes:
    """What a ciphertext is bound to; NUL-separated, as none of the parts can contain NUL."""
    return b"\0".join((_AAD_PREFIX, *(p.encode() for p in (org_id, provider, credential_id))))


class DataKey:
    """The data key with the operations on it; its repr shows the version, never the key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"the credentials data key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)
        self.version = key_version(key)

    def __repr__(self) -> str:
        return f"DataKey(version={self.version})"

    def seal(self, plaintext: str, aad: bytes) -> Sealed:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return Sealed(self._aead.encrypt(nonce, plaintext.encode(), aad), nonce, self.version)

    def open(self, sealed: Sealed, aad: bytes, what: str) -> str:
        """The plaintext; `CredentialKeyMismatch` naming `what` and the key versions otherwise."""
        if sealed.key_version != self.version:
            raise CredentialKeyMismatch(
                f"{what} was encrypted under data key version {sealed.key_version}, but the "
                f"configured data key is version {self.version}: configure the key it was "
                "stored with (SLUICE_CREDENTIALS_KEY or data_dir/credentials_key), or "
                "re-encrypt with `sluice providers rekey` while the old key is configured",
                code="credentials_key_mismatch",
            )
        try:
            return self._aead.decrypt(sealed.nonce, sealed.ciphertext, aad).decode()
        except InvalidTag:
            raise CredentialKeyMismatch(
                f"{what} failed its integrity check under data key version {self.version}: "
                "the stored row was altered or belongs to another credential",
                code="credentials_key_mismatch",
            ) from None
