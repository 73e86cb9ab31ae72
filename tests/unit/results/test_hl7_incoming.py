"""From a parsed ORU^R01 to the transport-neutral result: field by field, the PDF carried
as encapsulated data (ED), the JSON a queued message is sealed as, and reprs that name no
value."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from decimal import Decimal

import pytest

from labvault.results.hl7 import MAX_DOCUMENT_BYTES, Hl7Error, Hl7ErrorCode, parse_oru
from labvault.results.incoming import (
    MessageKey,
    PatientIdentifierClaim,
    from_json,
    from_oru,
    to_json,
)

CLIENT = uuid.UUID("6f0c8f8e-3a3b-4c1e-9a57-3f3f0e1d2c4b")
NIR = "279037512345678"  # digits only; the mapping does not check keys
PDF = b"%PDF-1.7\n1 0 obj<<>>endobj\n%%EOF\n"


def message(*extra: str, obr_status: str = "F") -> str:
    segments = [
        "MSH|^~\\&|SIL|LABO|LABVAULT|LV|20260115093000+0100||ORU^R01^ORU_R01|MSG1|P|2.5",
        f"PID|1||{NIR}^^^INS-NIR&urn:oid:1.2.250.1.213.1.4.8&ISO^INS~IPP42^^^LABO^PI||"
        "Dupont^Hélène^Hélène Marie^^^^L~Martin^Hélène^^^^^D||19790315|F",
        "ORC|RE|CMD1^SIL|DOS1^LABO",
        "OBR|1|CMD1^SIL|DOS1^LABO|BIO^Bilan^L|||20260115074500|||||||||12345^Martin||||||"
        f"20260115092500|||{obr_status}",
        "NTE|1|L|A jeun",
        "OBX|1|NM|2345-7^Glucose^LN||5.42|mmol/L|3.9-5.5|H~A|||F|||20260115090000",
        "OBX|2|ST|5778-6^Couleur^LN||Jaune||||||F",
        *extra,
    ]
    return "\r".join(segments) + "\r"


def test_every_field_is_mapped() -> None:
    result = from_oru(parse_oru(message()), CLIENT)
    assert result.client_id == CLIENT
    assert result.key == MessageKey("SIL", "LABO", "MSG1")
    claim = result.patient
    assert [i.is_ins for i in claim.identifiers] == [True, False]
    assert claim.ins[0].oid == "1.2.250.1.213.1.4.8"
    assert claim.ins[0].value == NIR
    assert (claim.birth_name, claim.used_name, claim.first_name) == ("Dupont", "Martin", "Hélène")
    assert claim.first_names == ("Hélène", "Marie")
    assert claim.birth_date == dt.date(1979, 3, 15)
    assert claim.sex == "F"
    (order,) = result.orders
    assert order.order_number == "DOS1"
    assert order.placer_order_number == "CMD1"
    assert order.exams[0].code == "BIO"
    assert order.prescriber.identifier == "12345"
    assert order.lis_status == "F"
    assert order.notes == ("A jeun",)
    assert order.collected_at is not None
    glucose, colour = order.observations
    assert glucose.number == Decimal("5.42")
    assert glucose.code.system == "http://loinc.org"
    assert glucose.abnormal_flags == ("H", "A")
    assert glucose.observed_at is not None
    assert (colour.number, colour.text, colour.value_type) == (None, "Jaune", "ST")
    assert order.pdf is None


def test_a_pdf_travels_as_encapsulated_data() -> None:
    data = base64.b64encode(PDF).decode()
    text = message(f"OBX|3|ED|PDF^Compte rendu^L||^application^pdf^Base64^{data}||||||F")
    (order,) = from_oru(parse_oru(text), CLIENT).orders
    assert order.pdf == PDF
    assert len(order.observations) == 2  # the document is not an observation


@pytest.mark.parametrize(
    "value",
    [
        "^text^plain^Base64^" + base64.b64encode(b"hello").decode(),
        "^application^pdf^Base64^" + base64.b64encode(b"not a pdf").decode(),
        "^application^pdf^Base64^@@@@",
        "^application^pdf^Base64^"
        + base64.b64encode(b"%PDF-" + b"0" * MAX_DOCUMENT_BYTES).decode(),
    ],
    ids=["not-pdf-type", "no-magic", "not-base64", "too-large"],
)
def test_a_bad_document_is_refused_at_its_place(value: str) -> None:
    with pytest.raises(Hl7Error) as refused:
        parse_oru(message(f"OBX|3|ED|PDF^CR^L||{value}||||||F"))
    assert refused.value.code is Hl7ErrorCode.DATA_TYPE
    assert str(refused.value.location) == "OBX[3]-5"
    assert "hello" not in str(refused.value)


def test_the_sealed_json_reads_back_the_same() -> None:
    data = base64.b64encode(PDF).decode()
    result = from_oru(
        parse_oru(
            message(
                "OBX|3|CWE|VIHDEP^VIH^L^56888-1^HIV 1+2 Ab^LN||NEG^Négatif^L||||||F",
                f"OBX|4|ED|PDF^CR^L||^application^pdf^Base64^{data}||||||F",
            )
        ),
        CLIENT,
    )
    hiv = result.orders[0].observations[2].code
    assert [(a.system, a.code) for a in hiv.alternates] == [("http://loinc.org", "56888-1")]
    assert from_json(to_json(result)) == result  # alternates survive the queue
    with pytest.raises(ValueError, match="does not read back") as refused:
        from_json(b'{"client_id": "Dupont"}')
    assert "Dupont" not in str(refused.value)


def test_reprs_name_no_value() -> None:
    result = from_oru(parse_oru(message()), CLIENT)
    shown = repr(result) + repr(result.patient) + repr(result.orders[0]) + repr(result.key)
    shown += repr(result.patient.identifiers[0])
    for value in (NIR, "Dupont", "Hélène", "5.42", "MSG1", "DOS1", "Glucose", "1979"):
        assert value not in shown


@pytest.mark.parametrize(
    ("authority", "is_ins"),
    [
        ("1.2.250.1.213.1.4.8", True),
        ("urn:oid:1.2.250.1.213.1.4.10", True),
        ("URN:OID:1.2.250.1.213.1.4.8", True),
        ("1.2.250.1.213.1.4.9", False),  # NIA: not matched here
        ("LABO", False),
    ],
)
def test_which_authorities_are_ins(authority: str, is_ins: bool) -> None:
    assert PatientIdentifierClaim(NIR, authority, "INS").is_ins is is_ins
