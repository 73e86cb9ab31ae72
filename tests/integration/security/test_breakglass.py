"""Break-glass: one patient, a few hours, a reason, an alert, a review; nothing in clear."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from access_world import NOW, World, build_world
from helpers import leaked, pg_dump, sqlite_files
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import audited_transaction
from labvault.core.audit.models import AuditEvent
from labvault.core.db import transaction
from labvault.core.mail.file import FileMailer
from labvault.core.runtime import Runtime
from labvault.patients.scope import staff_scope
from labvault.patients.services import PatientRepository
from labvault.security.alerts import AlertDispatcher, DatabaseAlertSink, MailAlertSink
from labvault.security.breakglass import (
    BreakGlassRefusedError,
    BreakGlassReview,
    BreakGlassService,
    PatientDesignation,
    ReviewOutcome,
)
from labvault.security.models import BreakGlassGrant, BreakGlassReason, SecurityAlert

JUSTIFICATION = "Appel du Dr Martin : valeur critique de potassium à confirmer"


@pytest.fixture
def world(runtime: Runtime) -> World:
    return build_world(runtime)


def _service(
    runtime: Runtime,
    session: Session,
    world: World,
    role: str,
    mailer: FileMailer,
    now: dt.datetime = NOW,
) -> BreakGlassService:
    keyring = world.keyring(runtime, session, world.principals[role], None)
    sinks = AlertDispatcher(
        [
            DatabaseAlertSink(session, keyring.audit),
            MailAlertSink(
                session,
                lambda tenant, principal: world.keyring(runtime, session, principal, tenant),
                mailer,
            ),
        ]
    )
    return BreakGlassService(
        session, keyring, staff_id=world.staff[role], alerts=sinks, hours=4, clock=lambda: now
    )


def _open(
    runtime: Runtime, world: World, role: str, mailer: FileMailer, **kwargs: object
) -> uuid.UUID:
    nir = world.inputs["no_appointment"].nir
    with audited_transaction(world.sessions) as session:
        return _service(runtime, session, world, role, mailer).open(
            PatientDesignation(nir=nir),
            kwargs.get("reason", BreakGlassReason.EMERGENCY),  # type: ignore[arg-type]
            str(kwargs.get("justification", JUSTIFICATION)),
        )


def _visible(
    runtime: Runtime, world: World, role: str, patient: uuid.UUID, now: dt.datetime
) -> bool:
    principal = world.principals[role]
    with transaction(world.sessions) as session:
        keyring = world.keyring(runtime, session, principal, None)
        scope = staff_scope(session, principal, world.tenant, world.staff[role], now=now)
        return PatientRepository(session, keyring, scope).get(patient, purpose="care") is not None


@pytest.fixture
def mailer(tmp_path: Path) -> FileMailer:
    return FileMailer(tmp_path / "mail", "labvault <noreply@example.org>")


def test_a_grant_opens_one_patient_for_a_few_hours_with_alert_and_audit(
    runtime: Runtime, world: World, mailer: FileMailer
) -> None:
    target = world.patients["no_appointment"]
    assert not _visible(runtime, world, "receptionist", target, NOW)
    assert _open(runtime, world, "receptionist", mailer) == target
    assert _visible(runtime, world, "receptionist", target, NOW + dt.timedelta(hours=3))
    assert not _visible(runtime, world, "receptionist", target, NOW + dt.timedelta(hours=4))
    assert not _visible(runtime, world, "biologist", target, NOW), "the grant is personal"
    assert not _visible(runtime, world, "receptionist", world.patients["45_days_ago"], NOW)
    with world.sessions() as session:
        events = session.execute(
            select(AuditEvent.actor_id, AuditEvent.target_id, AuditEvent.purpose).where(
                AuditEvent.action == AuditAction.ACCESS_BREAK_GLASS_OPEN.value
            )
        ).all()
        alerts = session.scalars(select(SecurityAlert)).all()
    assert [(a, uuid.UUID(str(t)), p) for a, t, p in events] == [
        (world.principals["receptionist"].id, target, "break-glass:emergency")
    ]
    assert [(a.kind, a.actor_id) for a in alerts] == [
        ("break-glass", world.principals["receptionist"].id)
    ]
    messages = [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in sorted(mailer.directory.glob("*.eml"))
    ]
    assert [m["To"] for m in messages] == ["agent4@alpha.example.org"], "the security officer"
    body = messages[0].get_body().get_content()  # type: ignore[union-attr]
    assert "bris de glace" in body
    person = world.inputs["no_appointment"]
    assert leaked(body.encode(), [person.birth_name, person.first_given_name, str(target)]) == []


@pytest.mark.parametrize(
    ("role", "kwargs", "message"),
    [
        ("organization_admin", {}, "rôle"),
        ("security_officer", {}, "rôle"),
        ("receptionist", {"justification": "urgent"}, "entre 15 et 500"),
        ("receptionist", {"justification": "x" * 501}, "entre 15 et 500"),
    ],
)
def test_refusals_grant_nothing_and_are_recorded(
    runtime: Runtime,
    world: World,
    mailer: FileMailer,
    role: str,
    kwargs: dict[str, object],
    message: str,
) -> None:
    with pytest.raises(BreakGlassRefusedError, match=message):
        _open(runtime, world, role, mailer, **kwargs)
    _assert_refused_once(world, world.principals[role])


def test_a_designation_must_match_exactly_one_patient(
    runtime: Runtime, world: World, mailer: FileMailer
) -> None:
    person = world.inputs["no_appointment"]
    with pytest.raises(BreakGlassRefusedError), audited_transaction(world.sessions) as session:
        _service(runtime, session, world, "receptionist", mailer).open(
            PatientDesignation(
                birth_name=person.birth_name,
                first_name="Personne",
                birth_date=person.birth_date,
            ),
            BreakGlassReason.WALK_IN,
            JUSTIFICATION,
        )
    _assert_refused_once(world, world.principals["receptionist"])
    with pytest.raises(BreakGlassRefusedError, match="NIR"):
        PatientDesignation(birth_name=person.birth_name, first_name=" ")
    with transaction(world.sessions) as session:
        granted = _service(runtime, session, world, "receptionist", mailer).open(
            PatientDesignation(
                birth_name=person.birth_name.upper(),
                first_name=person.first_given_name,
                birth_date=person.birth_date,
            ),
            BreakGlassReason.WALK_IN,
            JUSTIFICATION,
        )
    assert granted == world.patients["no_appointment"]


def _assert_refused_once(world: World, principal: Principal) -> None:
    with world.sessions() as session:
        assert session.scalar(select(func.count()).select_from(BreakGlassGrant)) == 0
        assert session.scalar(select(func.count()).select_from(SecurityAlert)) == 0
        refused = session.scalars(
            select(AuditEvent.outcome).where(
                AuditEvent.action == AuditAction.ACCESS_BREAK_GLASS_REFUSED.value,
                AuditEvent.actor_id == principal.id,
            )
        ).all()
    assert refused == ["denied"]


def test_security_officers_review_grants_and_read_the_sealed_justification(
    runtime: Runtime, world: World, mailer: FileMailer, database_url: str
) -> None:
    _open(runtime, world, "receptionist", mailer)
    officer = world.principals["security_officer"]
    with transaction(world.sessions) as session:
        keyring = world.keyring(runtime, session, officer, None)
        review = BreakGlassReview(
            session, keyring, officer_id=world.staff["security_officer"], clock=lambda: NOW
        )
        [grant] = review.grants()
        assert grant.reason is BreakGlassReason.EMERGENCY
        assert grant.patient_id == world.patients["no_appointment"]
        assert review.justification(grant.id) == JUSTIFICATION
        assert review.review(grant.id, ReviewOutcome.JUSTIFIED)
        assert not review.review(grant.id, ReviewOutcome.UNJUSTIFIED), "reviewed once"
        assert review.grants() == []
        assert review.justification(uuid.uuid4()) is None
    with world.sessions() as session:
        actions = set(
            session.scalars(select(AuditEvent.action).where(AuditEvent.actor_id == officer.id))
        )
    assert {
        AuditAction.BREAK_GLASS_RECORD_READ.value,
        AuditAction.ACCESS_BREAK_GLASS_REVIEW.value,
    } <= actions
    dump = (
        pg_dump(database_url)
        if database_url.startswith("postgresql")
        else b"".join(p.read_bytes() for p in sqlite_files(database_url))
    )
    assert leaked(dump, ["potassium", "Dr Martin"]) == []


def test_other_roles_cannot_review(runtime: Runtime, world: World) -> None:
    with transaction(world.sessions) as session:
        keyring = world.keyring(runtime, session, world.principals["organization_admin"], None)
        with pytest.raises(PermissionError):
            BreakGlassReview(session, keyring, officer_id=world.staff["organization_admin"])


def test_a_staff_member_ends_its_own_grant_early(
    runtime: Runtime, world: World, mailer: FileMailer
) -> None:
    target = _open(runtime, world, "receptionist", mailer)
    with world.sessions() as session:
        grant_id = session.scalars(select(BreakGlassGrant.id)).one()
    with transaction(world.sessions) as session:
        assert not _service(runtime, session, world, "biologist", mailer).end(grant_id)
        assert _service(runtime, session, world, "receptionist", mailer).end(grant_id)
    assert not _visible(runtime, world, "receptionist", target, NOW + dt.timedelta(minutes=1))
    stranger = Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role="receptionist")
    assert stranger.id not in {p.id for p in world.principals.values()}
