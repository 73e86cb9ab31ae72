"""Four-eyes unlock on the security console ("Comptes bloqués"): one security officer asks
with a reason, ANOTHER approves, both after a fresh step-up; the same officer twice is
refused and audited; the command line can only show. The security page reaches alerts,
locked principals and break-glass grants."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from caller_world import (
    ORIGIN,
    PATIENT_OWN,
    SESSION_COOKIE,
    CallerWorld,
    alpha_settings,
    build_caller_world,
)
from labvault.accounts.models import Account, AccountKind, AccountSession, AccountStatus
from labvault.app import create_app
from labvault.cli import app as cli_app
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.results.models import ServiceClient
from labvault.security.guard_commands import scan_tenant
from labvault.security.guard_models import UnlockReason, UnlockRequest
from labvault.security.lockout import LockoutDeps, lock_principal
from labvault.security.unlock import FourEyesUnlock, UnlockError, UnlockProblem
from labvault.staff.models import StaffRole
from labvault.staff.services import StaffRepository

PAGE = "/securite/comptes-bloques"
FIRST, SECOND = "security_officer", "security_officer_2"


@pytest.fixture
def alpha(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(alpha_settings(settings))
    yield runtime
    runtime.close()


@pytest.fixture
def cw(alpha: Runtime) -> CallerWorld:
    built = build_caller_world(alpha)
    world = built.world
    with transaction(world.sessions) as session:
        keyring = TenantKeyring(session, alpha.key_provider, world.tenant, SystemPrincipal("t:w"))
        second = StaffRepository(session, keyring).add(
            first_name="Dominique",
            last_name="Second",
            email="second.officer@alpha.example.org",
            role=StaffRole.SECURITY_OFFICER,
            site_ids=[world.sites["main"]],
        )
    built.provision(
        SECOND, kind=AccountKind.STAFF, role=StaffRole.SECURITY_OFFICER.value, staff_id=second
    )
    return built


@pytest.fixture
def client(alpha: Runtime, cw: CallerWorld) -> Iterator[TestClient]:
    with TestClient(create_app(alpha.settings, alpha), base_url=ORIGIN) as test_client:
        yield test_client


def as_(client: TestClient, cw: CallerWorld, name: str) -> str:
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cw.sessions[name].token, domain="testserver.local")
    return cw.sessions[name].csrf


def post(client: TestClient, path: str, csrf: str, **form: str) -> Any:
    return client.post(
        path, data={**form, "csrf_token": csrf}, headers={"Origin": ORIGIN}, follow_redirects=False
    )


def lock(alpha: Runtime, cw: CallerWorld, name: str) -> uuid.UUID:
    """The guard locks ``name``'s account (B1's lockout: sessions revoked, alert raised)."""
    account_id = cw.accounts[name]
    principal = Principal(PrincipalKind.STAFF, str(account_id), "receptionist")
    outcome = lock_principal(
        LockoutDeps.from_runtime(alpha), cw.world.tenant, principal, "read-budget", "budget"
    )
    assert outcome.locked
    return account_id


def status(alpha: Runtime, account_id: uuid.UUID) -> str:
    with alpha.sessions() as session:  # the deployment's organization: the world's tenant A
        account = session.get(Account, account_id)
        assert account is not None
        return account.status


def events(alpha: Runtime, action: AuditAction) -> list[tuple[str, str | None, str]]:
    with alpha.audit_sessions() as session:
        rows = session.execute(
            select(AuditEvent.actor_id, AuditEvent.purpose, AuditEvent.outcome)
            .where(AuditEvent.action == action.value)
            .order_by(AuditEvent.occurred_us)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def request_id_on_page(html: str) -> str:
    found = re.search(r'name="request_id" value="([0-9a-f-]{36})"', html)
    assert found is not None
    return found.group(1)


def test_two_different_officers_unlock_an_account_the_guard_locked(
    client: TestClient, cw: CallerWorld, alpha: Runtime
) -> None:
    target = lock(alpha, cw, "receptionist")
    csrf = as_(client, cw, FIRST)
    page = client.get(PAGE)
    assert page.status_code == 200
    assert str(target) in page.text
    assert "Demander le déblocage" in page.text
    assert (
        post(client, f"{PAGE}/demande", csrf, principal=str(target))
        .headers["location"]
        .endswith("erreur=motif")
    ), "a reason is required"
    asked = post(client, f"{PAGE}/demande", csrf, principal=str(target), reason="false-positive")
    assert asked.status_code == 303
    assert asked.headers["location"].endswith("info=demande")
    page = client.get(PAGE)
    request_id = request_id_on_page(page.text)
    assert "Approuver le déblocage" not in page.text, "not offered to the requester"

    same = post(client, f"{PAGE}/approbation", csrf, request_id=request_id)
    assert same.headers["location"].endswith("erreur=same-officer")
    assert status(alpha, target) == AccountStatus.LOCKED.value
    assert "un autre responsable" in client.get(same.headers["location"]).text

    csrf = as_(client, cw, SECOND)
    assert "Approuver le déblocage" in client.get(PAGE).text
    done = post(client, f"{PAGE}/approbation", csrf, request_id=request_id)
    assert done.headers["location"].endswith("info=debloque")
    assert status(alpha, target) == AccountStatus.ACTIVE.value
    assert "Aucun compte bloqué" in client.get(PAGE).text
    again = post(client, f"{PAGE}/approbation", csrf, request_id=request_id)
    assert again.headers["location"].endswith("erreur=no-request"), "a request serves once"

    first, second = (str(cw.accounts[n]) for n in (FIRST, SECOND))
    assert events(alpha, AuditAction.GUARD_UNLOCK_REQUEST) == [
        (first, "false-positive", "success"),
        (first, "same-officer", "denied"),
    ]
    assert events(alpha, AuditAction.GUARD_PRINCIPAL_UNLOCK) == [
        (second, "false-positive", "success")
    ]


def test_both_officers_need_a_fresh_second_factor(
    client: TestClient, cw: CallerWorld, alpha: Runtime
) -> None:
    target = lock(alpha, cw, "receptionist")
    cw.age_second_factor(FIRST)
    csrf = as_(client, cw, FIRST)
    refused = post(client, f"{PAGE}/demande", csrf, principal=str(target), reason="test")
    assert refused.headers["location"].startswith("/compte/confirmer-identite")
    with alpha.tenant_sessions(cw.world.tenant)() as session:
        assert session.scalars(select(UnlockRequest)).all() == []
    cw.sessions[FIRST] = cw.open_session(cw.accounts[FIRST])
    csrf = as_(client, cw, FIRST)
    post(client, f"{PAGE}/demande", csrf, principal=str(target), reason="test")
    request_id = request_id_on_page(client.get(PAGE).text)
    cw.age_second_factor(SECOND)
    csrf = as_(client, cw, SECOND)
    refused = post(client, f"{PAGE}/approbation", csrf, request_id=request_id)
    assert refused.headers["location"].startswith("/compte/confirmer-identite")
    assert status(alpha, target) == AccountStatus.LOCKED.value


def test_only_security_officers_reach_the_locked_list(
    client: TestClient, cw: CallerWorld, alpha: Runtime
) -> None:
    target = lock(alpha, cw, "receptionist")
    for name in ("organization_admin", "biologist", PATIENT_OWN):
        csrf = as_(client, cw, name)
        assert client.get(PAGE).status_code == 404
        answer = post(client, f"{PAGE}/demande", csrf, principal=str(target), reason="test")
        assert answer.status_code == 404
    assert status(alpha, target) == AccountStatus.LOCKED.value


def test_the_security_pages_link_alerts_locked_principals_and_grants(
    client: TestClient, cw: CallerWorld, alpha: Runtime
) -> None:
    lock(alpha, cw, "receptionist")
    prober = cw.world.principals["receptionist"]
    now = utcnow()
    with transaction(cw.world.sessions) as session:
        for n in range(40):  # probing: 40 searches, nothing opened
            moment = now - dt.timedelta(seconds=60 * n + 30)
            AuditTrail(session, prober, clock=lambda m=moment: m).record(
                AuditAction.PATIENT_SEARCH_NIR, tenant_id=cw.world.tenant, purpose="care"
            )
    mail_dir = alpha.settings.resolved_data_dir / "mail"
    before = set(mail_dir.glob("*.eml"))
    scan_tenant(alpha, cw.world.tenant, now, external=[])
    mailed = [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in set(mail_dir.glob("*.eml")) - before
    ]
    assert len(mailed) == 2, "each security officer is told (LABVAULT_ALERT_SINKS=email)"
    for message in mailed:
        body = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert "nombreuses recherches de patients" in body
        assert str(cw.accounts["receptionist"]) not in body, "the page names who, not the mail"
    as_(client, cw, FIRST)
    for path in ("/securite/alertes", "/securite/acces-exceptionnels", PAGE):
        page = client.get(path)
        assert page.status_code == 200, path
        others = {"/securite/alertes", "/securite/acces-exceptionnels", PAGE} - {path}
        for other in others:
            assert f'href="/{other.lstrip("/")}"' in page.text, (path, other)
    alerts = client.get("/securite/alertes").text
    assert str(cw.accounts["receptionist"]) in alerts  # the guard's lock
    assert "nombreuses recherches de patients suivies de peu de consultations" in alerts
    assert "recherches : 40" in alerts
    assert "dossiers ouverts par recherche : 0.0" in alerts


def _unlock(
    alpha: Runtime, session: Any, cw: CallerWorld, officer: str, fresh: bool = True
) -> FourEyesUnlock:
    account = cw.accounts[officer]
    with alpha.tenant_sessions(cw.world.tenant)() as s:
        found = s.get(Account, account)
        assert found is not None
        staff_id = found.staff_id
    assert staff_id is not None

    def step_up() -> None:
        if not fresh:
            raise RuntimeError("step-up required")

    return FourEyesUnlock(
        session,
        AuditTrail(session, Principal(PrincipalKind.STAFF, str(account), "security_officer")),
        cw.world.tenant,
        officer_staff_id=staff_id,
        officer_account_id=account,
        require_step_up=step_up,
        clock=utcnow,
    )


def test_a_disabled_service_client_is_re_enabled_by_four_eyes_and_requests_expire(
    cw: CallerWorld, alpha: Runtime
) -> None:
    tenant = cw.world.tenant
    with transaction(alpha.tenant_sessions(tenant)) as session:
        client = ServiceClient(
            tenant_id=tenant,
            name="LIS Alpha",
            kind="fhir",
            scopes="system/Patient.r",
            created_by="test",
            disabled_at=utcnow(),
            disabled_reason="honey-record",
        )
        session.add(client)
        session.flush()
        reference = f"service:{client.id}"
    with transaction(alpha.tenant_sessions(tenant)) as session:
        first = _unlock(alpha, session, cw, FIRST)
        [listed] = first.locked()
        assert (listed.kind, listed.id, listed.reason) == ("service", reference, "honey-record")
        with pytest.raises(UnlockError) as same:
            first.request("not-an-id", UnlockReason.TEST)
        assert same.value.problem is UnlockProblem.NOT_LOCKED
        stale = first.request(reference, UnlockReason.CREDENTIALS_RENEWED)
        session.execute(
            UnlockRequest.__table__.update()  # type: ignore[attr-defined]
            .where(UnlockRequest.id == stale)
            .values(expires_at=utcnow() - dt.timedelta(minutes=1))
        )
    with transaction(alpha.tenant_sessions(tenant)) as session:
        second = _unlock(alpha, session, cw, SECOND)
        with pytest.raises(UnlockError) as expired:
            second.approve(stale)
        assert expired.value.problem is UnlockProblem.NO_REQUEST
        fresh = second.request(reference, UnlockReason.CREDENTIALS_RENEWED)
        with pytest.raises(UnlockError) as twice:
            second.request(reference, UnlockReason.TEST)
        assert twice.value.problem is UnlockProblem.ALREADY_REQUESTED
    with transaction(alpha.tenant_sessions(tenant)) as session, pytest.raises(RuntimeError):
        _unlock(alpha, session, cw, FIRST, fresh=False).approve(fresh)
    with transaction(alpha.tenant_sessions(tenant)) as session:
        _unlock(alpha, session, cw, FIRST).approve(fresh)
    with alpha.tenant_sessions(tenant)() as session:
        enabled = session.scalars(select(ServiceClient)).one()
        assert (enabled.disabled_at, enabled.disabled_reason) == (None, None)


def test_nobody_takes_part_in_unlocking_their_own_account(cw: CallerWorld, alpha: Runtime) -> None:
    target = lock(alpha, cw, SECOND)
    with transaction(alpha.tenant_sessions(cw.world.tenant)) as session:
        with pytest.raises(UnlockError) as own:
            _unlock(alpha, session, cw, SECOND).request(str(target), UnlockReason.TEST)
        assert own.value.problem is UnlockProblem.OWN_ACCOUNT
        request_id = _unlock(alpha, session, cw, FIRST).request(str(target), UnlockReason.TEST)
        with pytest.raises(UnlockError) as approve_own:
            _unlock(alpha, session, cw, SECOND).approve(request_id)
        assert approve_own.value.problem is UnlockProblem.OWN_ACCOUNT
    with transaction(alpha.tenant_sessions(cw.world.tenant)) as session:
        with pytest.raises(UnlockError) as not_officer:
            _unlock(alpha, session, cw, "receptionist").locked()
        assert not_officer.value.problem is UnlockProblem.NOT_OFFICER


def test_the_command_line_shows_locked_principals_but_cannot_unlock(
    cw: CallerWorld, alpha: Runtime, cli_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = lock(alpha, cw, "receptionist")
    runner = CliRunner()
    shown = runner.invoke(cli_app, ["guard", "unlock", "--organization", "Labo Alpha"])
    assert shown.exit_code == 0, shown.output
    assert str(target) in shown.output
    assert "two different security officers" in shown.output
    assert "--yes" not in shown.output
    refused = runner.invoke(cli_app, ["guard", "unlock", str(target)])
    assert refused.exit_code != 0, "no argument unlocks anything"
    assert status(alpha, target) == AccountStatus.LOCKED.value
    with alpha.tenant_sessions(cw.world.tenant)() as session:
        sessions = session.scalars(
            select(AccountSession).where(AccountSession.account_id == target)
        ).all()
        assert all(s.revoked_at is not None for s in sessions)
