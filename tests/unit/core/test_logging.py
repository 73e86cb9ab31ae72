"""The PII-scrubbing log processor (invariant I5)."""

from __future__ import annotations

import io
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from labvault.core.config import Settings
from labvault.core.crypto.secret import Secret
from labvault.core.logging import (
    REDACTED,
    configure_logging,
    is_personal_field,
    mask_personal_text,
    scrub_personal_data,
)

# --- synthetic personal values ------------------------------------------------------------


@st.composite
def nirs(draw: st.DrawFn) -> str:
    """Synthetic NIRs with a correct key, compact or spaced, mainland or Corsica."""
    sex = draw(st.sampled_from("1278"))
    year = draw(st.integers(0, 99))
    month = draw(st.sampled_from([*range(1, 13), 20, 30, 42, 50, 99]))
    department = draw(
        st.one_of(
            st.integers(1, 95).filter(lambda d: d != 20).map(lambda d: f"{d:02d}"),
            st.sampled_from(["2A", "2B", "2a", "2b", "97", "99"]),
        )
    )
    commune = draw(st.integers(1, 999))
    order = draw(st.integers(1, 999))
    head = f"{sex}{year:02d}{month:02d}{department}{commune:03d}{order:03d}"
    numeric = head.upper().replace("2A", "19", 1) if department.upper() == "2A" else head
    if department.upper() == "2B":
        numeric = head.upper().replace("2B", "18", 1)
    key = 97 - int(numeric) % 97
    parts = [
        sex,
        f"{year:02d}",
        f"{month:02d}",
        department,
        f"{commune:03d}",
        f"{order:03d}",
        f"{key:02d}",
    ]
    separator = draw(st.sampled_from(["", " ", "\u00a0", ".", "-"]))
    return separator.join(parts)


@st.composite
def phones(draw: st.DrawFn) -> str:
    digits = draw(st.lists(st.integers(0, 99), min_size=4, max_size=4))
    first = draw(st.integers(1, 9))
    groups = [f"{d:02d}" for d in digits]
    separator = draw(st.sampled_from(["", " ", ".", "-"]))
    national = separator.join([f"0{first}", *groups])
    international = separator.join([f"+33{separator}{first}", *groups])
    with_trunk = separator.join([f"+33 (0){first}", *groups])
    zero_zero = separator.join([f"0033{separator}{first}", *groups])
    other_country = "+" + draw(st.from_regex(r"[1-9][0-9]{6,14}", fullmatch=True))
    return draw(st.sampled_from([national, international, with_trunk, zero_zero, other_country]))


personal_values = st.one_of(nirs(), st.emails(), phones())


def _dumped(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _scrub(**event: Any) -> dict[str, Any]:
    return dict(scrub_personal_data(None, "info", dict(event)))


# --- masking in free text -----------------------------------------------------------------


@settings(max_examples=400)
@given(prefix=st.text(max_size=30), value=personal_values, suffix=st.text(max_size=30))
def test_personal_values_embedded_in_text_never_survive(
    prefix: str, value: str, suffix: str
) -> None:
    message = f"{prefix}{value}{suffix}"
    scrubbed = _scrub(event=message, detail=message, nested={"items": [message, (message,)]})
    assert value not in _dumped(scrubbed)
    assert value not in mask_personal_text(message)


@given(value=personal_values, separator=st.sampled_from([" ", ", ", ": ", "\n", "=", " (", "<"]))
def test_personal_values_in_sentences_are_replaced_by_a_marker(value: str, separator: str) -> None:
    masked = mask_personal_text(f"patient{separator}{value}{separator}a appelé")
    assert value not in masked
    assert "[" in masked
    assert masked.endswith("a appelé")


@pytest.mark.parametrize(
    "nir",
    [
        "295109912611193",
        "2 95 10 99 126 111 93",
        "253072B07300470",
        "253072A07300443",
        "2 84 05 2A 321 025 52",
        "2 84 20 2B 321 025 28",
        "185057512345674",  # wrong key: still a NIR typed by someone
    ],
)
def test_known_nir_shapes_are_masked(nir: str) -> None:
    assert mask_personal_text(f"NIR={nir};") == "NIR=[nir];"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("appel du 06 12 34 56 78", "appel du [phone]"),
        ("tél. 06.12.34.56.78.", "tél. [phone]."),
        ("+33 6 12 34 56 78", "[phone]"),
        ("+33 (0)1 23 45 67 89", "[phone]"),
        ("0033612345678", "[phone]"),
        ("+4915112345678", "[phone]"),
        ("écrire à jeanne.dupont+labo@exemple.fr.", "écrire à [email]."),
    ],
)
def test_known_phone_and_email_shapes_are_masked(text: str, expected: str) -> None:
    assert mask_personal_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "GET /api/v1/health 200 in 12.5 ms",
        "2026-03-29T01:59:59.123456Z",
        "tree size 1234567, 42 events",
        "patient 0b3c2d6e-8f41-4c2a-9e57-1a2b3c4d5e6f",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert mask_personal_text(text) == text


def test_uuids_and_request_ids_are_never_masked() -> None:
    # Random hex regularly contains digit runs that look like a phone or a NIR.
    all_digits = "12345678-1234-4123-8123-123456789012"
    request_id = "528df185057800608436c83150460a830f"[:32]
    scrubbed = _scrub(event="x", patient_id=all_digits, request_id=request_id)
    assert scrubbed["patient_id"] == all_digits
    assert scrubbed["request_id"] == request_id


# --- personal fields ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "name",
        "birth_name",
        "used_name",
        "first_names",
        "firstName",
        "BIRTH_DATE",
        "email",
        "patient_email",
        "contactPhone",
        "phone_number",
        "nir",
        "ins",
        "address",
        "postal_code",
        "city",
        "password",
        "password_hash",
        "token",
        "access_token",
        "secret",
        "totp_secret",
        "key",
        "api_key",
        "X-Auth-Token",
        "authorization",
    ],
)
def test_personal_field_names_match(key: str) -> None:
    assert is_personal_field(key)


@pytest.mark.parametrize(
    "key",
    [
        "event",
        "request_id",
        "route",
        "method",
        "status",
        "duration_ms",
        "tenant_id",
        "key_id",
        "insured",
        "logins",
        "status_code",
        "patient_id",
    ],
)
def test_other_field_names_do_not_match(key: str) -> None:
    assert not is_personal_field(key)


def test_named_fields_are_redacted_at_any_depth() -> None:
    scrubbed = _scrub(
        event="patient.updated",
        birth_name="DUPONT",
        patient={
            "firstName": "Jeanne",
            "contact": {"Email": "x", "PHONE": 123, "city": {"deep": "Lyon"}},
            "visits": [{"address": "1 rue de la Paix"}, {"site": "Lyon-Centre"}],
        },
        password=Secret(b"k"),
    )
    assert scrubbed["birth_name"] == REDACTED
    assert scrubbed["password"] == REDACTED
    patient = scrubbed["patient"]
    assert patient["firstName"] == REDACTED
    assert patient["contact"] == {"Email": REDACTED, "PHONE": REDACTED, "city": REDACTED}
    assert patient["visits"] == [{"address": REDACTED}, {"site": "Lyon-Centre"}]
    for plain in ("DUPONT", "Jeanne", "rue de la Paix", "123"):
        assert plain not in _dumped(scrubbed)


@given(
    key=st.sampled_from(["name", "birth_name", "email", "nir", "birthDate", "Phone", "token"]),
    value=st.one_of(st.text(min_size=1), st.integers(), st.lists(st.text(min_size=1))),
    depth=st.integers(0, 5),
)
def test_named_fields_are_redacted_whatever_their_value(key: str, value: Any, depth: int) -> None:
    nested: Any = {key: value}
    for level in range(depth):
        nested = {f"level{level}": [nested]} if level % 2 else {f"level{level}": nested}
    scrubbed = _scrub(event="e", data=nested)
    inner: Any = scrubbed["data"]
    for level in reversed(range(depth)):
        inner = inner[f"level{level}"]
        if level % 2:
            inner = inner[0]
    assert inner == {key: REDACTED}


def test_secrets_bytes_and_objects_are_rendered_safely() -> None:
    @dataclass
    class Identity:
        birth_name: str
        site: str

    scrubbed = _scrub(
        event="e",
        material=Secret(b"\x00" * 32),
        wrapped=b"\x01" * 60,
        items=[Secret("s3cr3t-value")],
        identity=Identity("DUPONT", "Lyon"),
        ident=uuid.UUID(int=1),
    )
    assert scrubbed["material"] == "**********"
    assert scrubbed["wrapped"] == "<60 bytes>"
    assert scrubbed["items"] == ["**********"]
    assert scrubbed["identity"] == {"birth_name": REDACTED, "site": "Lyon"}
    assert scrubbed["ident"] == uuid.UUID(int=1)
    assert "s3cr3t" not in _dumped(scrubbed)


def test_the_event_message_is_masked_not_redacted() -> None:
    scrubbed = _scrub(event="rappel envoyé au 06 12 34 56 78")
    assert scrubbed["event"] == "rappel envoyé au [phone]"


# --- configured pipeline --------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Any:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_LabvaultHandler":
            root.removeHandler(handler)


@pytest.mark.usefixtures("restore_logging")
def test_json_logs_are_scrubbed_end_to_end(tmp_path: Any) -> None:
    stream = io.StringIO()
    configure_logging(Settings(data_dir=tmp_path, log_format="json"), stream=stream)
    log = structlog.get_logger("labvault.test")
    with structlog.contextvars.bound_contextvars(request_id="abc"):
        log.info("appel de jeanne@example.fr", first_name="Jeanne", note={"nir": "x"})
        try:
            raise ValueError("bad NIR 2 84 05 2A 321 025 52")
        except ValueError:
            log.exception("failed")
    logging.getLogger("uvicorn.error").error("client sent +33612345678")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == [
        "appel de [email]",
        "failed",
        "client sent [phone]",
    ]
    assert lines[0]["first_name"] == REDACTED
    assert lines[0]["note"] == REDACTED
    assert lines[0]["request_id"] == "abc"
    assert lines[0]["logger"] == "labvault.test"
    assert "ValueError: bad NIR [nir]" in lines[1]["exception"]
    assert lines[2]["logger"] == "uvicorn.error"
    output = stream.getvalue()
    for leaked in ("jeanne@", "Jeanne", "2A 321", "612345678"):
        assert leaked not in output


@pytest.mark.usefixtures("restore_logging")
def test_console_logs_are_scrubbed_and_levels_filter(tmp_path: Any) -> None:
    stream = io.StringIO()
    configure_logging(
        Settings(data_dir=tmp_path, log_format="console", log_level="warning"), stream=stream
    )
    log = structlog.get_logger()
    log.info("hidden")
    log.warning("mail sent", email="jeanne@example.fr", to="jeanne@example.fr")
    output = stream.getvalue()
    assert "hidden" not in output
    assert "mail sent" in output
    assert "jeanne" not in output
    assert logging.getLogger("uvicorn.access").disabled


def test_long_values_are_masked_then_truncated_quickly() -> None:
    nir = "2 84 05 2A 321 025 52"
    value = "a" * 31_990 + nir + "b" * 100_000
    scrubbed = _scrub(event="e", blob=value, no_at="x" * 300_000 + "@")
    assert scrubbed["blob"].startswith("a" * 31_990 + "[nir]")
    assert scrubbed["blob"].endswith("[truncated]")
    assert "2A 321" not in scrubbed["blob"]
