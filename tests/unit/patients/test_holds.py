"""Legal holds without a database: the day a hold ends is a Paris calendar day, and the
refusal names the hold's reason and end, nothing else."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from labvault.core.audit.events import AuditedRefusalError
from labvault.patients.erasure import KeylessKeyring, LegalHoldError
from labvault.patients.holds import describe_hold, local_today
from labvault.patients.models import LegalHold, LegalHoldReason


def _hold(until: dt.date | None) -> LegalHold:
    return LegalHold(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        patient_id=uuid.uuid4(),
        reason=LegalHoldReason.LAB_REPORT_RETENTION.value,
        until=until,
        placed_by="system:cli:patients-hold",
    )


@pytest.mark.parametrize(
    ("utc", "paris_day"),
    [
        (dt.datetime(2026, 11, 30, 22, 59, tzinfo=dt.UTC), dt.date(2026, 11, 30)),
        (dt.datetime(2026, 11, 30, 23, 0, tzinfo=dt.UTC), dt.date(2026, 12, 1)),
        (dt.datetime(2026, 6, 30, 21, 59, tzinfo=dt.UTC), dt.date(2026, 6, 30)),
        (dt.datetime(2026, 6, 30, 22, 0, tzinfo=dt.UTC), dt.date(2026, 7, 1)),
    ],
    ids=["winter-before-midnight", "winter-midnight", "summer-before-midnight", "summer-midnight"],
)
def test_the_day_is_the_paris_day(utc: dt.datetime, paris_day: dt.date) -> None:
    assert local_today(utc) == paris_day


def test_the_refusal_names_reason_end_and_hold_only() -> None:
    hold = _hold(dt.date(2036, 11, 30))
    refusal = LegalHoldError(hold)
    assert isinstance(refusal, AuditedRefusalError)
    message = str(refusal)
    assert "lab-report-retention" in message
    assert "2036-11-30" in message
    assert str(hold.id) in message
    assert str(hold.patient_id) not in message
    assert (refusal.reason, refusal.until, refusal.hold_id) == (
        "lab-report-retention",
        dt.date(2036, 11, 30),
        hold.id,
    )


def test_an_open_ended_hold_says_so() -> None:
    assert describe_hold(_hold(None)) == "lab-report-retention, until it is released"


def test_the_keyless_keyring_opens_nothing() -> None:
    from labvault.core.access.principals import SystemPrincipal
    from labvault.core.crypto.errors import KeyProviderError

    keyring = KeylessKeyring(None, uuid.uuid4(), SystemPrincipal("test:keyless"))  # type: ignore[arg-type]
    with pytest.raises(KeyProviderError, match="holds no keys"):
        keyring.open_data_keys("patient", [uuid.uuid4()], "test")
    with pytest.raises(KeyProviderError):
        keyring.new_data_keys("patient", [uuid.uuid4()])
    with pytest.raises(KeyProviderError):
        _ = keyring.indexer
    assert "principal=system:test:keyless" in repr(keyring)
