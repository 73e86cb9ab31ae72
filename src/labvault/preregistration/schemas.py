"""What a patient declares before a visit, checked field by field with French reasons.

The API and the page share :func:`parse_declaration`: raw text in, a
:class:`Declaration` or a ``{field: French reason}`` map out, never both, and no reason
quotes the value it refuses (I5). The sealed format (``Preregistration.details``) is
:meth:`Declaration.to_sealed` / :meth:`Declaration.from_sealed`, versioned.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from labvault.patients.ins import Sex
from labvault.patients.nir import Nir, NirError, NirProblem

__all__ = [
    "FIELD_LABELS",
    "MAX_INSURANCE_NAME",
    "MAX_MEMBER_NUMBER",
    "Declaration",
    "DeclarationBody",
    "DeclarationView",
    "parse_declaration",
]

SEALED_VERSION: Final = 1
MAX_NAME: Final = 100
MAX_FIRST_NAMES: Final = 200
MAX_INSURANCE_NAME: Final = 100
MAX_MEMBER_NUMBER: Final = 32
EARLIEST_BIRTH_DATE: Final = dt.date(1900, 1, 1)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_LETTER = re.compile(r"[^\W\d_]")
_DIGIT = re.compile(r"\d")
_BIRTH_PLACE = re.compile(r"(?:[0-9]{5}|2[AB][0-9]{3})")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MEMBER_NUMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ./-]*")

FIELD_LABELS: Final = {
    "birth_name": "Nom de naissance",
    "used_name": "Nom d'usage",
    "first_names": "Prénoms",
    "birth_date": "Date de naissance",
    "sex": "Sexe",
    "birth_place_code": "Code du lieu de naissance",
    "nir": "Numéro de sécurité sociale (NIR)",
    "insurance_name": "Mutuelle (organisme complémentaire)",
    "insurance_member_number": "Numéro d'adhérent",
    "third_party_payment": "Tiers payant",
}

NIR_REASONS: Final[dict[NirProblem, str]] = {
    NirProblem.EMPTY: "Indiquez votre numéro de sécurité sociale.",
    NirProblem.BAD_CHARACTER: (
        "Le numéro ne doit contenir que des chiffres (2A ou 2B pour la Corse, en 6e et 7e "
        "positions) ; les espaces sont acceptés."
    ),
    NirProblem.TOO_SHORT: "Le numéro est trop court : il compte 15 chiffres, clé comprise.",
    NirProblem.MISSING_KEY: (
        "Il manque la clé : ajoutez les 2 derniers chiffres (15 chiffres en tout)."
    ),
    NirProblem.TOO_LONG: "Le numéro est trop long : il compte 15 chiffres, clé comprise.",
    NirProblem.LETTERS_IN_KEY: "La clé (les 2 derniers caractères) doit être composée de chiffres.",
    NirProblem.BAD_KEY: (
        "La clé (les 2 derniers chiffres) ne correspond pas au reste du numéro : vérifiez "
        "qu'il n'y a pas d'erreur de frappe."
    ),
    NirProblem.BAD_SEX: (
        "Le premier chiffre doit être 1 ou 2 (les numéros provisoires ne sont pas acceptés)."
    ),
    NirProblem.BAD_MONTH: "Le mois de naissance (4e et 5e chiffres) n'est pas valide.",
    NirProblem.BAD_DEPARTMENT: (
        "Le département de naissance (6e et 7e caractères) n'est pas valide."
    ),
    NirProblem.BAD_COMMUNE: "Le code de la commune de naissance ne peut pas être 000.",
    NirProblem.BAD_ORDER: "Le numéro d'ordre (11e à 13e chiffres) ne peut pas être 000.",
}


def _as_text(value: Any) -> Any:
    """A number where text is expected (``"birth_date": 0``) is checked as the text it
    spells, so it gets the field's French reason rather than a type error."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


Typed = Annotated[str, BeforeValidator(_as_text)]


class DeclarationBody(BaseModel):
    """The pre-registration as sent to the API (text as typed; checked by the service)."""

    model_config = ConfigDict(extra="forbid")

    birth_name: Annotated[Typed, Field(max_length=300)]
    used_name: Annotated[Typed | None, Field(max_length=300)] = None
    first_names: Annotated[Typed, Field(max_length=300)]
    birth_date: Annotated[Typed, Field(max_length=32, description="YYYY-MM-DD")]
    sex: Annotated[Typed, Field(max_length=8, description='"F" or "M"')]
    birth_place_code: Annotated[
        Typed | None,
        Field(max_length=16, description="INSEE code, 5 characters (2A/2B for Corsica)"),
    ] = None
    nir: Annotated[
        Typed | None,
        Field(max_length=64, description="Required when third_party_payment is true."),
    ] = None
    insurance_name: Annotated[Typed | None, Field(max_length=300)] = None
    insurance_member_number: Annotated[Typed | None, Field(max_length=100)] = None
    third_party_payment: bool = False

    def __repr__(self) -> str:
        return "DeclarationBody(**********)"

    __str__ = __repr__


class DeclarationView(BaseModel):
    """A pre-registration as the API answers it (the NIR masked)."""

    appointment_id: str
    patient_id: str
    birth_name: str
    used_name: str | None
    first_names: str
    birth_date: dt.date
    sex: str
    birth_place_code: str | None
    nir: str | None = Field(description='Masked: "2 84 05 ** *** *** 42".')
    insurance_name: str | None
    insurance_member_number: str | None
    third_party_payment: bool
    differs_from_record: list[str] = Field(
        description="Traits declared differently from the patient's record: kept as "
        "declared for the desk to check, the record is not changed."
    )
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True, repr=False)
class Declaration:
    """A checked pre-registration. Its repr shows nothing personal."""

    birth_name: str
    first_names: str
    birth_date: dt.date
    sex: Sex
    used_name: str | None = None
    birth_place_code: str | None = None
    nir: Nir | None = None
    insurance_name: str | None = None
    insurance_member_number: str | None = None
    third_party_payment: bool = False
    differs_from_record: tuple[str, ...] = field(default=())

    def __repr__(self) -> str:
        return "Declaration(**********)"

    def to_sealed(self) -> bytes:
        return json.dumps(
            {
                "v": SEALED_VERSION,
                "birth_name": self.birth_name,
                "used_name": self.used_name,
                "first_names": self.first_names,
                "birth_date": self.birth_date.isoformat(),
                "sex": self.sex.value,
                "birth_place_code": self.birth_place_code,
                "nir": self.nir.compact if self.nir else None,
                "insurance": (
                    {"name": self.insurance_name, "member_number": self.insurance_member_number}
                    if self.insurance_name or self.insurance_member_number
                    else None
                ),
                "third_party_payment": self.third_party_payment,
                "differs_from_record": list(self.differs_from_record),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_sealed(cls, blob: bytes) -> Declaration:
        data = json.loads(blob)
        if data.get("v") != SEALED_VERSION:
            raise ValueError("unknown pre-registration format")
        insurance = data.get("insurance") or {}
        return cls(
            birth_name=data["birth_name"],
            used_name=data.get("used_name"),
            first_names=data["first_names"],
            birth_date=dt.date.fromisoformat(data["birth_date"]),
            sex=Sex(data["sex"]),
            birth_place_code=data.get("birth_place_code"),
            nir=Nir.parse(data["nir"]) if data.get("nir") else None,
            insurance_name=insurance.get("name"),
            insurance_member_number=insurance.get("member_number"),
            third_party_payment=bool(data.get("third_party_payment")),
            differs_from_record=tuple(data.get("differs_from_record") or ()),
        )

    def form_values(self) -> dict[str, str]:
        """The declaration as a form shows it (the NIR in full: it is the patient's own)."""
        return {
            "birth_name": self.birth_name,
            "used_name": self.used_name or "",
            "first_names": self.first_names,
            "birth_date": self.birth_date.isoformat(),
            "sex": self.sex.value,
            "birth_place_code": self.birth_place_code or "",
            "nir": self.nir.formatted() if self.nir else "",
            "insurance_name": self.insurance_name or "",
            "insurance_member_number": self.insurance_member_number or "",
            "third_party_payment": "oui" if self.third_party_payment else "",
        }


def _text(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        value = str(value)
    return unicodedata.normalize("NFC", value).strip()


def _bad_characters(value: str) -> bool:
    return _CONTROL.search(value) is not None


def _name(value: str, *, maximum: int, required: bool, errors: dict[str, str], key: str) -> str:
    if not value:
        if required:
            errors[key] = "Ce champ est obligatoire."
        return ""
    if _bad_characters(value):
        errors[key] = "Ce champ contient des caractères non autorisés (caractères de contrôle)."
    elif len(value) > maximum:
        errors[key] = f"Ce champ est trop long ({maximum} caractères au plus)."
    elif not _LETTER.search(value):
        errors[key] = "Ce champ doit contenir des lettres."
    elif _DIGIT.search(value):
        errors[key] = "Ce champ ne doit pas contenir de chiffres."
    return " ".join(value.split())


def _birth_date(value: str, errors: dict[str, str], today: dt.date) -> dt.date | None:
    if not value:
        errors["birth_date"] = "Indiquez la date de naissance."
        return None
    born: dt.date | None = None
    if _ISO_DATE.fullmatch(value):
        try:
            born = dt.date.fromisoformat(value)
        except ValueError:
            born = None
    if born is None:
        errors["birth_date"] = (
            "La date de naissance doit être une vraie date, au format AAAA-MM-JJ."
        )
    elif born > today:
        errors["birth_date"] = "La date de naissance ne peut pas être dans le futur."
    elif born < EARLIEST_BIRTH_DATE:
        errors["birth_date"] = "La date de naissance ne peut pas être avant 1900."
    return born if "birth_date" not in errors else None


def parse_declaration(
    raw: Mapping[str, Any], *, today: dt.date, nir_known: bool = False
) -> tuple[Declaration | None, dict[str, str]]:
    """Check a pre-registration as typed: ``(declaration, {})`` or ``(None, errors)``.

    Rules: names with letters and no digits, bounded; a real birth date (``YYYY-MM-DD``,
    not in the future, not before 1900; "0" is refused); sex F or M; an INSEE birth place of
    5 characters (2A/2B for Corsica); a valid NIR agreeing with the declared sex, birth year
    and month, required when third-party payment is asked (unless ``nir_known``: the lab
    already has it); insurance fields bounded and without control characters, both or
    neither.
    """
    errors: dict[str, str] = {}
    birth_name = _name(
        _text(raw.get("birth_name")),
        maximum=MAX_NAME,
        required=True,
        errors=errors,
        key="birth_name",
    )
    used_name = _name(
        _text(raw.get("used_name")),
        maximum=MAX_NAME,
        required=False,
        errors=errors,
        key="used_name",
    )
    first_names = _name(
        _text(raw.get("first_names")),
        maximum=MAX_FIRST_NAMES,
        required=True,
        errors=errors,
        key="first_names",
    )
    born = _birth_date(_text(raw.get("birth_date")), errors, today)
    sex: Sex | None = None
    sex_text = _text(raw.get("sex")).upper()
    try:
        sex = Sex(sex_text)
    except ValueError:
        errors["sex"] = "Choisissez le sexe indiqué sur la carte Vitale : F ou M."
    place = _text(raw.get("birth_place_code")).upper()
    if place and not _BIRTH_PLACE.fullmatch(place):
        errors["birth_place_code"] = (
            "Le code du lieu de naissance compte 5 caractères : le code INSEE de la commune "
            "(2A ou 2B pour la Corse), ou 99 suivi du code du pays pour une naissance à "
            "l'étranger."
        )
    third_party = _yes(raw.get("third_party_payment"))
    nir: Nir | None = None
    nir_text = _text(raw.get("nir"))
    if nir_text:
        if _bad_characters(nir_text) or len(nir_text) > 64:
            errors["nir"] = NIR_REASONS[NirProblem.BAD_CHARACTER]
        else:
            try:
                nir = Nir.parse(nir_text)
            except NirError as exc:
                errors["nir"] = NIR_REASONS.get(exc.problem, "Ce numéro n'est pas valide.")
    elif third_party and not nir_known:
        errors["nir"] = (
            "Le tiers payant demande votre numéro de sécurité sociale : indiquez-le, ou "
            "décochez le tiers payant."
        )
    if nir is not None and sex is not None and born is not None:
        mismatch = _nir_disagrees(nir, sex, born)
        if mismatch:
            errors["nir"] = mismatch
    insurance_name = _text(raw.get("insurance_name"))
    member = _text(raw.get("insurance_member_number"))
    if insurance_name:
        if _bad_characters(insurance_name):
            errors["insurance_name"] = "Ce champ contient des caractères non autorisés."
        elif len(insurance_name) > MAX_INSURANCE_NAME:
            errors["insurance_name"] = (
                f"Ce champ est trop long ({MAX_INSURANCE_NAME} caractères au plus)."
            )
        elif not member:
            errors["insurance_member_number"] = "Indiquez aussi votre numéro d'adhérent."
    if member:
        if len(member) > MAX_MEMBER_NUMBER:
            errors["insurance_member_number"] = (
                f"Le numéro d'adhérent est trop long ({MAX_MEMBER_NUMBER} caractères au plus)."
            )
        elif _bad_characters(member) or not _MEMBER_NUMBER.fullmatch(member):
            errors["insurance_member_number"] = (
                "Le numéro d'adhérent ne contient que des lettres, des chiffres, des espaces, "
                "des points, des barres obliques ou des tirets."
            )
        elif not insurance_name:
            errors["insurance_name"] = "Indiquez aussi le nom de votre mutuelle."
    if errors or sex is None or born is None:
        return None, errors
    return (
        Declaration(
            birth_name=birth_name,
            used_name=used_name or None,
            first_names=first_names,
            birth_date=born,
            sex=sex,
            birth_place_code=place or None,
            nir=nir,
            insurance_name=" ".join(insurance_name.split()) or None,
            insurance_member_number=" ".join(member.split()) or None,
            third_party_payment=third_party,
        ),
        {},
    )


def _yes(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return _text(value).lower() in {"oui", "on", "true", "1", "yes"}


def _nir_disagrees(nir: Nir, sex: Sex, born: dt.date) -> str | None:
    """The NIR encodes sex, birth year and month: they must agree with what is declared."""
    expected = {"1": Sex.MALE, "2": Sex.FEMALE}.get(nir.sex_digit)
    if expected is not None and expected != sex:
        return "Le premier chiffre du numéro (1 homme, 2 femme) ne correspond pas au sexe indiqué."
    if nir.birth_year != f"{born.year % 100:02d}":
        return (
            "L'année de naissance du numéro (2e et 3e chiffres) ne correspond pas à la date "
            "de naissance indiquée."
        )
    month = int(nir.birth_month)
    if 1 <= month <= 12 and month != born.month:
        return (
            "Le mois de naissance du numéro (4e et 5e chiffres) ne correspond pas à la date "
            "de naissance indiquée."
        )
    return None
