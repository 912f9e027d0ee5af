"""The key format: shape, checksum, keyed hashing and safe rendering."""

from __future__ import annotations

import re

from services.auth import keys


def test_generated_key_has_prefix_length_and_alphabet() -> None:
    secret = keys.generate_key()
    assert re.fullmatch(r"sk-sluice-[0-9A-Za-z]{49}", secret)
    assert len(secret) == keys.KEY_LEN
    assert keys.is_well_formed(secret)


def test_body_carries_at_least_256_bits() -> None:
    assert 62**keys.BODY_LEN >= 2**256


def test_generated_keys_differ() -> None:
    assert len({keys.generate_key() for _ in range(200)}) == 200


def test_checksum_rejects_every_single_character_typo() -> None:
    secret = keys.generate_key()
    start = len(keys.PREFIX)
    for i in range(start, len(secret)):
        for c in "0aZ9":
            if c != secret[i]:
                typo = secret[:i] + c + secret[i + 1 :]
                assert not keys.is_well_formed(typo), (i, c)


def test_checksum_rejects_adjacent_swaps() -> None:
    secret = keys.generate_key()
    for i in range(len(keys.PREFIX), len(secret) - 1):
        if secret[i] != secret[i + 1]:
            swapped = secret[:i] + secret[i + 1] + secret[i] + secret[i + 2 :]
            assert not keys.is_well_formed(swapped), i


def test_malformed_inputs() -> None:
    secret = keys.generate_key()
    for bad in (
        "",
        "sk-sluice-",
        secret[:-1],
        secret + "x",
        "sk-other-" + secret[len("sk-sluice-") - 1 :],
        secret.replace("sk-sluice-", "SK-SLUICE-"),
        secret[:20] + "-" + secret[21:],
        secret[:20] + "é" + secret[21:],
        "sk-proj-" + "a" * 48,
    ):
        assert not keys.is_well_formed(bad), bad


def test_hash_is_hex_sha256_and_depends_on_server_secret() -> None:
    secret = keys.generate_key()
    a = keys.hash_key(secret, b"one")
    assert re.fullmatch(r"[0-9a-f]{64}", a)
    assert a == keys.hash_key(secret, b"one")
    assert a != keys.hash_key(secret, b"two")
    assert a != keys.hash_key(keys.generate_key(), b"one")


def test_fingerprint_shows_only_the_tail() -> None:
    secret = keys.generate_key()
    fp = keys.fingerprint(secret)
    assert fp == "sk-sluice-..." + secret[-4:]
    assert secret[len(keys.PREFIX) : -4] not in fp


def test_redact_never_shows_short_inputs_or_odd_characters() -> None:
    assert keys.redact("") == "***"
    assert keys.redact("hunter2") == "***"
    secret = keys.generate_key()
    assert keys.redact(secret) == keys.fingerprint(secret)
    assert keys.redact("sk-proj-abcdefghijkl") == "...ijkl"
    assert keys.redact("x" * 20 + "\n\x1b[") == "...x***"
