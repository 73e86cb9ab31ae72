"""A principal this process decided to lock is refused at once, before the lock is
committed (a background thread commits it on SQLite), and again after an unlock is not."""

from __future__ import annotations

import uuid

import pytest

from labvault.core.access.decrypt import DecryptRequest
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.security.guard import GUARD_REFUSALS, REFUSED_PRINCIPALS
from labvault.security.lockout import (
    PrincipalRefusedError,
    forget_refused,
    recently_refused,
    remember_refused,
)

TENANT = uuid.uuid4()


def _request(principal: Principal, tenant: uuid.UUID = TENANT) -> DecryptRequest:
    return DecryptRequest(principal, tenant, "patient", (uuid.uuid4(),), "test")


def test_a_principal_being_locked_is_refused_until_unlocked() -> None:
    scraper = Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role="receptionist")
    colleague = Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role="receptionist")
    REFUSED_PRINCIPALS.before_decrypt(_request(scraper))  # nothing known yet
    remember_refused(TENANT, scraper)
    assert recently_refused(TENANT, scraper)
    with pytest.raises(PrincipalRefusedError):
        REFUSED_PRINCIPALS.before_decrypt(_request(scraper))
    REFUSED_PRINCIPALS.before_decrypt(_request(colleague))  # only that principal
    REFUSED_PRINCIPALS.before_decrypt(_request(scraper, uuid.uuid4()))  # only that tenant
    forget_refused(TENANT, scraper.id)
    REFUSED_PRINCIPALS.before_decrypt(_request(scraper))


def test_the_refusal_is_answered_as_the_other_guard_refusals() -> None:
    assert PrincipalRefusedError in GUARD_REFUSALS
    assert str(PrincipalRefusedError()) == "access refused by the exfiltration guard"
