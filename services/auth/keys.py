"""The API key format: generating secrets, checking their shape offline, and hashing them.

A key reads `sk-sluice-<body><check>`: a recognisable prefix (secret scanners match it), a body
of 43 base62 characters from `secrets` (62**43 > 2**256), and 6 base62 characters of the body's
CRC32. The checksum lets us reject typos and garbage without touching the database, and lets a
scanner tell a real key from a look-alike. Only an HMAC-SHA-256 of the whole secret, keyed with
a server secret, is ever stored: a stolen table cannot be checked offline without that secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib

PREFIX = "sk-sluice-"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LEN = 43
CHECK_LEN = 6  # 62**6 > 2**32, so any CRC32 fits
KEY_LEN = len(PREFIX) + BODY_LEN + CHECK_LEN
_BASE62_SET = frozenset(BASE62)
# How many trailing characters a fingerprint shows: enough to tell keys apart, never enough to
# matter (they are checksum characters, derived from the body, not extra secret material).
_TAIL = 4


def _base62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(BASE62[r])
    return "".join(reversed(out))


def checksum(body: str) -> str:
    """The 6-character check suffix of a key body."""
    return _base62(zlib.crc32(body.encode("ascii")), CHECK_LEN)


def generate_key() -> str:
    """A new secret key; shown to its owner once and then only ever stored as a hash."""
    body = "".join(secrets.choice(BASE62) for _ in range(BODY_LEN))
    return PREFIX + body + checksum(body)


def is_well_formed(secret: str) -> bool:
    """True when `secret` has our prefix, length, alphabet and a matching checksum."""
    if len(secret) != KEY_LEN or not secret.startswith(PREFIX):
        return False
    rest = secret[len(PREFIX) :]
    if not _BASE62_SET.issuperset(rest):
        return False
    body, check = rest[:BODY_LEN], rest[BODY_LEN:]
    return hmac.compare_digest(checksum(body), check)


def hash_key(secret: str, server_secret: bytes) -> str:
    """Hex HMAC-SHA-256 of the whole secret under the server secret: what the database stores."""
    return hmac.new(server_secret, secret.encode("utf-8"), hashlib.sha256).hexdigest()


def fingerprint(secret: str) -> str:
    """The short, non-secret form shown in listings and errors, e.g. `sk-sluice-...Ab3d`."""
    return f"{PREFIX}...{secret[-_TAIL:]}"


def redact(supplied: str) -> str:
    """A safe rendering of whatever a client sent as a key, for error messages and logs.

    It never contains more than the last 4 characters, and only when the input is long enough
    that 4 characters are a small part of it; anything outside base62 is masked so that a
    message cannot be used to inject text into logs.
    """
    if len(supplied) < 3 * _TAIL:
        return "***"
    tail = "".join(c if c in _BASE62_SET else "*" for c in supplied[-_TAIL:])
    head = PREFIX if supplied.startswith(PREFIX) else ""
    return f"{head}...{tail}"
