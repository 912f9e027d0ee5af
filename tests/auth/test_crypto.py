"""AES-256-GCM sealing of provider keys: round trip, binding to the row, wrong keys."""

from __future__ import annotations

import pytest

from services.auth.crypto import (
    NONCE_BYTES,
    CredentialKeyMismatch,
    DataKey,
    associated_data,
    generate_data_key,
    key_version,
)

SECRET = "sk-provider-0123456789abcdefXYZW"


def test_round_trip_with_fresh_nonces() -> None:
    key = DataKey(generate_data_key())
    aad = associated_data("org1", "openai", "prov_1")
    a, b = key.seal(SECRET, aad), key.seal(SECRET, aad)
    assert len(a.nonce) == NONCE_BYTES and a.nonce != b.nonce
    assert a.ciphertext != b.ciphertext
    assert SECRET.encode() not in a.ciphertext
    assert key.open(a, aad, "x") == key.open(b, aad, "x") == SECRET


def test_ciphertext_is_bound_to_its_row() -> None:
    key = DataKey(generate_data_key())
    sealed = key.seal(SECRET, associated_data("org1", "openai", "prov_1"))
    for other in (
        associated_data("org2", "openai", "prov_1"),
        associated_data("org1", "anthropic", "prov_1"),
        associated_data("org1", "openai", "prov_2"),
    ):
        with pytest.raises(CredentialKeyMismatch) as err:
            key.open(sealed, other, "provider credential prov_1")
        assert "integrity" in err.value.message


def test_wrong_key_names_the_versions_never_the_key() -> None:
    raw_a, raw_b = generate_data_key(), generate_data_key()
    a, b = DataKey(raw_a), DataKey(raw_b)
    aad = associated_data("org1", "openai", "prov_1")
    with pytest.raises(CredentialKeyMismatch) as err:
        b.open(a.seal(SECRET, aad), aad, "provider credential prov_1")
    message = err.value.message
    assert key_version(raw_a) in message and key_version(raw_b) in message
    assert "prov_1" in message
    for raw in (raw_a, raw_b):
        assert raw.hex() not in message
    assert SECRET not in message
    assert err.value.code == "credentials_key_mismatch"


def test_key_version_and_repr() -> None:
    raw = bytes(32)
    assert key_version(raw) == "66687aadf862bd77"  # sha256(32 zero bytes)[:16]
    assert repr(DataKey(raw)) == "DataKey(version=66687aadf862bd77)"
    with pytest.raises(ValueError):
        DataKey(b"short")
