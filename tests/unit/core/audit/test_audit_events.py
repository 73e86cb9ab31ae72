"""Events: the tag registry, what a field may hold, and the exact bytes a leaf hashes."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labvault.core.audit.actions import (
    ACTIONS,
    READ_ACTIONS,
    TAG_PATTERN,
    AuditAction,
    patient_visible_actions,
    read_action,
)
from labvault.core.audit.events import (
    CANONICAL_FIELD_COUNT,
    CANONICAL_FIELD_NAMES,
    TOKEN_PATTERN,
    ClientAddressHasher,
    encode_event,
    is_well_formed,
)
from labvault.core.audit.merkle import leaf_hash
from labvault.core.audit.models import from_micros, to_micros
from labvault.core.crypto.providers import MemoryKeyProvider

FIXED_EVENT = [
    "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "1796428800000000",
    "aaaaaaaabbbbccccddddeeeeeeeeeeee",
    "system",
    "system:cli:patients-find",
    "",
    "",
    "patient:record:read",
    "patient",
    "11111111222233334444555555555555",
    "cli:patients-find",
    "success",
    "5f3c0e6d2a1b4c8d9e7f6a5b4c3d2e1f",
    "",
]


def test_every_tag_is_area_object_action_and_described() -> None:
    assert set(ACTIONS) == set(AuditAction)
    for action in AuditAction:
        assert TAG_PATTERN.fullmatch(action.value), action
        assert ACTIONS[action].description
    assert len({a.value for a in AuditAction}) == len(AuditAction)


def test_every_subject_the_keyring_opens_has_a_read_tag() -> None:
    assert read_action("patient") is AuditAction.PATIENT_RECORD_READ
    assert set(READ_ACTIONS) == {"patient", "staff", "account", "break-glass", "result-message"}
    with pytest.raises(ValueError, match="no audit action"):
        read_action("prescription")


def test_the_patient_sees_reads_and_creation_but_not_searches() -> None:
    visible = set(patient_visible_actions())
    assert AuditAction.PATIENT_RECORD_READ in visible
    assert AuditAction.PATIENT_RECORD_CREATE in visible
    assert AuditAction.PATIENT_SEARCH_NIR not in visible


@pytest.mark.parametrize(
    "value",
    ["system:cli:seed", "3f2a9c4e-0000-4000-8000-000000000000", "care", "biologist", "a" * 128],
)
def test_tokens_accept_ids_and_tags(value: str) -> None:
    assert TOKEN_PATTERN.fullmatch(value)


@pytest.mark.parametrize(
    "value",
    ["Jean Dupont", "1 85 05 78 006 084 36", "line\nbreak", "", "a" * 129, "é", "x y"],
)
def test_tokens_refuse_free_text(value: str) -> None:
    assert not TOKEN_PATTERN.fullmatch(value)


def test_the_leaf_encoding_is_pinned() -> None:
    """Changing these bytes would make every existing log fail verification."""
    encoded = encode_event(FIXED_EVENT)
    assert encoded == (
        b"labvault-audit-event/1\n0f1e2d3c4b5a69788796a5b4c3d2e1f0\n1796428800000000\n"
        b"aaaaaaaabbbbccccddddeeeeeeeeeeee\nsystem\nsystem:cli:patients-find\n\n\n"
        b"patient:record:read\npatient\n11111111222233334444555555555555\n"
        b"cli:patients-find\nsuccess\n5f3c0e6d2a1b4c8d9e7f6a5b4c3d2e1f\n"
    )
    assert len(FIXED_EVENT) == CANONICAL_FIELD_COUNT == len(CANONICAL_FIELD_NAMES)
    assert is_well_formed(encoded)
    assert leaf_hash(encoded) == hashlib.sha256(b"\x00" + encoded).digest()


@given(st.integers(0, CANONICAL_FIELD_COUNT - 2), st.text(min_size=1, max_size=5))
def test_text_moved_across_a_field_boundary_is_caught(position: int, moved: str) -> None:
    fields = list(FIXED_EVENT)
    fields[position] = fields[position] + "\n" + moved
    assert not is_well_formed(encode_event(fields))


def test_the_client_address_hash_is_keyed_and_normalised() -> None:
    provider = MemoryKeyProvider()
    hasher = ClientAddressHasher.from_provider(provider)
    other = ClientAddressHasher.from_provider(MemoryKeyProvider())
    assert hasher("2001:db8::1") == hasher("2001:0db8:0000::0001")
    assert hasher("192.0.2.1") != other("192.0.2.1")
    assert len(hasher("192.0.2.1")) == 32
    assert hasher("not an address") == hasher("also not one")
    assert "**" in repr(hasher)


@given(st.datetimes(timezones=st.just(__import__("datetime").UTC)))
def test_microsecond_times_round_trip(moment: object) -> None:
    import datetime as dt

    assert isinstance(moment, dt.datetime)
    assert from_micros(to_micros(moment)) == moment
