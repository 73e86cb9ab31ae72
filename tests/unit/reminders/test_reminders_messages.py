"""What a reminder says, in French and in Paris time, and what it never says."""

from __future__ import annotations

import datetime as dt

import pytest

from labvault.reminders.messages import (
    INSTRUCTIONS,
    ReminderContent,
    email_subject,
    email_text,
    french_date,
    french_time,
    sms_text,
)
from labvault.reminders.services import default_day, paris_day_bounds
from labvault.reminders.sms import MAX_SMS_LENGTH, OutgoingSms

LINK = "https://labo.example.fr/compte/rendez-vous"


def _content(**changes: object) -> ReminderContent:
    values: dict[str, object] = {
        # 1 December 2026, 08:30 in Paris (UTC+1 in winter).
        "starts_at": dt.datetime(2026, 12, 1, 7, 30, tzinfo=dt.UTC),
        "ends_at": dt.datetime(2026, 12, 1, 7, 40, tzinfo=dt.UTC),
        "home": False,
        "site_name": "Labo Centre",
        "site_address": "3 place Bellecour, 69002 Lyon",
        "link": LINK,
        "phrase": "tournesol du matin",
    }
    values.update(changes)
    return ReminderContent(**values)  # type: ignore[arg-type]


def test_a_site_reminder_gives_day_time_site_link_and_phrase() -> None:
    content = _content()
    text = email_text(content)
    assert text.startswith("Bonjour,\n")
    assert "le mardi 1er décembre 2026 à 8 h 30 (heure de Paris)" in text
    assert "au laboratoire Labo Centre, 3 place Bellecour, 69002 Lyon" in text
    assert f"{INSTRUCTIONS} :\n{LINK}\n" in text
    assert "Votre phrase de sécurité : « tournesol du matin »" in text
    assert email_subject(content) == "Rappel : votre rendez-vous du 1er décembre 2026"
    sms = sms_text(content)
    assert "8 h 30" in sms
    assert "Labo Centre" in sms
    assert LINK in sms
    assert INSTRUCTIONS in sms
    assert "tournesol du matin" in sms
    OutgoingSms(to="+33612345678", text=sms, category="appointment:reminder")  # valid


def test_summer_time_is_shown_in_paris_time() -> None:
    summer = dt.datetime(2026, 7, 14, 6, 0, tzinfo=dt.UTC)  # 08:00 in Paris (UTC+2)
    assert french_time(summer) == "8 h 00"
    assert french_date(summer) == "mardi 14 juillet 2026"
    # Late UTC evening is already the next day in Paris.
    assert (
        french_date(dt.datetime(2026, 7, 14, 22, 30, tzinfo=dt.UTC)) == "mercredi 15 juillet 2026"
    )


def test_a_home_visit_says_at_home_and_the_window_never_the_address() -> None:
    content = _content(
        home=True,
        starts_at=dt.datetime(2026, 12, 2, 7, 0, tzinfo=dt.UTC),
        ends_at=dt.datetime(2026, 12, 2, 9, 0, tzinfo=dt.UTC),
    )
    text = email_text(content)
    assert "à votre domicile" in text
    assert "entre 8 h 00 et 10 h 00 (heure de Paris)" in text
    assert "Labo Centre" not in text, "the home visit's message names no site"
    sms = sms_text(content)
    assert "à domicile" in sms
    assert "entre 8 h 00 et 10 h 00" in sms


def test_without_a_phrase_the_message_says_how_to_spot_a_fake() -> None:
    text = email_text(_content(phrase=None))
    assert "phrase de sécurité" not in text
    assert "ne vous demandera jamais" in text
    assert "Phrase" not in sms_text(_content(phrase=None))


def test_the_content_repr_carries_no_site_or_phrase() -> None:
    shown = repr(_content())
    assert "tournesol" not in shown
    assert "Bellecour" not in shown


@pytest.mark.parametrize(
    ("day", "start", "hours"),
    [
        (dt.date(2026, 12, 1), dt.datetime(2026, 11, 30, 23, 0, tzinfo=dt.UTC), 24),
        (dt.date(2026, 3, 29), dt.datetime(2026, 3, 28, 23, 0, tzinfo=dt.UTC), 23),  # forward
        (dt.date(2026, 10, 25), dt.datetime(2026, 10, 24, 22, 0, tzinfo=dt.UTC), 25),  # back
    ],
)
def test_a_paris_day_in_utc(day: dt.date, start: dt.datetime, hours: int) -> None:
    assert paris_day_bounds(day) == (start, start + dt.timedelta(hours=hours))


def test_default_day_is_tomorrow_in_paris() -> None:
    # 23:30 UTC on 30 November is already 1 December in Paris: tomorrow is the 2nd.
    assert default_day(dt.datetime(2026, 11, 30, 23, 30, tzinfo=dt.UTC)) == dt.date(2026, 12, 2)
    assert default_day(dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)) == dt.date(2026, 12, 1)


def test_a_reminder_sms_fits_the_length_limit() -> None:
    assert len(sms_text(_content(site_name="L" * 200))) <= MAX_SMS_LENGTH
