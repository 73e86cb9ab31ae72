"""The retention job on a world holding each case, with an injected clock, on SQLite and
PostgreSQL: what goes, what stays, twice in a row, the audit events, the dry run, the CLI."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from labvault.appointments.models import (
    Appointment,
    PatientDocument,
    Preregistration,
    SlotClaim,
)
from labvault.cli import app as cli
from labvault.core.access.policies import Interaction
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.organizations.services import add_site, create_organization
from labvault.patients.models import Patient
from labvault.patients.schemas import PatientInput
from labvault.patients.services import PatientRepository, SealedItem
from labvault.retention.services import RetentionReport, RetentionSettings, run_retention

NOW = dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.UTC)
RULES = RetentionSettings(appointment_retention_days=365)
runner = CliRunner()


@dataclass
class World:
    tenant: uuid.UUID
    patient: uuid.UUID
    appointments: dict[str, uuid.UUID]
    documents: dict[str, uuid.UUID]


def _build(runtime: Runtime, name: str, now: dt.datetime) -> World:
    """One organization with every case, times relative to ``now``."""
    day = dt.timedelta(days=1)
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, name)
        tenant_id = organization.id
        site = add_site(
            session,
            organization,
            name="Centre",
            address_line="1 rue de la Paix",
            postal_code="69001",
            city="Lyon",
            opening_hours={},
            sampling_capacity_per_hour=0,
        )
        keyring = TenantKeyring(
            session, runtime.key_provider, tenant_id, SystemPrincipal("test-world")
        )
        repository = PatientRepository(session, keyring)
        created = repository.register_many(
            [
                PatientInput(
                    birth_name="Rétention",
                    first_names="Aline",
                    birth_date=dt.date(1970, 4, 4),
                    sex="F",
                )
            ]
        )
        patient_id = created.created[0]
        minute = dt.timedelta(minutes=1)
        plan: dict[str, dict[str, Any]] = {
            "expired_hold": {"status": "held", "start": now + day, "hold": now - minute},
            "live_hold": {"status": "held", "start": now + day, "hold": now + 9 * minute},
            "old_done": {
                "status": "done", "start": now - 400 * day, "end": now - 400 * day + 10 * minute,
            },
            "old_cancelled_no_end": {"status": "cancelled", "start": now - 366 * day},
            "old_home": {
                "status": "done", "start": now - 500 * day, "end": now - 500 * day + 120 * minute,
                "kind": "home",
            },
            # Ends 364 days ago though it started 366 days ago: still kept (ends_at rules).
            "recent_long": {"status": "done", "start": now - 366 * day, "end": now - 364 * day},
            "upcoming": {"status": "booked", "start": now + 3 * day},
        }  # fmt: skip
        appointments: dict[str, uuid.UUID] = {}
        for label, case in plan.items():
            appointment_id = uuid.uuid4()
            values: dict[str, bytes | None] = {"exams": json.dumps({"exam_ids": []}).encode()}
            if case.get("kind") == "home":
                values["home_address"] = json.dumps(
                    {"line": "2 rue X", "postal_code": "69001", "city": "Lyon", "instructions": ""}
                ).encode()
            sealed = repository.seal_for(
                patient_id,
                "appointment",
                Interaction.CREATE,
                SealedItem(patient_id, "appointments", appointment_id, values),
                purpose="booking",
            )
            assert sealed is not None
            session.add(
                Appointment(
                    id=appointment_id,
                    tenant_id=tenant_id,
                    patient_id=patient_id,
                    site_id=site.id,
                    starts_at=case["start"],
                    ends_at=case.get("end"),
                    status=case["status"],
                    kind=case.get("kind", "site"),
                    exams=sealed["exams"],
                    home_address=sealed.get("home_address"),
                    hold_expires_at=case.get("hold"),
                )
            )
            session.flush()
            if case["status"] == "held":
                session.add(
                    SlotClaim(
                        id=uuid.uuid4(),
                        tenant_id=tenant_id,
                        site_id=site.id,
                        starts_at=case["start"],
                        box=0 if label == "expired_hold" else 1,
                        appointment_id=appointment_id,
                        expires_at=case["hold"],
                    )
                )
            if label in ("old_done", "recent_long", "upcoming", "expired_hold"):
                session.add(
                    Preregistration(
                        id=uuid.uuid4(),
                        tenant_id=tenant_id,
                        appointment_id=appointment_id,
                        patient_id=patient_id,
                        details=b"sealed-elsewhere",
                    )
                )
            appointments[label] = appointment_id
        documents: dict[str, uuid.UUID] = {}
        for label, appointment, delete_after in (
            ("due", "recent_long", now - dt.timedelta(seconds=1)),
            ("kept", "upcoming", now + 30 * day),
            ("no_date_of_old", "old_done", None),
            ("no_date_of_recent", "recent_long", None),
        ):
            document_id = uuid.uuid4()
            session.add(
                PatientDocument(
                    id=document_id,
                    tenant_id=tenant_id,
                    patient_id=patient_id,
                    appointment_id=appointments[appointment],
                    media_type="application/pdf",
                    size_bytes=8,
                    content=b"sealed!!",
                    consent_at=now - 400 * day,
                    delete_after=delete_after,
                )
            )
            documents[label] = document_id
    return World(tenant_id, patient_id, appointments, documents)


@pytest.fixture
def world(runtime: Runtime) -> World:
    return _build(runtime, "Labo Retention", NOW)


def _state(runtime: Runtime, world: World) -> dict[str, Any]:
    """Everything the job may touch in the world's organization, as comparable values."""
    tenant = world.tenant
    with runtime.tenant_sessions(tenant)() as session:
        appointments = {
            row.id: (row.exams is not None, row.home_address is not None, row.anonymised_at)
            for row in session.execute(
                select(
                    Appointment.id,
                    Appointment.exams,
                    Appointment.home_address,
                    Appointment.anonymised_at,
                ).where(Appointment.tenant_id == tenant)
            )
        }
        return {
            "appointments": appointments,
            "claims": sorted(
                map(
                    str,
                    session.scalars(
                        select(SlotClaim.appointment_id).where(SlotClaim.tenant_id == tenant)
                    ),
                )
            ),
            "preregistrations": sorted(
                map(
                    str,
                    session.scalars(
                        select(Preregistration.appointment_id).where(
                            Preregistration.tenant_id == tenant
                        )
                    ),
                )
            ),
            "documents": sorted(
                map(
                    str,
                    session.scalars(
                        select(PatientDocument.id).where(PatientDocument.tenant_id == tenant)
                    ),
                )
            ),
            "patients": session.scalar(
                select(func.count()).select_from(Patient).where(Patient.tenant_id == tenant)
            ),
        }


def _run(
    runtime: Runtime, world: World, *, now: dt.datetime = NOW, dry_run: bool = False
) -> RetentionReport:
    with transaction(runtime.tenant_sessions(world.tenant)) as session:
        return run_retention(session, world.tenant, RULES, now=now, dry_run=dry_run)


def _events(runtime: Runtime, action: str) -> list[AuditEvent]:
    with runtime.admin_sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
            )
        )


def test_each_case_is_purged_or_kept_and_a_second_run_changes_nothing(
    runtime: Runtime, world: World
) -> None:
    before = _state(runtime, world)
    dry = _run(runtime, world, dry_run=True)
    expected = RetentionReport(holds=1, documents=2, preregistrations=1, appointments=3)
    assert dry == expected
    assert _state(runtime, world) == before, "a dry run changes nothing"
    assert _events(runtime, "retention:run:complete") == []

    assert _run(runtime, world) == expected
    after = _state(runtime, world)
    a = world.appointments
    assert set(after["appointments"]) == set(a.values()) - {a["expired_hold"]}
    for label in ("old_done", "old_cancelled_no_end", "old_home"):
        assert after["appointments"][a[label]] == (False, False, NOW), label
    for label in ("live_hold", "recent_long", "upcoming"):
        assert after["appointments"][a[label]] == before["appointments"][a[label]], label
        assert after["appointments"][a[label]][0], "exams still sealed"
    assert after["claims"] == [str(a["live_hold"])], "the expired hold's claim went with it"
    assert after["preregistrations"] == sorted(str(a[x]) for x in ("recent_long", "upcoming"))
    d = world.documents
    assert after["documents"] == sorted(str(d[x]) for x in ("kept", "no_date_of_recent"))
    assert after["patients"] == before["patients"] == 1, "the record is kept"

    deleted = _events(runtime, "patient:document:delete")
    assert len(deleted) == 2
    assert {(e.target_type, e.target_id, e.purpose, e.actor_id) for e in deleted} == {
        ("patient", world.patient, "retention", "system:job:retention")
    }
    [complete] = _events(runtime, "retention:run:complete")
    assert complete.target_type == "organization"
    assert complete.target_id == world.tenant
    assert complete.purpose == ("retention/holds:1/documents:2/preregistrations:1/appointments:3")

    # Idempotent: the same instant again, or a little later (the live hold still holds),
    # finds nothing more.
    assert _run(runtime, world) == RetentionReport()
    assert _run(runtime, world, now=NOW + dt.timedelta(minutes=5)) == RetentionReport()
    assert _state(runtime, world) == after
    assert len(_events(runtime, "patient:document:delete")) == 2


def test_later_runs_take_what_has_expired_since(runtime: Runtime, world: World) -> None:
    _run(runtime, world)
    later = NOW + dt.timedelta(days=31)
    report = _run(runtime, world, now=later)
    # The live hold has expired; the "kept" document's date passed; "recent_long" and its
    # pre-registration (and its undated document) are older than a year now.
    assert report == RetentionReport(holds=1, documents=2, preregistrations=1, appointments=1)
    state = _state(runtime, world)
    assert state["documents"] == []
    assert state["claims"] == []


def test_the_cli_runs_every_organization_and_dry_run_changes_nothing(
    cli_env: Settings, runtime: Runtime
) -> None:
    """Real time here: the world is built around now. Two organizations: on PostgreSQL each
    is behind row-level security, so the job must bind one transaction per organization."""
    now = utcnow()
    worlds = [_build(runtime, name, now) for name in ("Labo Nord", "Labo Sud")]
    before = [_state(runtime, w) for w in worlds]
    dry = runner.invoke(cli, ["retention", "run", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    text = " ".join(dry.output.split())
    assert "2 expired hold(s), 4 prescription(s) and 2 pre-registration(s) would be deleted" in text
    assert "6 appointment(s) would be anonymised" in text
    assert "Dry run: nothing was changed." in text
    assert [_state(runtime, w) for w in worlds] == before

    done = runner.invoke(cli, ["retention", "run"])
    assert done.exit_code == 0, done.output
    text = " ".join(done.output.split())
    assert "2 expired hold(s), 4 prescription(s) and 2 pre-registration(s) were deleted" in text
    assert "6 appointment(s) were anonymised (appointment retention: 365 days)" in text
    for w in worlds:
        assert str(w.patient) not in done.output
        assert _state(runtime, w)["claims"] == [str(w.appointments["live_hold"])]
    completes = _events(runtime, "retention:run:complete")
    assert sorted(e.target_id for e in completes) == sorted(w.tenant for w in worlds)  # type: ignore[type-var]

    again = runner.invoke(cli, ["retention", "run"])
    assert again.exit_code == 0, again.output
    assert "0 expired hold(s), 0 prescription(s) and 0 pre-registration(s) were deleted" in (
        " ".join(again.output.split())
    )
    verified = runner.invoke(cli, ["audit", "verify"])
    assert verified.exit_code == 0, verified.output
