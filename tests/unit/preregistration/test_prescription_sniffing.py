"""The sniffer decides from the bytes only: real PDFs, JPEGs and PNGs pass; everything else,
including files that merely start like one, is refused with a French reason and the one
error type, whatever the bytes (fuzzed)."""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from prescription_pdfs import build_pdf
from pypdf import PdfWriter

from labvault.preregistration.sniffing import (
    DocumentRejectedError,
    MediaType,
    RejectionReason,
    sniff,
)


def library_pdf() -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(595, 842)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def image(fmt: str, size: tuple[int, int] = (32, 24)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (250, 250, 245)).save(out, fmt)
    return out.getvalue()


def reason_of(content: bytes) -> RejectionReason:
    with pytest.raises(DocumentRejectedError) as refused:
        sniff(content)
    assert str(refused.value)  # a French sentence for the patient
    return refused.value.reason


def test_real_documents_are_typed_from_their_content() -> None:
    assert sniff(library_pdf()) is MediaType.PDF
    assert sniff(build_pdf()) is MediaType.PDF
    assert sniff(image("JPEG")) is MediaType.JPEG
    assert sniff(image("PNG")) is MediaType.PNG


HOSTILE = {
    "empty": (b"", RejectionReason.EMPTY),
    "html renamed .pdf": (
        b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>",
        RejectionReason.MARKUP,
    ),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', RejectionReason.MARKUP),
    "pdf magic then garbage": (
        b"%PDF-1.7\n" + bytes(range(256)) * 4 + b"\n%%EOF\n",
        RejectionReason.DAMAGED,
    ),
    "pdf magic only": (b"%PDF-", RejectionReason.TRAILING_DATA),
    "truncated pdf": (build_pdf()[:-40], RejectionReason.TRAILING_DATA),
    "pdf with javascript open action": (
        build_pdf(b"/OpenAction << /S /JavaScript /JS (app.alert(1)) >> "),
        RejectionReason.ACTIVE_CONTENT,
    ),
    "pdf with a #-escaped javascript name": (
        build_pdf(b"/OpenAction << /S /#4Aava#53cript /#4AS (app.alert(1)) >> "),
        RejectionReason.ACTIVE_CONTENT,
    ),
    "pdf with a launch action on its page": (
        build_pdf(page_extra=b"/AA << /O << /S /Launch /F (cmd.exe) >> >> "),
        RejectionReason.ACTIVE_CONTENT,
    ),
    "pdf with embedded files": (
        build_pdf(b"/Names << /EmbeddedFiles << /Names [] >> >> "),
        RejectionReason.ACTIVE_CONTENT,
    ),
    "png followed by a pdf (polyglot)": (image("PNG") + build_pdf(), RejectionReason.TRAILING_DATA),
    "jpeg followed by a zip": (
        image("JPEG") + b"PK\x03\x04" + bytes(64),
        RejectionReason.TRAILING_DATA,
    ),
    "png with a bad checksum": (
        image("PNG")[:40] + bytes([image("PNG")[40] ^ 0xFF]) + image("PNG")[41:],
        RejectionReason.DAMAGED,
    ),
    "truncated jpeg with its end marker": (
        image("JPEG")[:120] + b"\xff\xd9",
        RejectionReason.DAMAGED,
    ),
    "gif": (b"GIF89a" + bytes(32), RejectionReason.UNSUPPORTED),
    "plain text": (b"Ordonnance: amoxicilline", RejectionReason.UNSUPPORTED),
    "pdf signature not at the start": (b" " + build_pdf(), RejectionReason.UNSUPPORTED),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_files_are_refused_with_their_reason(name: str) -> None:
    content, reason = HOSTILE[name]
    assert reason_of(content) is reason


def test_a_pdf_allowed_to_open_on_its_first_page_is_accepted() -> None:
    """An open action that is only a destination (a zoom) is not active content."""
    assert sniff(build_pdf(b"/OpenAction [3 0 R /Fit] ")) is MediaType.PDF


def test_an_oversized_image_is_refused_before_it_is_decoded() -> None:
    # A PNG header declaring 20000 x 20000 pixels: refused from the header alone.
    big = image("PNG", (20000, 1))
    header = bytearray(big)
    header[16:24] = (20000).to_bytes(4, "big") + (20000).to_bytes(4, "big")
    assert reason_of(bytes(header)) in {RejectionReason.TOO_COMPLEX, RejectionReason.DAMAGED}


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=4096))
def test_any_bytes_are_typed_or_refused_with_the_one_error(content: bytes) -> None:
    with contextlib.suppress(DocumentRejectedError):
        assert sniff(content) in set(MediaType)


@FUZZ
@given(st.binary(max_size=4096), st.booleans())
def test_random_bytes_after_a_pdf_signature_are_refused(tail: bytes, with_eof: bool) -> None:
    content = b"%PDF-1.7\n" + tail + (b"\n%%EOF\n" if with_eof else b"")
    with pytest.raises(DocumentRejectedError):
        sniff(content)


@FUZZ
@given(st.integers(min_value=0, max_value=4000), st.binary(min_size=1, max_size=16))
def test_a_real_pdf_with_bytes_overwritten_is_typed_or_refused(at: int, junk: bytes) -> None:
    """Mutations of a valid file reach deeper into the parser than random bytes do."""
    original = build_pdf()
    at = at % len(original)
    mutated = original[:at] + junk + original[at + len(junk) :]
    with contextlib.suppress(DocumentRejectedError):
        assert sniff(mutated) is MediaType.PDF


@FUZZ
@given(
    st.sampled_from(["PNG", "JPEG"]),
    st.integers(min_value=0, max_value=2000),
    st.binary(min_size=1, max_size=8),
)
def test_a_real_image_with_bytes_overwritten_is_typed_or_refused(
    fmt: str, at: int, junk: bytes
) -> None:
    original = image(fmt)
    at = at % len(original)
    mutated = original[:at] + junk + original[at + len(junk) :]
    with contextlib.suppress(DocumentRejectedError):
        sniff(mutated)


def test_a_password_protected_pdf_is_refused() -> None:
    writer = PdfWriter()
    writer.add_blank_page(595, 842)
    writer.encrypt("secret-du-patient")
    out = io.BytesIO()
    writer.write(out)
    assert reason_of(out.getvalue()) is RejectionReason.ENCRYPTED
