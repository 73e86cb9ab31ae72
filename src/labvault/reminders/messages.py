"""The texts of an appointment reminder, by email and by SMS, in French.

What a reminder may say is fixed here, and only here (invariant I5): the day and time in
Paris, the site's name and address (the lab's, not personal data) or "à votre domicile"
and the visit's window, where the preparation instructions are (in the account, never in
the message), a link to the account and the recipient's security phrase. Never a name, a
NIR, a birth date, an exam, a home address or anything medical: the texts are built from a
:class:`ReminderContent` that cannot carry them.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass

__all__ = [
    "ACCOUNT_APPOINTMENTS_PATH",
    "EMAIL_CATEGORY",
    "INSTRUCTIONS",
    "SMS_CATEGORY",
    "ReminderContent",
    "email_subject",
    "email_text",
    "french_date",
    "french_time",
    "sms_text",
]

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
ACCOUNT_APPOINTMENTS_PATH = "/compte/rendez-vous"
EMAIL_CATEGORY = "appointment:reminder"
SMS_CATEGORY = "appointment:reminder"
INSTRUCTIONS = "Vos instructions de préparation sont dans votre compte"
_WEEKDAYS = ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche")
_MONTHS = (
    "janvier",
    "février",
    "mars",
    "avril",
    "mai",
    "juin",
    "juillet",
    "août",
    "septembre",
    "octobre",
    "novembre",
    "décembre",
)


@dataclass(frozen=True, slots=True)
class ReminderContent:
    """Everything a reminder says. ``phrase`` is the recipient's own security phrase, or
    ``None`` when the message does not go to an account holder who chose one."""

    starts_at: dt.datetime
    ends_at: dt.datetime | None
    home: bool
    site_name: str
    site_address: str
    link: str
    phrase: str | None

    def __repr__(self) -> str:
        return f"ReminderContent(starts_at={self.starts_at.isoformat()}, home={self.home})"


def french_date(moment: dt.datetime) -> str:
    """ "mardi 1er décembre 2026", the Paris day of ``moment``."""
    local = moment.astimezone(PARIS)
    day = "1er" if local.day == 1 else str(local.day)
    return f"{_WEEKDAYS[local.weekday()]} {day} {_MONTHS[local.month - 1]} {local.year}"


def french_time(moment: dt.datetime) -> str:
    """ "8 h 05", Paris time."""
    local = moment.astimezone(PARIS)
    return f"{local.hour} h {local.minute:02d}"


def _when(content: ReminderContent) -> str:
    if content.home:
        end = content.ends_at
        window = (
            f"entre {french_time(content.starts_at)} et {french_time(end)}"
            if end is not None
            else f"à partir de {french_time(content.starts_at)}"
        )
        return f"le {french_date(content.starts_at)}, {window} (heure de Paris)"
    return (
        f"le {french_date(content.starts_at)} à {french_time(content.starts_at)} (heure de Paris)"
    )


def _where(content: ReminderContent) -> str:
    if content.home:
        return "à votre domicile"
    return f"au laboratoire {content.site_name}, {content.site_address}"


def email_subject(content: ReminderContent) -> str:
    local = content.starts_at.astimezone(PARIS)
    day = "1er" if local.day == 1 else str(local.day)
    return f"Rappel : votre rendez-vous du {day} {_MONTHS[local.month - 1]} {local.year}"


def email_text(content: ReminderContent) -> str:
    """The body: "Bonjour," and no name; the phrase last, as in every genuine message."""
    what = "Un préleveur du laboratoire viendra" if content.home else "Vous avez rendez-vous"
    lines = [
        "Bonjour,",
        "",
        f"{what} {_when(content)} {_where(content)}.",
        "",
        f"{INSTRUCTIONS} :",
        content.link,
        "",
        "Vous pouvez aussi y déplacer ou annuler ce rendez-vous.",
    ]
    if content.phrase:
        lines += [
            "",
            f"Votre phrase de sécurité : « {content.phrase} ». Un message sans elle ne vient "
            "pas de votre laboratoire.",
        ]
    else:
        lines += [
            "",
            "Votre laboratoire ne vous demandera jamais votre mot de passe ni un code par "
            "téléphone, SMS ou e-mail.",
        ]
    return "\n".join(lines) + "\n"


def sms_text(content: ReminderContent) -> str:
    """The same facts, shorter; the phrase only when given (see ``services``)."""
    where = "à domicile" if content.home else f"{content.site_name}, {content.site_address}"
    text = (
        f"Rappel : rendez-vous laboratoire {_when(content)}, {where}. "
        f"{INSTRUCTIONS} : {content.link}"
    )
    if content.phrase:
        text += f" Phrase de sécurité : « {content.phrase} »."
    return text
