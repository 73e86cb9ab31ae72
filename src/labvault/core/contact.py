"""Email addresses and phone numbers: validated and put in canonical form.

The reference implementations are ``email-validator`` and ``phonenumbers``; both cost tens
of microseconds a call, too slow for importing millions of rows. Each function therefore
has a fast path for the common shape (a plain ASCII address; a French national number)
that is checked, by property tests, to accept and produce exactly what the library would.
Anything else goes to the library.
"""

from __future__ import annotations

import re
import unicodedata

import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

# RFC 5322 dot-atom local part, LDH domain labels, alphabetic TLD: a strict subset of what
# email-validator accepts (tests/unit/core/test_contact.py proves it on random input).
_SIMPLE_EMAIL = re.compile(
    r"(?P<local>[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})"
)
_PHONE_SEPARATORS = re.compile(r"[\s.\-()/]+")
_FRENCH_NATIONAL = re.compile(r"0([1-9][0-9]{8})")  # "00..." is an international prefix
_FRENCH_INTERNATIONAL = re.compile(r"\+33([1-9][0-9]{8})")  # +33 is metropolitan France only
# Labels the library rewrites or refuses: IDNA ("xn--"), other "ab--" labels.
_HYPHENS_AT_3_4 = re.compile(r"(?:^|\.)[a-z0-9]{2}--")
_SPECIAL_USE = frozenset(SPECIAL_USE_DOMAIN_NAMES)


def _french_number_pattern() -> re.Pattern[str]:
    """The union of the FR numbering plan's number types, as ``is_valid_number`` uses it."""
    metadata = phonenumbers.PhoneMetadata.metadata_for_region("FR")
    assert metadata is not None
    descriptions = (
        metadata.fixed_line, metadata.mobile, metadata.toll_free, metadata.premium_rate,
        metadata.shared_cost, metadata.personal_number, metadata.voip, metadata.pager,
        metadata.uan, metadata.voicemail,
    )  # fmt: skip
    patterns = [d.national_number_pattern for d in descriptions if d and d.national_number_pattern]
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.ASCII)


_FRENCH_VALID = _french_number_pattern()


def _is_special_use(domain: str) -> bool:
    labels = domain.split(".")
    return any(".".join(labels[i:]) in _SPECIAL_USE for i in range(len(labels)))


def parse_email(value: str) -> str:
    """The address with its domain lower-cased (as email-validator normalises it)."""
    value = value.strip()
    if len(value) <= 254:
        match = _SIMPLE_EMAIL.fullmatch(value)
        if match and len(match["local"]) <= 64:
            domain = match["domain"].lower()
            if not _HYPHENS_AT_3_4.search(domain) and not _is_special_use(domain):
                return f"{match['local']}@{domain}"
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError:
        raise ValueError("is not a valid email address") from None


def parse_phone(value: str, default_region: str = "FR") -> str:
    """E.164 form of a phone number; national numbers are read as French by default."""
    value = unicodedata.normalize("NFKC", value).strip()
    compact = _PHONE_SEPARATORS.sub("", value)
    match = _FRENCH_INTERNATIONAL.fullmatch(compact)
    if match is None and default_region == "FR":
        match = _FRENCH_NATIONAL.fullmatch(compact)
    if match:
        if not _FRENCH_VALID.fullmatch(match[1]):
            raise ValueError("is not a valid phone number (French, or international with +)")
        return f"+33{match[1]}"
    try:
        parsed = phonenumbers.parse(value, default_region)
    except phonenumbers.NumberParseException:
        raise ValueError("is not a phone number") from None
    if not phonenumbers.is_valid_number(parsed):
        raise ValueError("is not a valid phone number (French, or international with +)")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
