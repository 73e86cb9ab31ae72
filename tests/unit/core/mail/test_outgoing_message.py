"""OutgoingMessage: the headers and body every mailer sends, and what it refuses."""

from __future__ import annotations

import dataclasses
import email.policy
import re
import traceback
from datetime import datetime
from email.message import EmailMessage
from email.parser import BytesParser
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labvault.core.mail.message import MAX_SUBJECT_LENGTH, OutgoingMessage, parse_sender

SENDER = "labvault <no-reply@labvault.localhost>"
TO = "camille.martin@example.org"
HEADERS = ["From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted"]


def outgoing(**changes: object) -> OutgoingMessage:
    values: dict[str, object] = {
        "to": TO,
        "subject": "Votre code de connexion",
        "text": "Bonjour,\n\nVotre code : 482913.\n",
        "category": "account:email-code",
    }
    values.update(changes)
    return OutgoingMessage(**values)  # type: ignore[arg-type]


def reparse(message: EmailMessage) -> EmailMessage:
    """What a receiving server reads."""
    parsed = BytesParser(policy=email.policy.default).parsebytes(message.as_bytes())
    assert isinstance(parsed, EmailMessage)
    return parsed


def error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc)


def test_headers_of_a_plain_text_message() -> None:
    paris = datetime(2024, 7, 14, 10, 30, 15, 123456, tzinfo=ZoneInfo("Europe/Paris"))
    built = outgoing().to_email_message(SENDER, now=paris)

    assert list(built.keys()) == [
        *HEADERS,
        "Content-Type",
        "Content-Transfer-Encoding",
        "MIME-Version",
    ]
    assert built["From"] == SENDER
    assert built["To"] == TO
    assert built["Subject"] == "Votre code de connexion"
    assert built["Date"] == "Sun, 14 Jul 2024 08:30:15 +0000"  # UTC, whole seconds
    assert re.fullmatch(r"<[0-9a-f]{32}@labvault\.localhost>", built["Message-ID"])
    assert built["Auto-Submitted"] == "auto-generated"
    assert built.get_content_type() == "text/plain"
    assert built.get_content_charset() == "utf-8"
    assert built.get_content() == "Bonjour,\n\nVotre code : 482913.\n"


def test_html_is_an_alternative_after_the_text() -> None:
    built = outgoing(html="<p>Votre code : <b>482913</b></p>").to_email_message(SENDER)

    assert built.get_content_type() == "multipart/alternative"
    parts = list(built.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert all(part.get_content_charset() == "utf-8" for part in parts)
    assert parts[1].get_content() == "<p>Votre code : <b>482913</b></p>\n"
    assert built.as_bytes().count(b"MIME-Version:") == 1


def test_french_text_travels_as_7bit_utf8_and_reads_back() -> None:
    message = outgoing(
        subject="Un document est disponible à l'accueil — connectez-vous",
        text="Bonjour,\nUn nouveau document est disponible. À bientôt.\n",
        html="<p>Été</p>",
    )
    raw = message.to_email_message("Laboratoire Biomédical <no-reply@labo.example.fr>").as_bytes()

    assert raw.isascii()  # no 8BITMIME needed
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF line ends only
    parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert parsed["Subject"] == message.subject
    assert parsed["From"] == "Laboratoire Biomédical <no-reply@labo.example.fr>"
    assert isinstance(parsed, EmailMessage)
    body = parsed.get_body(("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == message.text


def test_spaces_between_encoded_words_survive_folding() -> None:
    # Python 3.11's header folder turned "le à résultats" into "le àrésultats" here.
    subject = (
        "» médicales est à confirmé votre le à résultats à ? prélèvement » ! : médicales "
        "ordonnance ? résultats connexion Saint-Étienne espace !"
    )
    raw = outgoing(subject=subject).to_email_message(SENDER).as_bytes()
    assert all(len(line) <= 78 for line in raw.split(b"\r\n\r\n")[0].split(b"\r\n"))
    assert BytesParser(policy=email.policy.default).parsebytes(raw)["Subject"] == subject


def test_message_ids_are_random_and_on_the_senders_domain() -> None:
    ids = {outgoing().to_email_message(SENDER)["Message-ID"] for _ in range(50)}
    assert len(ids) == 50
    assert all(i.endswith("@labvault.localhost>") for i in ids)


def test_recipient_is_kept_in_ascii_form() -> None:
    assert outgoing(to="Camille@Exämple.FR").to == "Camille@xn--exmple-cua.fr"
    assert outgoing(to="Camille@EXAMPLE.org").to == "Camille@example.org"


def test_the_message_is_frozen() -> None:
    message = outgoing()
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.to = "someone.else@example.org"  # type: ignore[misc]


@pytest.mark.parametrize(
    "subject",
    [
        "Code\r\nBcc: attacker@example.net",
        "Code\nBcc: attacker@example.net",
        "Code\rBcc: attacker@example.net",
        "Code\x00",
        "Code\tsuite",
        "Code\u2028Bcc: attacker@example.net",
        "Code\x85Bcc: attacker@example.net",
        "=?utf-8?q?Code=0D=0ABcc:_attacker@example.net?=",
        "=?utf-8?b?Q29kZQ0KQmNjOiBhdHRhY2tlckBleGFtcGxlLm5ldA==?=",
    ],
)
def test_header_injection_in_the_subject_is_refused(subject: str) -> None:
    with pytest.raises(ValueError, match="subject") as caught:
        outgoing(subject=subject)
    assert "attacker" not in error_text(caught.value)


@pytest.mark.parametrize(
    "to",
    [
        f"{TO}\r\nBcc: attacker@example.net",
        f"{TO}\nBcc: attacker@example.net",
        f"{TO}, attacker@example.net",
        f"Camille <{TO}>",
        # valid characters of a local part, decoded by the e-mail package into a line break
        "=?utf-8?q?x=0D=0ABcc=3A_attacker=40example.net?=@example.org",
    ],
)
def test_header_injection_in_the_recipient_is_refused(to: str) -> None:
    with pytest.raises(ValueError, match="recipient") as caught:
        outgoing(to=to)
    assert "attacker" not in error_text(caught.value)


@pytest.mark.parametrize(
    "to",
    [
        "",
        "camille",
        "camille@",
        "@example.org",
        "camille@localhost",
        "camille@example",
        "é@example.fr",
    ],
)
def test_invalid_recipients_are_refused_without_being_quoted(to: str) -> None:
    with pytest.raises(ValueError, match="recipient") as caught:
        outgoing(to=to)
    if to:
        assert to not in str(caught.value)
    assert "camille" not in error_text(caught.value)


def test_subject_length_is_bounded() -> None:
    assert outgoing(subject="x" * MAX_SUBJECT_LENGTH).subject == "x" * MAX_SUBJECT_LENGTH
    with pytest.raises(ValueError, match=f"at most {MAX_SUBJECT_LENGTH}"):
        outgoing(subject="x" * (MAX_SUBJECT_LENGTH + 1))


@pytest.mark.parametrize("subject", ["", "   ", " Code", "Code "])
def test_blank_or_padded_subjects_are_refused(subject: str) -> None:
    with pytest.raises(ValueError, match="subject"):
        outgoing(subject=subject)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("text", ""),
        ("text", " \n"),
        ("text", "code\x00"),
        ("text", "code\x1b[31m"),
        ("text", "code \udce9"),
        ("html", ""),
        ("html", "<p>\x07</p>"),
        ("subject", "code \udce9"),
    ],
)
def test_bad_bodies_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        outgoing(**{field: value})


@pytest.mark.parametrize(
    "category",
    [
        "",
        "Account:email-code",
        "account:",
        ":code",
        "account email",
        "camille.martin@example.org",
        "a" * 65,
    ],
)
def test_category_is_a_short_token(category: str) -> None:
    with pytest.raises(ValueError, match="category") as caught:
        outgoing(category=category)
    assert "camille" not in str(caught.value)


@pytest.mark.parametrize("field", ["to", "subject", "text", "html", "category"])
def test_non_strings_are_refused(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        outgoing(**{field: b"bytes"})


@pytest.mark.parametrize(
    "sender",
    [
        "",
        "no-reply",
        "labvault <no-reply>",
        "labvault <no-reply@localhost>",
        "a@example.org, b@example.org",
        "labvault <no-reply@example.org>\r\nBcc: attacker@example.net",
        "=?utf-8?q?x=0D=0ABcc:_attacker@example.net?= <no-reply@example.org>",
        "labvault <é@example.org>",
    ],
)
def test_bad_senders_are_refused(sender: str) -> None:
    with pytest.raises(ValueError, match="LABVAULT_MAIL_FROM"):
        parse_sender(sender)
    with pytest.raises(ValueError, match="LABVAULT_MAIL_FROM"):
        outgoing().to_email_message(sender)


def test_sender_with_a_display_name() -> None:
    address = parse_sender("Laboratoire Biomédical <no-reply@labo.example.fr>")
    assert address.addr_spec == "no-reply@labo.example.fr"
    assert address.domain == "labo.example.fr"


# Header-shaped pieces, so that random subjects and recipients hit the dangerous cases often.
_PIECES = st.sampled_from(
    [
        *("\r", "\n", "\r\n", "\t", "\x00", "\u2028", " ", ",", ":", "@", "<", ">", '"', "é"),
        *("Bcc: x@example.net", "=?utf-8?q?", "=0D=0A", "?=", "example.org", "a" * 80),
    ]
)
_FUZZ_TEXT = st.lists(st.one_of(st.characters(), _PIECES), max_size=40).map("".join)


def _check_rendered(message: OutgoingMessage) -> None:
    parsed = reparse(message.to_email_message(SENDER))
    assert list(parsed.keys())[: len(HEADERS)] == HEADERS
    assert len(parsed.keys()) == len(HEADERS) + 3  # Content-Type, -Transfer-Encoding, MIME
    assert parsed["To"] == message.to
    assert parsed["Subject"] == message.subject


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(subject=_FUZZ_TEXT)
def test_any_subject_is_refused_with_value_error_or_sent_as_given(subject: str) -> None:
    try:
        message = outgoing(subject=subject)
    except ValueError:
        return
    _check_rendered(message)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(local=_FUZZ_TEXT, domain=st.sampled_from(["example.org", "Exämple.fr", "x", ""]))
def test_any_recipient_is_refused_with_value_error_or_sent_as_given(
    local: str, domain: str
) -> None:
    try:
        message = outgoing(to=f"{local}@{domain}")
    except ValueError:
        return
    _check_rendered(message)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(text=_FUZZ_TEXT, html=st.none() | _FUZZ_TEXT)
def test_any_body_is_refused_with_value_error_or_sent_as_given(text: str, html: str | None) -> None:
    try:
        message = outgoing(text=text, html=html)
    except ValueError:
        return
    raw = message.to_email_message(SENDER).as_bytes()
    assert raw.isascii()
    parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(parsed, EmailMessage)
    body = parsed.get_body(("plain",))
    assert body is not None
    # The body travels with CRLF line ends: a lone CR or LF reads back as a line end.
    assert body.get_content().encode().splitlines() == message.text.encode().splitlines()


@settings(max_examples=300)
@given(sender=_FUZZ_TEXT)
def test_any_sender_is_refused_with_value_error_or_used_as_given(sender: str) -> None:
    try:
        address = parse_sender(sender)
    except ValueError:
        return
    parsed = reparse(outgoing().to_email_message(sender))
    assert list(parsed.keys())[: len(HEADERS)] == HEADERS
    assert [a.addr_spec for a in parsed["From"].addresses] == [address.addr_spec]
