"""Account deletion request, cancel link and erasure job, over HTTP and the CLI against a
real database (both backends), key file and mailer: request -> no login (the answer of a
wrong password) -> cancel restores; after the grace period ``labvault accounts purge``
erases the account and its data key and its own Patient record (not its dependents'), or
keeps that record while a legal hold is active; the audit log verifies."""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from test_step_up import EMAIL, PASSWORD, age_proofs, sign_in, sign_in_pages, step_up_by_email
from typer.testing import CliRunner

from helpers import CHEAP_HASHER
from labvault.accounts.closure import AccountClosure, StaffSelfDeletionError
from labvault.accounts.devices import KnownDevice
from labvault.accounts.models import (
    Account,
    AccountDependent,
    AccountKind,
    AccountSession,
    AccountStatus,
    OneTimeCode,
)
from labvault.accounts.services import AccountService
from labvault.accounts.sessions import SessionPolicy
from labvault.app import create_app
from labvault.cli import app as cli
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.crypto.providers import FileKeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction, utcnow
from labvault.core.mail.file import FileMailer
from labvault.core.runtime import Runtime
from labvault.organizations.services import get_organization
from labvault.patients.models import Patient

ORIGIN = "https://labo.example"
SESSION_COOKIE = "__Host-labvault-session"
SYSTEM = Principal(PrincipalKind.SYSTEM, "system:test")
CANCEL = re.compile(r"(\S+/compte/suppression/annulation)#(\S+)")
runner = CliRunner()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_LabvaultHandler":
            root.removeHandler(handler)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Served at an https origin, as the cancel links say."""
    settings = Settings(data_dir=tmp_path / "var", database_url=database_url, public_url=ORIGIN)
    FileKeyProvider.create(settings.key_file)
    return settings


def _service(runtime: Runtime, session: object) -> AccountService:
    return AccountService(
        session,  # type: ignore[arg-type]
        tenant_id=get_organization(session, None).id,  # type: ignore[arg-type]
        provider=runtime.key_provider,
        mailer=runtime.mailer,
        limiter=runtime.rate_limiter,
        settings=runtime.settings,
        hasher=CHEAP_HASHER,
    )


@pytest.fixture
def client(cli_env: Settings, runtime: Runtime) -> Iterator[TestClient]:
    """An organization with seeded patients (by the CLI), one patient account linked to a
    Patient record and acting for a dependent."""
    assert runner.invoke(cli, ["init", "--organization", "Labo Fermeture"]).exit_code == 0
    seeded = runner.invoke(cli, ["seed", "--patients", "3"])
    assert seeded.exit_code == 0, seeded.output
    with transaction(runtime.sessions) as session:
        own, child, _ = session.scalars(select(Patient.id).order_by(Patient.id)).all()
        account = _service(runtime, session).provision(
            EMAIL, Secret(PASSWORD), kind=AccountKind.PATIENT, security_phrase=None, by=SYSTEM
        )
        account.patient_id = own
        session.add(
            AccountDependent(
                id=uuid.uuid4(),
                tenant_id=account.tenant_id,
                account_id=account.id,
                patient_id=child,
                relationship="parent",
                verified_by="lab-desk",
            )
        )
    with TestClient(create_app(runtime.settings, runtime), base_url=ORIGIN) as test_client:
        yield test_client


def _mails(runtime: Runtime) -> list[str]:
    mailer = runtime.mailer
    assert isinstance(mailer, FileMailer)
    return [m.get_body(("plain",)).get_content() for m in mailer.messages()]  # type: ignore[union-attr]


def _cancel_token(runtime: Runtime) -> str:
    match = CANCEL.search(_mails(runtime)[-1])
    assert match is not None, _mails(runtime)[-1]
    assert match.group(1) == f"{ORIGIN}/compte/suppression/annulation"
    return match.group(2)


def _account(runtime: Runtime) -> Account | None:
    with runtime.sessions() as session:
        return session.scalars(select(Account)).one_or_none()


def _count(runtime: Runtime, model: type[object], *where: object) -> int:
    with runtime.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)  # type: ignore[arg-type]


def _login_answer(client: TestClient, email: str, password: str) -> tuple[int, str]:
    answer = client.post("/api/v1/auth/login", json={"email": email, "password": password})
    return answer.status_code, answer.json().get("detail", "")


def test_request_cancel_then_purge_after_the_grace_period(
    client: TestClient, runtime: Runtime
) -> None:
    headers = sign_in(client, runtime)
    age_proofs(runtime)
    refused = client.post("/api/v1/auth/account/deletion", headers=headers)
    assert refused.status_code == 403
    assert refused.json()["reason"] == "step_up_required"
    assert _account(runtime).status == AccountStatus.ACTIVE.value  # type: ignore[union-attr]
    step_up_by_email(client, runtime, headers)
    before = utcnow()
    asked = client.post("/api/v1/auth/account/deletion", headers=headers)
    assert asked.status_code == 202, asked.text
    erase_after = dt.datetime.fromisoformat(asked.json()["erase_after"])
    assert dt.timedelta(days=29, hours=23) < erase_after - before <= dt.timedelta(days=30, hours=1)
    assert client.get("/api/v1/auth/me").status_code == 401, "every session is revoked"
    account = _account(runtime)
    assert account is not None
    assert account.status == AccountStatus.CLOSING.value
    assert account.closing_requested_at is not None
    assert _count(runtime, AccountSession, AccountSession.revoked_at.is_(None)) == 0
    mail = _mails(runtime)[-1]
    assert "sera effacé en même temps, sauf s'il est sous conservation légale" in mail
    assert "conservé jusqu'à la fin de cette obligation" in mail
    assert "(vos enfants) ne sont pas effacés" in mail
    token = _cancel_token(runtime)

    # A closing account cannot log in, and says so exactly as a wrong password does.
    closing = _login_answer(client, EMAIL, PASSWORD)
    wrong = _login_answer(client, "personne@example.org", PASSWORD)
    assert closing == wrong == (401, "Adresse e-mail ou mot de passe incorrect.")

    for bad in ("", "x" * 20, token[:-2] + "xx", f"{uuid.uuid4().hex}.{'a' * 43}"):
        answer = client.post("/api/v1/auth/account/deletion/cancel", json={"token": bad})
        assert answer.status_code == 401, bad
    assert _account(runtime).status == AccountStatus.CLOSING.value  # type: ignore[union-attr]
    cancelled = client.post("/api/v1/auth/account/deletion/cancel", json={"token": token})
    assert cancelled.status_code == 204, cancelled.text
    again = client.post("/api/v1/auth/account/deletion/cancel", json={"token": token})
    assert again.status_code == 401, "the link serves once"
    account = _account(runtime)
    assert account is not None
    assert account.status == AccountStatus.ACTIVE.value
    assert account.closing_requested_at is None

    # The owner logs in normally, then asks again (the fresh login counts as a step-up).
    headers = sign_in(client, runtime)
    assert client.post("/api/v1/auth/account/deletion", headers=headers).status_code == 202
    account = _account(runtime)
    assert account is not None
    account_id, data_key_id = account.id, account.data_key_id
    own_patient = account.patient_id
    assert own_patient is not None
    with runtime.sessions() as session:
        child = session.scalars(
            select(AccountDependent.patient_id).where(AccountDependent.account_id == account_id)
        ).one()

    early = runner.invoke(cli, ["accounts", "purge"])
    assert early.exit_code == 0, early.output
    assert "0 account(s) erased, 0 data key(s) destroyed" in early.output
    assert _account(runtime) is not None, "not before the grace period has ended"

    with transaction(runtime.sessions) as session:
        stored = session.get_one(Account, account_id)
        assert stored.closing_requested_at is not None
        stored.closing_requested_at -= dt.timedelta(days=30, minutes=1)
    patients = _count(runtime, Patient)
    purged = runner.invoke(cli, ["accounts", "purge"])
    assert purged.exit_code == 0, purged.output
    assert "1 account(s) erased, 1 data key(s) destroyed" in purged.output
    assert "1 patient record(s) erased, 0 kept under a legal hold" in purged.output
    assert EMAIL not in purged.output
    assert str(account_id) not in purged.output
    assert _account(runtime) is None
    assert _count(runtime, DataKeyRecord, DataKeyRecord.id == data_key_id) == 0
    assert _count(runtime, DataKeyRecord, DataKeyRecord.subject_id == account_id) == 0
    for model, column in (
        (AccountSession, AccountSession.account_id),
        (OneTimeCode, OneTimeCode.account_id),
        (AccountDependent, AccountDependent.account_id),
        (KnownDevice, KnownDevice.account_id),
    ):
        assert _count(runtime, model, column == account_id) == 0, model
    assert _count(runtime, Patient) == patients, "rows stay: erased records are tombstones"
    erased = (Patient.id == own_patient, Patient.erased_at.is_not(None))
    assert _count(runtime, Patient, *erased, Patient.erasure_requested_by == "patient") == 1
    assert _count(runtime, DataKeyRecord, DataKeyRecord.subject_id == own_patient) == 0
    assert _count(runtime, Patient, Patient.id == child, Patient.erased_at.is_(None)) == 1
    assert _count(runtime, DataKeyRecord, DataKeyRecord.subject_id == child) == 1
    again_purged = runner.invoke(cli, ["accounts", "purge"])
    assert "0 account(s) erased" in again_purged.output, "idempotent"

    actions = [
        action
        for (action,) in runtime.sessions().execute(
            select(AuditEvent.action).order_by(AuditEvent.occurred_us)
        )
    ]
    for tag in (
        "account:deletion:request",
        "account:deletion:cancel",
        "account:deletion:failure",
        "account:deletion:erase",
        "patient:record:erase",
    ):
        assert tag in actions, tag
    verified = runner.invoke(cli, ["audit", "verify"])
    assert verified.exit_code == 0, verified.output
    assert "The audit log is intact." in verified.output
    assert _login_answer(client, EMAIL, PASSWORD) == wrong


def test_an_expired_cancel_link_is_refused(client: TestClient, runtime: Runtime) -> None:
    headers = sign_in(client, runtime)
    assert client.post("/api/v1/auth/account/deletion", headers=headers).status_code == 202
    token = _cancel_token(runtime)
    with transaction(runtime.sessions) as session:
        for record in session.scalars(select(OneTimeCode)):
            record.expires_at = utcnow() - dt.timedelta(seconds=1)
    answer = client.post("/api/v1/auth/account/deletion/cancel", json={"token": token})
    assert answer.status_code == 401
    assert _account(runtime).status == AccountStatus.CLOSING.value  # type: ignore[union-attr]


def test_a_staff_account_cannot_delete_itself(client: TestClient, runtime: Runtime) -> None:
    with transaction(runtime.sessions) as session:
        service = _service(runtime, session)
        staff = service.provision(
            "biologiste@labo.example",
            Secret(PASSWORD),
            kind=AccountKind.STAFF,
            security_phrase=None,
            by=SYSTEM,
            role="biologist",
        )
        _, record = service.sessions.create(
            tenant_id=staff.tenant_id,
            account_id=staff.id,
            policy=SessionPolicy.for_kind(runtime.settings, AccountKind.STAFF),
            client_hash=None,
            second_factor="totp",
        )
        with pytest.raises(StaffSelfDeletionError, match="administration"):
            AccountClosure(service).request(record, staff)
        assert staff.status == AccountStatus.ACTIVE.value


def test_the_deletion_pages(client: TestClient, runtime: Runtime) -> None:
    sign_in_pages(client, runtime)
    age_proofs(runtime)
    page = client.get("/compte/suppression")
    assert page.status_code == 200
    assert "n'est pas supprimé" in page.text
    assert "que la loi impose au laboratoire de conserver 10 ans" in page.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    asked = client.post("/compte/suppression", data={"csrf_token": csrf}, follow_redirects=False)
    assert asked.status_code == 303
    assert asked.headers["location"] == (
        "/compte/confirmer-identite?suite=%2Fcompte%2Fsuppression&info=confirmation-requise"
    )
    assert _account(runtime).status == AccountStatus.ACTIVE.value  # type: ignore[union-attr]
    client.post(
        "/compte/confirmer-identite/envoi",
        data={"suite": "/compte/suppression", "csrf_token": csrf},
    )
    code = re.search(r"code [^:]*: (\d{6})", _mails(runtime)[-1]).group(1)  # type: ignore[union-attr]
    done = client.post(
        "/compte/confirmer-identite",
        data={"factor": "email", "code": code, "suite": "/compte/suppression", "csrf_token": csrf},
        follow_redirects=False,
    )
    assert done.headers["location"] == "/compte/suppression?info=identite-confirmee"
    asked = client.post("/compte/suppression", data={"csrf_token": csrf}, follow_redirects=False)
    assert asked.status_code == 303
    assert asked.headers["location"] == "/compte/connexion?info=suppression-demandee"
    assert _account(runtime).status == AccountStatus.CLOSING.value  # type: ignore[union-attr]
    assert client.get("/compte/securite", follow_redirects=False).status_code == 303

    cancel_page = client.get("/compte/suppression/annulation")
    assert cancel_page.status_code == 200
    form_csrf = re.search(r'name="csrf_token" value="([^"]+)"', cancel_page.text).group(1)  # type: ignore[union-attr]
    wrong = client.post(
        "/compte/suppression/annulation", data={"token": "faux", "csrf_token": form_csrf}
    )
    assert wrong.status_code == 401
    assert "pas valable" in wrong.text
    cancelled = client.post(
        "/compte/suppression/annulation",
        data={"token": _cancel_token(runtime), "csrf_token": form_csrf},
        follow_redirects=False,
    )
    assert cancelled.status_code == 303
    assert cancelled.headers["location"] == "/compte/connexion?info=suppression-annulee"
    assert _account(runtime).status == AccountStatus.ACTIVE.value  # type: ignore[union-attr]


def test_the_purge_reaches_the_accounts_of_every_organization(
    cli_env: Settings, runtime: Runtime
) -> None:
    """On PostgreSQL each organization's rows are behind row-level security: the job must
    bind one transaction per organization, or it would erase nobody's account."""
    from labvault.organizations.services import create_organization

    erased: list[uuid.UUID] = []
    for name, email in (("Labo Nord", "nord@example.org"), ("Labo Sud", "sud@example.org")):
        with transaction(runtime.sessions) as session:
            tenant_id = create_organization(session, runtime.key_provider, name).id
            service = AccountService(
                session,
                tenant_id=tenant_id,
                provider=runtime.key_provider,
                mailer=runtime.mailer,
                limiter=runtime.rate_limiter,
                settings=runtime.settings,
                hasher=CHEAP_HASHER,
            )
            account = service.provision(
                email, Secret(PASSWORD), kind=AccountKind.PATIENT, security_phrase=None, by=SYSTEM
            )
            account.status = AccountStatus.CLOSING.value
            account.closing_requested_at = utcnow() - dt.timedelta(days=31)
            erased.append(account.id)
    purged = runner.invoke(cli, ["accounts", "purge"])
    assert purged.exit_code == 0, purged.output
    assert "2 account(s) erased, 2 data key(s) destroyed" in purged.output
    with runtime.admin_sessions() as session:
        assert session.scalars(select(Account.id).where(Account.id.in_(erased))).all() == []


def test_the_purge_keeps_a_record_under_legal_hold(client: TestClient, runtime: Runtime) -> None:
    """The account goes; its own record stays while the hold lasts, and the refused erasure
    is in the audit log."""
    from labvault.core.access.principals import SystemPrincipal
    from labvault.patients.erasure import KeylessKeyring
    from labvault.patients.holds import place_hold, release_hold
    from labvault.patients.models import LegalHold, LegalHoldReason

    with transaction(runtime.sessions) as session:
        account = session.scalars(select(Account)).one()
        own = account.patient_id
        assert own is not None
        account.status = AccountStatus.CLOSING.value
        account.closing_requested_at = utcnow() - dt.timedelta(days=31)
        keyring = KeylessKeyring(session, account.tenant_id, SystemPrincipal("test:closure"))
        place_hold(session, keyring, own, LegalHoldReason.LAB_REPORT_RETENTION)
    purged = runner.invoke(cli, ["accounts", "purge"])
    assert purged.exit_code == 0, purged.output
    assert "1 account(s) erased" in purged.output
    assert "0 patient record(s) erased, 1 kept under a legal hold" in purged.output
    assert _account(runtime) is None
    assert _count(runtime, Patient, Patient.id == own, Patient.erased_at.is_(None)) == 1
    assert _count(runtime, DataKeyRecord, DataKeyRecord.subject_id == own) == 1
    with runtime.sessions() as session:
        refused = session.execute(
            select(AuditEvent.outcome).where(
                AuditEvent.action == "patient:record:erase", AuditEvent.target_id == own
            )
        ).all()
    assert [outcome for (outcome,) in refused] == ["denied"]

    # Still held: later purges keep it, and record no new refusal each day.
    again = runner.invoke(cli, ["accounts", "purge"])
    assert "0 kept under a legal hold, 0 erased now" in " ".join(again.output.split())
    assert _count(runtime, Patient, Patient.id == own, Patient.erased_at.is_(None)) == 1
    # The hold ends: the next purge keeps the promise made to the patient and erases it.
    with transaction(runtime.sessions) as session:
        hold = session.scalars(select(LegalHold).where(LegalHold.patient_id == own)).one()
        keyring = KeylessKeyring(session, hold.tenant_id, SystemPrincipal("test:closure"))
        release_hold(session, keyring, hold.id)
    released = runner.invoke(cli, ["accounts", "purge"])
    assert released.exit_code == 0, released.output
    assert "1 erased now that their legal hold has ended" in " ".join(released.output.split())
    assert _count(runtime, Patient, Patient.id == own, Patient.erased_at.is_not(None)) == 1
    assert _count(runtime, DataKeyRecord, DataKeyRecord.subject_id == own) == 0
    with runtime.sessions() as session:
        outcomes = session.scalars(
            select(AuditEvent.outcome).where(
                AuditEvent.action == "patient:record:erase", AuditEvent.target_id == own
            )
        ).all()
    assert sorted(outcomes) == ["denied", "success"]
    verified = runner.invoke(cli, ["audit", "verify"])
    assert verified.exit_code == 0, verified.output
