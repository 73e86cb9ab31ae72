"""DataKey: AES-256-GCM field encryption bound to table, column, row id and key id."""

from __future__ import annotations

import uuid

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from labvault.core.crypto.envelope import (
    DATA_KEY_BYTES,
    FORMAT_VERSION,
    DataKey,
    associated_data,
    key_id_of,
)
from labvault.core.crypto.errors import CryptoError, DecryptionError
from labvault.core.crypto.secret import Secret

HEADER_LEN = 1 + 16 + 12
TAG_LEN = 16
TABLE = "patients"
COLUMN = "birth_name"
ROW = uuid.UUID("3f1c2a7e-5b9d-4e8a-9c61-0d2b7f4e8a15")
PLAINTEXT = "Élodie DUPONT-MARTIN 1 rue du Lac".encode()


@pytest.fixture
def key() -> DataKey:
    data_key, _ = DataKey.generate()
    return data_key


@pytest.fixture
def blob(key: DataKey) -> bytes:
    return key.seal(PLAINTEXT, TABLE, COLUMN, ROW)


def assert_clean_failure(exc: DecryptionError, place: str | None = None) -> None:
    message = str(exc)
    assert PLAINTEXT.decode() not in message
    assert "Élodie" not in message
    assert "DUPONT" not in message
    if place is not None:
        assert place in message


# --- round trip -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plaintext",
    [b"", b"x", PLAINTEXT, bytes(range(256)), b"\x00" * 10_000],
    ids=["empty", "one-byte", "utf8", "all-bytes", "large"],
)
def test_seal_then_open_returns_the_plaintext(key: DataKey, plaintext: bytes) -> None:
    blob = key.seal(plaintext, TABLE, COLUMN, ROW)
    assert key.open(blob, TABLE, COLUMN, ROW) == plaintext


def test_blob_layout_is_version_key_id_nonce_ciphertext_tag(key: DataKey, blob: bytes) -> None:
    assert blob[0] == FORMAT_VERSION == 1
    assert blob[1:17] == key.id.bytes
    assert len(blob) == HEADER_LEN + len(PLAINTEXT) + TAG_LEN
    # The ciphertext is not the plaintext (nor contains it).
    assert PLAINTEXT not in blob


def test_blob_matches_an_independent_aes_gcm_decryption() -> None:
    material = Secret(bytes(range(32)))
    key = DataKey(uuid.uuid4(), material)
    blob = key.seal(PLAINTEXT, TABLE, COLUMN, ROW)
    aad = f"labvault/v1|{TABLE}|{COLUMN}|{ROW}|{key.id}".encode()
    assert associated_data(TABLE, COLUMN, ROW, key.id) == aad
    plain = AESGCM(material.reveal()).decrypt(blob[17:29], blob[29:], aad)
    assert plain == PLAINTEXT


def test_open_accepts_bytearray_and_memoryview(key: DataKey, blob: bytes) -> None:
    assert key.open(bytearray(blob), TABLE, COLUMN, ROW) == PLAINTEXT
    assert key.open(memoryview(blob), TABLE, COLUMN, ROW) == PLAINTEXT  # type: ignore[arg-type]


def test_a_key_rebuilt_from_its_material_opens_what_it_sealed() -> None:
    key, material = DataKey.generate()
    blob = key.seal(PLAINTEXT, TABLE, COLUMN, ROW)
    again = DataKey(key.id, Secret(material.reveal()))
    assert again.open(blob, TABLE, COLUMN, ROW) == PLAINTEXT


def test_generate_gives_fresh_32_byte_keys_and_random_ids() -> None:
    (k1, m1), (k2, m2) = DataKey.generate(), DataKey.generate()
    assert len(m1.reveal()) == len(m2.reveal()) == DATA_KEY_BYTES
    assert m1.reveal() != m2.reveal()
    assert k1.id != k2.id
    assert k1.id.version == 4


@pytest.mark.parametrize("length", [0, 16, 24, 31, 33, 64])
def test_data_key_material_must_be_32_bytes(length: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        DataKey(uuid.uuid4(), Secret(b"k" * length))


# --- associated data: place binding ---------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "column", "row_id", "place"),
    [
        ("staff", COLUMN, ROW, f"staff.{COLUMN} of row {ROW}"),
        (TABLE, "first_names", ROW, f"{TABLE}.first_names of row {ROW}"),
        (
            TABLE,
            COLUMN,
            uuid.UUID("00000000-0000-4000-8000-000000000001"),
            f"{TABLE}.{COLUMN} of row 00000000-0000-4000-8000-000000000001",
        ),
    ],
    ids=["other-table", "other-column", "other-row"],
)
def test_opening_at_another_place_fails_and_names_the_place(
    key: DataKey, blob: bytes, table: str, column: str, row_id: uuid.UUID, place: str
) -> None:
    with pytest.raises(DecryptionError) as caught:
        key.open(blob, table, column, row_id)
    assert_clean_failure(caught.value, place)
    assert "does not authenticate" in str(caught.value)


def test_relabelling_the_key_id_fails(blob: bytes) -> None:
    """A blob whose header is rewritten to another key's id does not open under that key."""
    other, _ = DataKey.generate()
    forged = blob[:1] + other.id.bytes + blob[17:]
    with pytest.raises(DecryptionError) as caught:
        other.open(forged, TABLE, COLUMN, ROW)
    assert_clean_failure(caught.value, f"{TABLE}.{COLUMN} of row {ROW}")


def test_same_material_under_another_key_id_fails(blob: bytes, key: DataKey) -> None:
    """The key id is in the associated data: same material, new id, header rewritten."""
    material = Secret(b"\x01" * 32)
    first = DataKey(uuid.uuid4(), material)
    second = DataKey(uuid.uuid4(), material)
    sealed = first.seal(PLAINTEXT, TABLE, COLUMN, ROW)
    relabelled = sealed[:1] + second.id.bytes + sealed[17:]
    with pytest.raises(DecryptionError, match="does not authenticate"):
        second.open(relabelled, TABLE, COLUMN, ROW)
    assert first.open(sealed, TABLE, COLUMN, ROW) == PLAINTEXT


def test_a_blob_from_another_data_key_fails(blob: bytes) -> None:
    other, _ = DataKey.generate()
    with pytest.raises(DecryptionError) as caught:
        other.open(blob, TABLE, COLUMN, ROW)
    assert_clean_failure(caught.value, f"{TABLE}.{COLUMN} of row {ROW}")
    assert "another data key" in str(caught.value)


def test_decryption_error_is_a_crypto_error() -> None:
    assert issubclass(DecryptionError, CryptoError)


# --- tampering --------------------------------------------------------------------------------


def test_every_single_flipped_bit_fails(key: DataKey) -> None:
    blob = key.seal(b"secret!", TABLE, COLUMN, ROW)
    assert len(blob) == HEADER_LEN + 7 + TAG_LEN
    for index in range(len(blob)):
        for bit in range(8):
            tampered = bytearray(blob)
            tampered[index] ^= 1 << bit
            with pytest.raises(DecryptionError) as caught:
                key.open(bytes(tampered), TABLE, COLUMN, ROW)
            assert "secret!" not in str(caught.value)


@pytest.mark.parametrize("keep", [0, 1, 17, 28, 29, 44, -1])
def test_truncated_blobs_fail(key: DataKey, blob: bytes, keep: int) -> None:
    truncated = blob[:keep]
    with pytest.raises(DecryptionError) as caught:
        key.open(truncated, TABLE, COLUMN, ROW)
    assert_clean_failure(caught.value, f"{TABLE}.{COLUMN} of row {ROW}")


def test_every_truncation_fails(key: DataKey, blob: bytes) -> None:
    for keep in range(len(blob)):
        with pytest.raises(DecryptionError):
            key.open(blob[:keep], TABLE, COLUMN, ROW)


def test_appended_bytes_fail(key: DataKey, blob: bytes) -> None:
    with pytest.raises(DecryptionError):
        key.open(blob + b"\x00", TABLE, COLUMN, ROW)


def test_another_format_version_fails_with_a_clear_message(key: DataKey, blob: bytes) -> None:
    with pytest.raises(DecryptionError, match="not a labvault v1 ciphertext"):
        key.open(b"\x02" + blob[1:], TABLE, COLUMN, ROW)


# --- nonces -------------------------------------------------------------------------------------


def test_two_seals_of_the_same_value_differ(key: DataKey) -> None:
    blobs = [key.seal(PLAINTEXT, TABLE, COLUMN, ROW) for _ in range(50)]
    nonces = {blob[17:29] for blob in blobs}
    assert len(nonces) == 50
    assert len(set(blobs)) == 50
    assert all(key.open(b, TABLE, COLUMN, ROW) == PLAINTEXT for b in blobs)


# --- key_id_of ----------------------------------------------------------------------------------


def test_key_id_of_reads_the_header(key: DataKey, blob: bytes) -> None:
    assert key_id_of(blob) == key.id
    assert key_id_of(bytearray(blob)) == key.id


def test_key_id_of_empty_plaintext(key: DataKey) -> None:
    assert key_id_of(key.seal(b"", TABLE, COLUMN, ROW)) == key.id


@pytest.mark.parametrize(
    "bad",
    [b"", b"\x01", b"\x01" + b"\x00" * 43, b"\x02" + b"\x00" * 60, b"\x00" * 64],
    ids=["empty", "one-byte", "too-short", "version-2", "version-0"],
)
def test_key_id_of_rejects_non_ciphertexts(bad: bytes) -> None:
    with pytest.raises(DecryptionError, match="not a labvault v1 ciphertext"):
        key_id_of(bad)


# --- no key material in reprs -------------------------------------------------------------------


def test_repr_never_shows_key_material() -> None:
    material = Secret(bytes(range(32)))
    key = DataKey(uuid.UUID("11111111-2222-4333-8444-555555555555"), material)
    text = repr(key)
    assert text == "DataKey(id=11111111-2222-4333-8444-555555555555, material='**********')"
    raw = material.reveal()
    for form in (raw.hex(), repr(raw), raw.decode("latin-1")):
        assert form not in text
    assert str(key) == text
    assert f"{key}" == text


def test_data_key_has_no_instance_dict() -> None:
    key, _ = DataKey.generate()
    assert not hasattr(key, "__dict__")
    with pytest.raises(AttributeError):
        key.extra = 1  # type: ignore[attr-defined]
