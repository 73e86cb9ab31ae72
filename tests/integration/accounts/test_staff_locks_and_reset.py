"""Lock reasons and the staff password reset: the automatic lockout (too many failures) is
lifted by a reset link, a lock by a security decision only by an admin; staff ask for a link
from their own login page with the patients' guarantees; an invitee cannot reset. Both
database backends, a real key file and file mailer."""

from __future__ import annotations

import re
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from test_staff_invitations import (
    CLIENT,
    EMAIL,
    PASSWORD,
    SESSION_COOKIE,
    SYSTEM,
    Lab,
    audit_events,
    body,
    client,
    lab,
    messages,
    principal_of,
)

from labvault.accounts.models import AccountKind, AccountSession, AccountStatus, LockReason
from labvault.accounts.services import (
    RESET_LINK_INVALID,
    AuthError,
    ForbiddenError,
    SecurityLockError,
)
from labvault.core.crypto.secret import Secret
from labvault.core.ratelimit import LOCKOUT_AFTER_FAILURES
from labvault.core.runtime import Runtime
from labvault.staff.models import StaffRole

__all__ = ["client", "lab"]

RESET_LINK = re.compile(r"/compte/mot-de-passe/nouveau#(\S+)")
NEW_PASSWORD = "un tout nouveau mot de passe solide"


def reset_token(runtime: Runtime, address: str = EMAIL) -> str:
    message = next(
        m for m in reversed(messages(runtime)) if m["To"] == address and RESET_LINK.search(body(m))
    )
    match = RESET_LINK.search(body(message))
    assert match is not None
    return match.group(1)


def request_reset(lab: Lab, address: str = EMAIL) -> None:
    with lab.unit() as service:
        service.request_password_reset(address, client_id=CLIENT, kind=AccountKind.STAFF)


def complete(lab: Lab, token: str, password: str = NEW_PASSWORD) -> Exception | None:
    return lab.attempt(
        lambda s: s.complete_password_reset(token, Secret(password), client_id=CLIENT)
    )


def lock_by_failures(lab: Lab, address: str = EMAIL) -> None:
    for _ in range(LOCKOUT_AFTER_FAILURES):
        lab.attempt(
            lambda s: s.staff_login(
                address, Secret("pas le bon mot de passe"), client_id=CLIENT, client_hash=None
            )
        )


def signed_in(lab: Lab, address: str = EMAIL) -> str:
    """A session opened for the account (as after its second factor); its token."""
    account = lab.account(address)
    with lab.unit() as service:
        token, _ = service.sessions.create(
            tenant_id=lab.tenant_id,
            account_id=account.id,
            policy=service._policy(account),
            client_hash=None,
            second_factor="totp",
        )
    return token.reveal()


def is_live(lab: Lab, token: str) -> bool:
    with lab.unit() as service:
        return service.current(token) is not None


# --------------------------------------------------------------------------- lock reasons


def test_the_automatic_lockout_says_too_many_failures_and_a_reset_link_lifts_it(
    lab: Lab, runtime: Runtime
) -> None:
    lab.active(EMAIL, StaffRole.BIOLOGIST)
    session_token = signed_in(lab)
    lock_by_failures(lab)
    account = lab.account(EMAIL)
    assert account.status == AccountStatus.LOCKED.value
    assert account.lock_reason == LockReason.TOO_MANY_FAILURES.value
    assert account.locked_at is not None
    assert not is_live(lab, session_token), "a lock revokes every session"
    assert "réinitialisez votre mot de passe" in body(messages(runtime)[-1])

    request_reset(lab)
    assert "sera aussi déverrouillé" in body(messages(runtime)[-1])
    assert complete(lab, reset_token(runtime)) is None
    account = lab.account(EMAIL)
    assert (account.status, account.lock_reason, account.locked_at) == ("active", None, None)
    (unlock,) = audit_events(runtime, "account:status:unlock")
    assert unlock.actor_kind == "staff"
    with lab.unit() as service:
        assert service.staff_login(EMAIL, Secret(NEW_PASSWORD), client_id=CLIENT, client_hash=None)


def test_a_security_lock_is_lifted_neither_by_a_reset_link_nor_by_an_admin_alone(
    lab: Lab, runtime: Runtime
) -> None:
    lab.active(EMAIL, StaffRole.BIOLOGIST)
    admin = lab.active("admin@example.org", StaffRole.ORGANIZATION_ADMIN)
    # A link asked for before the decision.
    request_reset(lab)
    early_link = reset_token(runtime)
    session_token = signed_in(lab)
    before = lab.account(EMAIL).password_hash

    with lab.unit() as service:
        target = service.account(lab.account(EMAIL).id)
        assert target is not None
        service.lock_for_security(target, SYSTEM)
    account = lab.account(EMAIL)
    assert (account.status, account.lock_reason) == ("locked", "security-decision")
    assert not is_live(lab, session_token)
    (event,) = audit_events(runtime, "account:status:security-lock")
    assert (event.actor_id, event.outcome) == ("system:test:staff-invite", "success")
    notice = body(messages(runtime)[-1])
    assert "par mesure de sécurité" in notice
    assert "réinitialisez" not in notice

    # The early link no longer works; a new request sends no link, but says whom to ask.
    assert str(complete(lab, early_link)) == RESET_LINK_INVALID
    sent = len(messages(runtime))
    request_reset(lab)
    assert len(messages(runtime)) == sent + 1
    assert not RESET_LINK.search(body(messages(runtime)[-1]))
    assert "seul votre laboratoire peut le déverrouiller" in body(messages(runtime)[-1])
    denied = [
        e for e in audit_events(runtime, "account:password-reset:request") if e.outcome == "denied"
    ]
    assert len(denied) == 1
    account = lab.account(EMAIL)
    assert (account.status, account.lock_reason) == ("locked", "security-decision")
    assert account.password_hash == before, "nothing changed"

    # Too many failures after that do not turn it back into a lock a link lifts.
    with lab.unit() as service:
        target = service.account(account.id)
        assert target is not None
        service.lock(target, reason_principal=SYSTEM)
    assert lab.account(EMAIL).lock_reason == "security-decision"

    # Nor does the organization's admin lift it alone: two security officers do
    # (tests/integration/security/test_unlock.py); the attempt is recorded as denied.
    with lab.unit() as service:
        target = service.account(account.id)
        assert target is not None
        with pytest.raises(SecurityLockError, match="deux responsables de la sécurité"):
            service.unlock(target, principal_of(admin))
    account = lab.account(EMAIL)
    assert (account.status, account.lock_reason) == ("locked", "security-decision")
    refused = [e for e in audit_events(runtime, "account:status:unlock") if e.outcome == "denied"]
    assert [e.target_id for e in refused] == [account.id]


def test_only_a_security_officer_or_the_system_may_lock_by_a_security_decision(
    lab: Lab, runtime: Runtime
) -> None:
    target_account = lab.active(EMAIL, StaffRole.BIOLOGIST)
    officer = lab.active("rssi@example.org", StaffRole.SECURITY_OFFICER)
    receptionist = lab.active("accueil@example.org", StaffRole.RECEPTIONIST)
    admin = lab.active("admin@example.org", StaffRole.ORGANIZATION_ADMIN)
    other_lab = Lab(runtime, "Labo Voisin")
    outsider = other_lab.active("rssi2@example.org", StaffRole.SECURITY_OFFICER)

    def lock_as(by_lab: Lab, by: object) -> Exception | None:
        with by_lab.unit() as service:
            account = service._session.get(type(target_account), target_account.id)
            if account is None:  # row-level security: another tenant's row is not there
                return LookupError()
            try:
                service.lock_for_security(account, by)  # type: ignore[arg-type]
            except ForbiddenError as exc:
                return exc
        return None

    for by in (principal_of(receptionist), principal_of(admin)):
        assert isinstance(lock_as(lab, by), ForbiddenError)
    across = lock_as(other_lab, principal_of(outsider))
    assert isinstance(across, ForbiddenError | LookupError)
    assert isinstance(lock_as(lab, principal_of(outsider)), ForbiddenError)
    assert lab.account(EMAIL).status == AccountStatus.ACTIVE.value
    assert lock_as(lab, principal_of(officer)) is None
    assert lab.account(EMAIL).lock_reason == "security-decision"
    events = audit_events(runtime, "account:status:security-lock")
    denied = 4 if isinstance(across, ForbiddenError) else 3
    assert sorted(e.outcome for e in events) == ["denied"] * denied + ["success"]


# --------------------------------------------------------------------------- staff reset


def test_an_invitee_gets_no_reset_link_and_must_use_the_invitation(
    lab: Lab, runtime: Runtime
) -> None:
    lab.invite()
    sent = len(messages(runtime))
    request_reset(lab)
    request_reset(lab, "inconnu@example.org")
    assert len(messages(runtime)) == sent, "no message for an invitee, none for an unknown"
    assert lab.account(EMAIL).status == AccountStatus.INVITED.value
    failures = [
        e for e in audit_events(runtime, "account:password-reset:request") if e.outcome == "failure"
    ]
    assert len(failures) == 2


def test_a_staff_reset_link_lasts_15_minutes_serves_once_and_revokes_sessions(
    lab: Lab, runtime: Runtime
) -> None:
    lab.active(EMAIL, StaffRole.SAMPLER)
    session_token = signed_in(lab)
    request_reset(lab)
    token = reset_token(runtime)
    lab.clock.advance(minutes=15)
    assert str(complete(lab, token)) == RESET_LINK_INVALID
    request_reset(lab)
    token = reset_token(runtime)
    lab.clock.advance(minutes=14, seconds=59)
    assert complete(lab, token) is None
    assert str(complete(lab, token, "encore un autre mot de passe long")) == RESET_LINK_INVALID
    assert not is_live(lab, session_token)
    with runtime.sessions() as session:
        live = session.scalars(
            select(AccountSession).where(AccountSession.revoked_at.is_(None))
        ).all()
    assert live == []
    failure = lab.attempt(
        lambda s: s.staff_login(EMAIL, Secret(PASSWORD), client_id=CLIENT, client_hash=None)
    )
    assert isinstance(failure, AuthError), "the old password is gone"


def test_the_staff_reset_api_and_page_answer_the_same_for_every_address(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    lab.active(EMAIL, StaffRole.SAMPLER)
    lab.invite("invite@example.org", StaffRole.SAMPLER)
    with lab.unit() as service:  # a patient with an address no staff account has
        service.provision(
            "patient@example.org",
            Secret(PASSWORD),
            kind=AccountKind.PATIENT,
            security_phrase=None,
            by=SYSTEM,
        )
    answers = []
    for address in (EMAIL, "invite@example.org", "inconnu@example.org", "patient@example.org"):
        started = time.monotonic()
        answer = client.post("/api/v1/auth/staff/password-reset", json={"email": address})
        assert time.monotonic() - started >= 0.25
        assert answer.status_code == 202, answer.text
        answers.append(answer.json())
    assert all(answer == answers[0] for answer in answers)
    links = [m["To"] for m in messages(runtime) if RESET_LINK.search(body(m))]
    assert links == [EMAIL], "a link for the active staff account only"
    bad = client.post("/api/v1/auth/staff/password-reset", json={"email": "pas une adresse"})
    assert bad.status_code == 422

    done = client.post(
        "/api/v1/auth/password-reset/complete",
        json={"token": reset_token(runtime), "password": NEW_PASSWORD},
    )
    assert done.status_code == 204, done.text
    assert SESSION_COOKIE not in client.cookies

    login = client.get("/compte/connexion-professionnel")
    assert 'href="/compte/connexion-professionnel/mot-de-passe-oublie"' in login.text
    page = client.get("/compte/connexion-professionnel/mot-de-passe-oublie")
    assert page.status_code == 200
    csrf_token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf_token is not None
    sent = client.post(
        "/compte/connexion-professionnel/mot-de-passe-oublie",
        data={"email": EMAIL, "csrf_token": csrf_token.group(1)},
        follow_redirects=False,
    )
    assert sent.status_code == 303
    assert sent.headers["location"].endswith("?info=lien-envoye")
    assert RESET_LINK.search(body(messages(runtime)[-1]))
    invalid = client.post(
        "/compte/connexion-professionnel/mot-de-passe-oublie",
        data={"email": "", "csrf_token": csrf_token.group(1)},
    )
    assert invalid.status_code == 422
    assert 'aria-invalid="true"' in invalid.text


@pytest.mark.parametrize("role", [StaffRole.SAMPLER])
def test_a_locked_staff_account_gets_its_link_and_the_reset_lifts_the_lockout(
    client: TestClient, lab: Lab, runtime: Runtime, role: StaffRole
) -> None:
    lab.active(EMAIL, role)
    lock_by_failures(lab)
    answer = client.post("/api/v1/auth/staff/password-reset", json={"email": EMAIL})
    assert answer.status_code == 202
    done = client.post(
        "/api/v1/auth/password-reset/complete",
        json={"token": reset_token(runtime), "password": NEW_PASSWORD},
    )
    assert done.status_code == 204
    assert lab.account(EMAIL).status == AccountStatus.ACTIVE.value


def _reset_by_page(client: TestClient, token: str) -> str:
    """Complete a reset through the page the emailed link opens; where it redirects."""
    page = client.get("/compte/mot-de-passe/nouveau")
    csrf_token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf_token is not None
    done = client.post(
        "/compte/mot-de-passe/nouveau",
        data={
            "token": token,
            "password": NEW_PASSWORD,
            "password_confirmation": NEW_PASSWORD,
            "csrf_token": csrf_token.group(1),
        },
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    return done.headers["location"]


def test_after_a_reset_the_page_sends_staff_to_the_staff_login_and_patients_to_theirs(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    lab.active(EMAIL, StaffRole.SAMPLER)
    request_reset(lab)
    assert (
        _reset_by_page(client, reset_token(runtime))
        == "/compte/connexion-professionnel?info=mot-de-passe-reinitialise"
    )
    login = client.get("/compte/connexion-professionnel?info=mot-de-passe-reinitialise")
    assert "Votre mot de passe est changé" in login.text

    with lab.unit() as service:
        service.provision(
            "patient@example.org",
            Secret(PASSWORD),
            kind=AccountKind.PATIENT,
            security_phrase=None,
            by=SYSTEM,
        )
        service.request_password_reset("patient@example.org", client_id=CLIENT)
    assert (
        _reset_by_page(client, reset_token(runtime, "patient@example.org"))
        == "/compte/connexion?info=mot-de-passe-reinitialise"
    )
