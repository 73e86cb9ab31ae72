"""What a lab submits for a catalog exam, validated before anything is written.

Errors are :class:`CatalogError`: a French message naming the field, for pages and API.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from labvault.catalog.models import MAX_FASTING_HOURS
from labvault.schedules.hours import parse_hhmm

CODE_PATTERN = re.compile(r"[A-Z0-9][A-Z0-9._-]{0,31}")
LOINC_PATTERN = re.compile(r"([0-9]{1,7})-([0-9])")
LABEL_MAX = 200
PREPARATION_MAX = 2000
MAX_SAMPLING_MINUTES = 240

FIELD_LABELS = {
    "code": "Code de l'examen",
    "loinc": "Code LOINC",
    "label": "Libellé",
    "sampling_minutes": "Durée de prélèvement (minutes)",
    "home_sampling": "Prélèvement à domicile possible",
    "fasting_hours": "Jeûne (heures)",
    "window_start": "Début de la plage horaire",
    "window_end": "Fin de la plage horaire",
    "no_appointment": "Sans rendez-vous",
    "preparation_text": "Consignes de préparation",
}


class CatalogError(ValueError):
    """Bad catalog input or a refused change; the message is French and safe to show."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def loinc_check_digit(number: str) -> int:
    """LOINC's mod-10 check digit of the part before the hyphen (Luhn, from the right)."""
    if not number.isascii() or not number.isdigit():
        raise ValueError("digits only")
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char)
        if position % 2 == 0:
            digit *= 2
            digit = digit // 10 + digit % 10
        total += digit
    return (10 - total % 10) % 10


def is_valid_loinc(code: str) -> bool:
    match = LOINC_PATTERN.fullmatch(code)
    return match is not None and loinc_check_digit(match.group(1)) == int(match.group(2))


def _no_control(value: str, *, newlines: bool) -> str:
    for char in value:
        if char in "\n\t" and newlines:
            continue
        if unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Cn"}:
            raise ValueError("caractère non autorisé")
    return value


def _integer(value: object, low: int, high: int) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,4}\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"un nombre entier entre {low} et {high} est attendu")
    if not low <= value <= high:
        raise ValueError(f"doit être entre {low} et {high}")
    return value


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("on", "true", "1", "oui"):
        return True
    if value in ("", "off", "false", "0", "non", None):
        return False
    raise ValueError("oui ou non attendu")


class ExamInput(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    label: str
    sampling_minutes: int
    loinc: str | None = None
    home_sampling: bool = False
    fasting_hours: int = 0
    window_start: dt.time | None = None
    window_end: dt.time | None = None
    no_appointment: bool = False
    preparation_text: str = ""

    @field_validator("code", mode="before")
    @classmethod
    def _code(cls, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError("texte attendu")
        code = value.strip().upper()
        if not CODE_PATTERN.fullmatch(code):
            raise ValueError(
                "1 à 32 caractères : lettres, chiffres, point, tiret ou souligné, sans espace"
            )
        return code

    @field_validator("loinc", mode="before")
    @classmethod
    def _loinc(cls, value: object) -> str | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            raise ValueError("texte attendu")
        code = value.strip()
        if not LOINC_PATTERN.fullmatch(code):
            raise ValueError("format attendu : chiffres, tiret, chiffre de contrôle (ex. 2345-7)")
        if not is_valid_loinc(code):
            raise ValueError("le chiffre de contrôle ne correspond pas (vérifiez la saisie)")
        return code

    @field_validator("label", mode="before")
    @classmethod
    def _label(cls, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError("texte attendu")
        label = " ".join(value.split())
        if not label:
            raise ValueError("obligatoire")
        if len(label) > LABEL_MAX:
            raise ValueError(f"au plus {LABEL_MAX} caractères")
        return _no_control(unicodedata.normalize("NFC", label), newlines=False)

    @field_validator("preparation_text", mode="before")
    @classmethod
    def _preparation(cls, value: object) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ValueError("texte attendu")
        text = unicodedata.normalize("NFC", value.replace("\r\n", "\n").strip())
        if len(text) > PREPARATION_MAX:
            raise ValueError(f"au plus {PREPARATION_MAX} caractères")
        return _no_control(text, newlines=True)

    @field_validator("sampling_minutes", mode="before")
    @classmethod
    def _minutes(cls, value: object) -> int:
        return _integer(value, 1, MAX_SAMPLING_MINUTES)

    @field_validator("fasting_hours", mode="before")
    @classmethod
    def _fasting(cls, value: object) -> int:
        return _integer(value, 0, MAX_FASTING_HOURS)

    @field_validator("home_sampling", "no_appointment", mode="before")
    @classmethod
    def _flags(cls, value: object) -> bool:
        return _boolean(value)

    @field_validator("window_start", "window_end", mode="before")
    @classmethod
    def _times(cls, value: object) -> dt.time | None:
        if value is None or value == "":
            return None
        if isinstance(value, dt.time):
            if value.tzinfo is not None or value.second or value.microsecond:
                raise ValueError("heure locale HH:MM attendue")
            return value
        return parse_hhmm(value.strip() if isinstance(value, str) else value)

    @model_validator(mode="after")
    def _window(self) -> Self:
        if (self.window_start is None) != (self.window_end is None):
            raise CatalogError(
                "Plage horaire : indiquez le début et la fin, ou aucun des deux.", "window_start"
            )
        if (
            self.window_start is not None
            and self.window_end is not None
            and self.window_start >= self.window_end
        ):
            raise CatalogError(
                "Plage horaire : la fin doit suivre le début (ex. 07:00 à 10:00).", "window_end"
            )
        return self

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> ExamInput:
        """Validate a submission; :class:`CatalogError` (French, first problem) otherwise."""
        if not isinstance(raw, dict):
            raise CatalogError("Examen invalide.")
        unknown = sorted(str(key) for key in raw if key not in FIELD_LABELS)
        if unknown:
            raise CatalogError(f"Champ inconnu : {unknown[0][:40]!r}.")
        try:
            return cls.model_validate(raw)
        except CatalogError:
            raise
        except ValidationError as exc:
            first = exc.errors()[0]
            error = first.get("ctx", {}).get("error")
            if isinstance(error, CatalogError):
                raise error from None
            field = str(first["loc"][0]) if first["loc"] else None
            label = FIELD_LABELS.get(field or "", "Examen")
            if first["type"] == "missing":
                detail = "obligatoire"
            elif isinstance(error, ValueError):
                detail = str(error)
            else:
                detail = "valeur invalide"
            raise CatalogError(f"{label} : {detail}.", field) from None
