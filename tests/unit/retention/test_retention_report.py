"""The retention job's counts: added across organizations, and written into the audit log
as a token the log accepts (numbers only, no personal data)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from labvault.core.audit.events import TOKEN_PATTERN
from labvault.core.audit.models import AuditEvent
from labvault.retention.services import RetentionReport, RetentionSettings, run_retention


def test_reports_add_up() -> None:
    total = RetentionReport()
    total.add(RetentionReport(holds=1, documents=2, preregistrations=3, appointments=4))
    total.add(RetentionReport(holds=10, documents=20, preregistrations=30, appointments=40))
    assert total == RetentionReport(holds=11, documents=22, preregistrations=33, appointments=44)
    assert total.total == 110


def test_the_counts_fit_the_audit_log_token_even_when_large() -> None:
    report = RetentionReport(holds=7, documents=0, preregistrations=12, appointments=3, claims=2)
    assert report.purpose() == "retention/h:7/d:0/p:12/a:3/c:2"
    huge = RetentionReport(*(10**12 for _ in range(5)))
    assert TOKEN_PATTERN.fullmatch(huge.purpose())
    # The audit log's purpose column holds 64 characters: a first run on years of
    # appointments must not fail on its own summary.
    assert len(huge.purpose()) <= AuditEvent.__table__.c.purpose.type.length == 64
    assert huge.purpose() == "retention/h:99999999/d:99999999/p:99999999/a:99999999/c:99999999"


def test_a_naive_instant_is_refused_before_anything_is_read() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        run_retention(
            None,  # type: ignore[arg-type]
            uuid.uuid4(),
            RetentionSettings(appointment_retention_days=365),
            now=dt.datetime(2026, 12, 1, 12, 0),  # naive on purpose
        )
