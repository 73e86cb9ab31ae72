"""ORU^R01 parsing, ACK/NACK, MLLP framing, and fuzzing of the parser (issue 8)."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import random
from dataclasses import dataclass
from decimal import Decimal

import pytest
from faker import Faker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labvault.patients.ins import InsOid
from labvault.patients.nir import synthetic_nir
from labvault.results.hl7 import (
    MAX_MESSAGE_BYTES,
    Hl7Error,
    Hl7ErrorCode,
    MllpDecoder,
    MllpError,
    OruMessage,
    ack,
    decode_payload,
    frame,
    nack,
    parse_oru,
    read_control_id,
)

FUZZ = settings(
    derandomize=True,
    deadline=None,
    max_examples=400,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Person:
    nir: str
    birth_name: str
    used_name: str
    first_name: str
    other_first_name: str
    birth_date: dt.date
    internal_id: str


def _person(seed: int = 8) -> Person:
    fake = Faker("fr_FR")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    birth_date = dt.date(1987, 3, 14)
    return Person(
        nir=synthetic_nir(rng, sex=2, birth_date=birth_date).compact,
        birth_name=fake.last_name(),
        used_name=fake.last_name(),
        first_name="Hélène",
        other_first_name=fake.first_name_female(),
        birth_date=birth_date,
        internal_id=f"IPP{rng.randrange(10**6):06d}",
    )


PERSON = _person()
GLUCOSE = "5.42"
HEMOGLOBIN = "13.7"
COMMENT = "Prélèvement à jeun"


def oru(
    *,
    version: str = "2.5",
    message_type: str = "ORU^R01^ORU_R01",
    pid3: str | None = None,
    glucose: str = GLUCOSE,
    extra: str = "",
) -> str:
    p = PERSON
    identifiers = (
        f"{p.nir}^^^ASIP-SANTE-INS-NIR&{InsOid.TEST.value}&ISO^INS"
        f"~{p.internal_id}^^^LABO&1.2.250.1.999.1&ISO^PI"
    )
    segments = [
        "MSH|^~\\&|SIL|LABO-CENTRE|LABVAULT|LV|20260115093000+0100||"
        f"{message_type}|MSG00042|P|{version}|||AL|NE||UNICODE UTF-8",
        f"PID|1||{identifiers if pid3 is None else pid3}||"
        f"{p.birth_name}^{p.first_name}^{p.first_name} {p.other_first_name}^^^^L"
        f"~{p.used_name}^{p.first_name}^^^^^D||{p.birth_date:%Y%m%d}|F",
        "PV1|1|O",
        "ORC|RE|CMD123^SIL|DOS456^LABO||CM||||20260115080000|||10003456789^Martin^Paul",
        "OBR|1|CMD123^SIL|DOS456^LABO|BIO-STD^Bilan standard^L|||20260115074500|||||||||"
        "10003456789^Martin^Paul||||||20260115092500|||F",
        f"NTE|1|L|{COMMENT}",
        f"OBX|1|NM|2345-7^Glucose^LN||{glucose}|mmol/L^mmol/L^UCUM|3.9-5.5|H|||F|||20260115090000",
        "NTE|1|L|Contrôlé",
        f"OBX|2|NM|718-7^Hémoglobine^LN||{HEMOGLOBIN}|g/dL|12.0-16.0|N|||F",
        "OBX|3|ST|5778-6^Couleur^LN||Jaune \\T\\ clair||||||F",
        "OBX|4|CWE|883-9^Groupe ABO^LN||A^Groupe A^L||||||F",
        "OBX|5|SN|2160-0^Créatinine^LN||<^45|umol/L|45-90||||F",
    ]
    if extra:
        segments.append(extra)
    return "\r".join(segments) + "\r"


FIXTURE = oru()
PERSONAL_VALUES = (
    PERSON.nir,
    PERSON.birth_name,
    PERSON.used_name,
    PERSON.first_name,
    PERSON.other_first_name,
    PERSON.internal_id,
    f"{PERSON.birth_date:%Y%m%d}",
    GLUCOSE,
    HEMOGLOBIN,
)


def assert_no_personal_value(error: Hl7Error) -> None:
    text = str(error)
    for value in PERSONAL_VALUES:
        assert value not in text


def parse_error(text: str) -> Hl7Error:
    with pytest.raises(Hl7Error) as caught:
        parse_oru(text)
    assert_no_personal_value(caught.value)
    return caught.value


# --- The valid fixture, field by field -------------------------------------------------


def test_header() -> None:
    header = parse_oru(FIXTURE).header
    assert header.control_id == "MSG00042"
    assert (header.sending_application, header.sending_facility) == ("SIL", "LABO-CENTRE")
    assert (header.receiving_application, header.receiving_facility) == ("LABVAULT", "LV")
    assert header.message_time == dt.datetime(
        2026, 1, 15, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))
    )
    assert header.processing_id == "P"
    assert header.version == "2.5"


def test_patient_identifiers_recognise_the_ins_oid() -> None:
    patient = parse_oru(FIXTURE).patient
    assert [i.as_tuple() for i in patient.identifiers] == [
        (PERSON.nir, InsOid.TEST.value, "INS"),
        (PERSON.internal_id, "1.2.250.1.999.1", "PI"),
    ]


def test_patient_traits() -> None:
    patient = parse_oru(FIXTURE).patient
    assert patient.birth_name == PERSON.birth_name
    assert patient.used_name == PERSON.used_name
    assert patient.first_given_name == PERSON.first_name
    assert patient.given_names == (PERSON.first_name, *PERSON.other_first_name.split())
    assert patient.birth_date == PERSON.birth_date
    assert patient.sex == "F"
    assert PERSON.birth_name not in repr(patient)


def test_order() -> None:
    (order,) = parse_oru(FIXTURE).orders
    assert order.placer_order_number == "CMD123"
    assert order.filler_order_number == "DOS456"
    assert (order.service.code, order.service.text, order.service.system) == (
        "BIO-STD",
        "Bilan standard",
        "L",
    )
    assert order.collected_at == dt.datetime(2026, 1, 15, 7, 45)
    assert order.result_status == "F"
    assert order.ordering_provider_id == "10003456789"
    assert order.notes == (COMMENT,)
    assert COMMENT not in repr(order)
    assert GLUCOSE not in repr(parse_oru(FIXTURE))


def test_observations() -> None:
    glucose, hemoglobin, colour, group, creatinine = parse_oru(FIXTURE).orders[0].observations
    assert glucose.set_id == "1"
    assert glucose.value_type == "NM"
    assert (glucose.code.code, glucose.code.system) == ("2345-7", "LN")
    assert glucose.value == Decimal(GLUCOSE)
    assert glucose.units == "mmol/L"
    assert glucose.reference_range == "3.9-5.5"
    assert glucose.abnormal_flags == ("H",)
    assert glucose.status == "F"
    assert glucose.observed_at == dt.datetime(2026, 1, 15, 9, 0)
    assert glucose.notes == ("Contrôlé",)
    assert GLUCOSE not in repr(glucose)
    assert hemoglobin.value == Decimal(HEMOGLOBIN)
    assert hemoglobin.code.text == "Hémoglobine"
    assert hemoglobin.observed_at is None
    assert hemoglobin.notes == ()
    assert colour.value == "Jaune & clair"  # \T\ unescaped by python-hl7
    assert group.value_type == "CWE"
    assert group.value == "A^Groupe A^L"
    assert creatinine.value_type == "SN"
    assert creatinine.value == "<^45"


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1"])
def test_supported_versions(version: str) -> None:
    assert parse_oru(oru(version=version)).header.version == version


def test_line_feeds_are_accepted_as_segment_separators() -> None:
    message = parse_oru(FIXTURE.replace("\r", "\r\n\n"))
    assert len(message.orders[0].observations) == 5


def test_two_orders_with_their_own_observations() -> None:
    second = "\r".join(
        [
            "OBR|2|CMD124|DOS457|CRP^CRP^L",
            "OBX|1|NM|1988-5^CRP^LN||3|mg/L|<5||||F",
        ]
    )
    message = parse_oru(oru(extra=second))
    assert [len(o.observations) for o in message.orders] == [5, 1]
    assert message.orders[1].ordering_provider_id == ""


# --- Errors: code, location, no personal value ----------------------------------------


def test_missing_msh() -> None:
    error = parse_error(FIXTURE.split("\r", 1)[1])
    assert (error.code, str(error.location)) == (Hl7ErrorCode.SEGMENT_SEQUENCE, "MSH")


def test_wrong_message_type() -> None:
    error = parse_error(oru(message_type="ADT^A01^ADT_A01"))
    assert (error.code, str(error.location)) == (Hl7ErrorCode.UNSUPPORTED_MESSAGE_TYPE, "MSH-9")


def test_wrong_message_type_is_reported_before_the_structure() -> None:
    adt = "\r".join(FIXTURE.split("\r")[:3]).replace("ORU^R01^ORU_R01", "ADT^A08^ADT_A01")
    error = parse_error(adt)
    assert error.code is Hl7ErrorCode.UNSUPPORTED_MESSAGE_TYPE


@pytest.mark.parametrize("version", ["2.2", "2.6", "3.0", ""])
def test_unsupported_version(version: str) -> None:
    error = parse_error(oru(version=version))
    assert (error.code, str(error.location)) == (Hl7ErrorCode.UNSUPPORTED_VERSION, "MSH-12")


def test_obx_before_obr() -> None:
    segments = FIXTURE.split("\r")
    obr = segments[4]
    del segments[3:5]  # ORC, OBR: the first OBX now follows the patient
    segments.insert(5, obr)  # after the first OBX and its note
    error = parse_error("\r".join(segments))
    assert (error.code, str(error.location)) == (Hl7ErrorCode.SEGMENT_SEQUENCE, "OBX")


def test_non_numeric_nm_value() -> None:
    error = parse_error(oru(glucose="abc"))
    assert (error.code, str(error.location)) == (Hl7ErrorCode.DATA_TYPE, "OBX-5")


def test_non_numeric_nm_value_in_a_later_obx_names_its_occurrence() -> None:
    error = parse_error(FIXTURE.replace(f"||{HEMOGLOBIN}|", "||1e3|"))
    assert (error.code, str(error.location)) == (Hl7ErrorCode.DATA_TYPE, "OBX[2]-5")


def test_missing_pid3() -> None:
    error = parse_error(oru(pid3=""))
    assert (error.code, str(error.location)) == (Hl7ErrorCode.REQUIRED_FIELD_MISSING, "PID-3")


def test_missing_obr_segment() -> None:
    segments = [s for s in FIXTURE.split("\r") if s[:3] not in {"ORC", "OBR", "OBX", "NTE"}]
    error = parse_error("\r".join(segments))
    assert (error.code, str(error.location)) == (Hl7ErrorCode.SEGMENT_SEQUENCE, "OBR")


def test_second_patient_is_a_sequence_error() -> None:
    pid = FIXTURE.split("\r")[1]
    error = parse_error(oru(extra=pid))
    assert (error.code, str(error.location)) == (Hl7ErrorCode.SEGMENT_SEQUENCE, "PID[2]")


def test_missing_pid_segment() -> None:
    segments = [s for s in FIXTURE.split("\r") if not s.startswith("PID")]
    error = parse_error("\r".join(segments))
    assert (error.code, str(error.location)) == (Hl7ErrorCode.SEGMENT_SEQUENCE, "PID")


def test_bad_birth_date() -> None:
    error = parse_error(FIXTURE.replace(f"|{PERSON.birth_date:%Y%m%d}|", "|19871399|"))
    assert (error.code, str(error.location)) == (Hl7ErrorCode.DATA_TYPE, "PID-7")


def test_oversized_message() -> None:
    padding = "NTE|1|L|" + "x" * MAX_MESSAGE_BYTES
    error = parse_error(oru(extra=padding))
    assert error.code is Hl7ErrorCode.INTERNAL
    assert str(MAX_MESSAGE_BYTES) in str(error)


def test_too_many_segments() -> None:
    error = parse_error(oru(extra="\r".join(["NTE|1|L|x"] * 6000)))
    assert error.code is Hl7ErrorCode.INTERNAL
    assert "segments" in str(error)


def test_malformed_escapes_log_no_value(caplog: pytest.LogCaptureFixture) -> None:
    name = PERSON.birth_name
    broken = FIXTURE.replace(f"|{name}^", f"|{name}\\Q\\^").replace("Jaune", "Jaune\\")
    with caplog.at_level(logging.DEBUG):
        parse_oru(broken)
        parse_oru(FIXTURE.replace("Jaune \\T\\", "Jaune \\TX\\"))
    assert not [r for r in caplog.records if name in r.getMessage() or "Jaune" in r.getMessage()]


def test_error_text_names_location_and_expectation() -> None:
    error = parse_error(oru(glucose="abc"))
    assert str(error) == "HL7 error 102 (Data type error) at OBX-5: expected a number (NM)"


# --- ACK / NACK ---------------------------------------------------------------------------

NOW = dt.datetime(2026, 1, 15, 9, 31, tzinfo=dt.UTC)


def _ack_segments(text: str) -> list[list[str]]:
    assert text.endswith("\r")
    return [segment.split("|") for segment in text.rstrip("\r").split("\r")]


def test_ack_accept() -> None:
    header = parse_oru(FIXTURE).header
    text = ack(
        header.control_id,
        sending_application="LABVAULT",
        sending_facility="LV",
        receiving_application=header.sending_application,
        receiving_facility=header.sending_facility,
        code="AA",
        ack_control_id="ACK1",
        now=NOW,
    )
    msh, msa = _ack_segments(text)
    assert msh[:12] == [
        "MSH",
        "^~\\&",
        "LABVAULT",
        "LV",
        "SIL",
        "LABO-CENTRE",
        "20260115093100",
        "",
        "ACK^R01^ACK",
        "ACK1",
        "P",
        "2.5",
    ]
    assert msa == ["MSA", "AA", "MSG00042"]


def test_ack_error_carries_err_segment() -> None:
    error = parse_error(oru(glucose="abc"))
    text = ack(
        "MSG00042",
        sending_application="LABVAULT",
        sending_facility="LV",
        receiving_application="SIL",
        receiving_facility="LABO-CENTRE",
        code="AE",
        error=error,
        now=NOW,
    )
    _msh, msa, err = _ack_segments(text)
    assert msa == ["MSA", "AE", "MSG00042"]
    assert err[2] == "OBX^1^5"
    assert err[3] == "102^Data type error^HL70357"
    assert err[4] == "E"
    assert "abc" not in text
    # The ACK parses as HL7 with python-hl7 (escaped text survives).
    assert read_control_id(text) is not None


def test_nack_for_unreadable_input() -> None:
    garbage = "\x00\x01 not hl7 at all"
    with pytest.raises(Hl7Error) as caught:
        parse_oru(garbage)
    assert read_control_id(garbage) is None
    text = nack(caught.value, sending_application="LABVAULT", sending_facility="LV", now=NOW)
    _msh, msa, err = _ack_segments(text)
    assert msa == ["MSA", "AR", ""]
    assert err[3] == "100^Segment sequence error^HL70357"


def test_nack_keeps_the_control_id_when_readable() -> None:
    broken = oru(message_type="ADT^A01")
    with pytest.raises(Hl7Error) as caught:
        parse_oru(broken)
    control_id = read_control_id(broken)
    assert control_id == "MSG00042"
    text = nack(
        caught.value,
        message_control_id=control_id,
        sending_application="LABVAULT",
        sending_facility="LV",
        now=NOW,
    )
    assert "MSA|AR|MSG00042\r" in text


# --- MLLP ---------------------------------------------------------------------------------


def test_frame_bytes() -> None:
    assert frame("MSH|x") == b"\x0bMSH|x\x1c\x0d"


def test_decoder_yields_whole_messages_and_tolerates_line_breaks() -> None:
    decoder = MllpDecoder()
    stream = frame(FIXTURE) + b"\r\n" + frame("MSH|second")
    assert decoder.feed(stream) == [FIXTURE.encode(), b"MSH|second"]
    assert decoder.idle


@pytest.mark.parametrize(
    "data",
    [b"junk", b"\x0bMSH\x0bMSH\x1c\r"],
    ids=["outside-block", "start-inside-block"],
)
def test_decoder_rejects_junk(data: bytes) -> None:
    with pytest.raises(MllpError):
        MllpDecoder().feed(data)


@pytest.mark.parametrize("cut", [0, 1, 50, 100, 101, 102], ids=lambda cut: f"cut-{cut}")
def test_decoder_accepts_a_block_of_exactly_the_limit(cut: int) -> None:
    stream = frame("x" * 100)
    decoder = MllpDecoder(max_message_bytes=100)
    assert decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) == [b"x" * 100]


def test_decoder_rejects_oversized_block() -> None:
    decoder = MllpDecoder(max_message_bytes=100)
    decoder.feed(b"\x0b" + b"x" * 100)
    with pytest.raises(MllpError, match="larger than 100 bytes"):
        decoder.feed(b"x" * 10)


@FUZZ
@given(
    messages=st.lists(st.sampled_from([FIXTURE, "MSH|a\x1cb", "é"]), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=12),
)
def test_decoder_handles_any_chunking(messages: list[str], cuts: list[int]) -> None:
    stream = b"".join(frame(m) for m in messages)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = MllpDecoder()
    received: list[bytes] = []
    for start, end in itertools.pairwise(points):
        received.extend(decoder.feed(stream[start:end]))
    assert received == [m.encode() for m in messages]
    assert decoder.idle


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_fuzz_mllp_and_decoding_of_arbitrary_bytes(chunks: list[bytes]) -> None:
    decoder = MllpDecoder(max_message_bytes=128)
    try:
        payloads = [p for chunk in chunks for p in decoder.feed(chunk)]
    except MllpError:
        return
    for payload in payloads:
        assert len(payload) <= 128
        try:
            _parse_or_hl7_error(decode_payload(payload))
        except Hl7Error as error:
            assert_no_personal_value(error)


def test_decode_payload_follows_msh18() -> None:
    latin = FIXTURE.replace("UNICODE UTF-8", "8859/1")
    assert decode_payload(latin.encode("iso-8859-1")) == latin
    assert decode_payload(FIXTURE.encode()) == FIXTURE
    undeclared = FIXTURE.replace("UNICODE UTF-8", "")
    assert decode_payload(undeclared.encode("iso-8859-1")) == undeclared


def test_decode_payload_rejects_wrong_declared_charset() -> None:
    with pytest.raises(Hl7Error) as caught:
        decode_payload(FIXTURE.encode("iso-8859-1"))
    assert str(caught.value.location) == "MSH-18"


def test_framed_fixture_round_trips_through_decoder_and_parser() -> None:
    (payload,) = MllpDecoder().feed(frame(FIXTURE))
    assert parse_oru(decode_payload(payload)) == parse_oru(FIXTURE)


# --- Fuzzing --------------------------------------------------------------------------


def _parse_or_hl7_error(text: str) -> OruMessage | None:
    try:
        return parse_oru(text)
    except Hl7Error as error:
        assert_no_personal_value(error)
        return None


@FUZZ
@given(st.text(max_size=400))
def test_fuzz_arbitrary_text(text: str) -> None:
    _parse_or_hl7_error(text)


@FUZZ
@given(st.text(alphabet="MSHPIDOBXRC|^~\\&\r\n0123456789 .", max_size=300))
def test_fuzz_hl7_alphabet(text: str) -> None:
    _parse_or_hl7_error("MSH|^~\\&|" + text)


_SEGMENTS = FIXTURE.rstrip("\r").split("\r")


@st.composite
def mutated_fixture(draw: st.DrawFn) -> str:
    text = FIXTURE
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "insert", "segments"]))
        if kind == "segments":
            segments = text.split("\r")
            i = draw(st.integers(0, len(segments) - 1))
            j = draw(st.integers(0, len(segments) - 1))
            action = draw(st.sampled_from(["drop", "dup", "swap"]))
            if action == "drop":
                del segments[i]
            elif action == "dup":
                segments.insert(j, segments[i])
            else:
                segments[i], segments[j] = segments[j], segments[i]
            text = "\r".join(segments)
            continue
        i = draw(st.integers(0, len(text) - 1))
        if kind == "delete":
            text = text[:i] + text[i + 1 :]
        elif kind == "duplicate":
            text = text[:i] + text[i] + text[i:]
        elif kind == "swap":
            j = draw(st.integers(0, len(text) - 1))
            chars = list(text)
            chars[i], chars[j] = chars[j], chars[i]
            text = "".join(chars)
        else:
            char = draw(st.sampled_from(list("|^~\\&\r\nX0.é\x00")))
            text = text[:i] + char + text[i:]
    return text


@FUZZ
@given(mutated_fixture())
def test_fuzz_mutations_of_the_fixture(text: str) -> None:
    _parse_or_hl7_error(text)


def test_fixture_round_trips_after_python_hl7_reserialisation() -> None:
    import hl7  # type: ignore[import-untyped]

    again = str(hl7.parse(FIXTURE))
    assert parse_oru(again) == parse_oru(FIXTURE)
