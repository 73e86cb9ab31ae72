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
from labvault.organizations.models import Site
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
    assert complete.purpose == "retention/h:1/d:2/p:1/a:3/c:0"

    # Idempotent: the same instant again, or a little later (the live hold still holds),
    # finds nothing more.
    assert _run(runtime, world) == RetentionReport()
    assert _run(runtime, world, now=NOW + dt.timedelta(minutes=5)) == RetentionReport()
    assert _state(runtime, world) == after
    assert len(_events(runtime, "patient:document:delete")) == 2


def test_later_runs_take_what_has_expired_since(runtime: Runtime, world: World) -> None:
    _run(runtime, world)
    # 31 days later the live hold has expired; "recent_long" and its pre-registration (and
    # its undated document) are older than a year. "kept"'s delete_after (NOW + 30 days) has
    # passed, but its visit (NOW + 3 days) is not 30 days old: it stays until NOW + 33 days.
    report = _run(runtime, world, now=NOW + dt.timedelta(days=31))
    assert report == RetentionReport(holds=1, documents=1, preregistrations=1, appointments=1)
    assert _state(runtime, world)["documents"] == [str(world.documents["kept"])]
    assert _run(runtime, world, now=NOW + dt.timedelta(days=34)) == RetentionReport(documents=1)
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
    assert (
        "6 appointment(s) were anonymised, 0 leftover slot claim(s) were released "
        "(appointment retention: 365 days)"
    ) in text
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


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value


def _add(
    runtime: Runtime,
    world: World,
    status: str,
    start: dt.datetime,
    *,
    end: dt.datetime | None = None,
    hold: dt.datetime | None = None,
    claim_expires: dt.datetime | None = None,
    box: int,
    document_delete_after: dt.datetime | None = None,
) -> tuple[uuid.UUID, uuid.UUID | None]:
    """One more appointment of the world's patient, with one slot claim and, if asked, one
    document; returns (appointment id, document id)."""
    with transaction(runtime.tenant_sessions(world.tenant)) as session:
        site_id = session.scalar(select(Site.id).where(Site.tenant_id == world.tenant))
        assert site_id is not None
        appointment = Appointment(
            id=uuid.uuid4(),
            tenant_id=world.tenant,
            patient_id=world.patient,
            site_id=site_id,
            starts_at=start,
            ends_at=end,
            status=status,
            hold_expires_at=hold,
        )
        session.add(appointment)
        session.flush()
        session.add(
            SlotClaim(
                id=uuid.uuid4(),
                tenant_id=world.tenant,
                site_id=site_id,
                starts_at=start,
                box=box,
                appointment_id=appointment.id,
                expires_at=claim_expires,
            )
        )
        document_id = None
        if document_delete_after is not None:
            document_id = uuid.uuid4()
            session.add(
                PatientDocument(
                    id=document_id,
                    tenant_id=world.tenant,
                    patient_id=world.patient,
                    appointment_id=appointment.id,
                    media_type="application/pdf",
                    size_bytes=8,
                    content=b"sealed!!",
                    consent_at=NOW - dt.timedelta(days=60),
                    delete_after=document_delete_after,
                )
            )
        return appointment.id, document_id


def test_a_prescription_waits_for_its_rescheduled_visit_plus_the_retention_period(
    runtime: Runtime, world: World
) -> None:
    """``delete_after`` was set at upload from the first date; the visit moved since. The
    document goes only once the visit as it is now is ``prescription_retention_days`` old."""
    day = dt.timedelta(days=1)
    uploaded_for = NOW - 31 * day  # the first date + 30 days: delete_after is past
    _, moved_later = _add(
        runtime, world, "booked", NOW + 5 * day, box=2, document_delete_after=uploaded_for
    )
    _, visited_recently = _add(
        runtime, world, "done", NOW - 10 * day, end=NOW - 10 * day + dt.timedelta(minutes=10),
        box=3, document_delete_after=uploaded_for,
    )  # fmt: skip
    _, visited_long_ago = _add(
        runtime, world, "booked", NOW - 31 * day, box=4, document_delete_after=uploaded_for
    )  # never closed at the desk: its date decides
    report = _run(runtime, world)
    assert report.documents == 3  # the world's "due" and "no_date_of_old", and the old one
    documents = _state(runtime, world)["documents"]
    assert str(moved_later) in documents
    assert str(visited_recently) in documents
    assert str(visited_long_ago) not in documents
    # Their date now says when they will really go: the visit as it is + 30 days.
    with runtime.tenant_sessions(world.tenant)() as session:
        rows = session.execute(select(PatientDocument.id, PatientDocument.delete_after)).all()
        dates = {row[0]: row[1] for row in rows}
    assert _utc(dates[moved_later]) == NOW + 35 * day
    assert _utc(dates[visited_recently]) == NOW - 10 * day + dt.timedelta(minutes=10) + 30 * day
    assert _run(runtime, world).documents == 0, "a second run changes nothing"

    # Thirty days after the moved visit, it goes too; the recent one went twenty days ago.
    later = _run(runtime, world, now=NOW + 36 * day)
    assert later.documents >= 2
    documents = _state(runtime, world)["documents"]
    assert str(moved_later) not in documents
    assert str(visited_recently) not in documents


def test_leftover_slot_claims_are_released_and_standing_ones_kept(
    runtime: Runtime, world: World
) -> None:
    day, minute = dt.timedelta(days=1), dt.timedelta(minutes=1)
    start = NOW + 2 * day
    standing = {
        "booked": _add(runtime, world, "booked", start, box=10)[0],
        "checked_in": _add(runtime, world, "checked_in", NOW - minute, box=11)[0],
        "live_hold": _add(
            runtime, world, "held", start, hold=NOW + 5 * minute, claim_expires=NOW + 5 * minute,
            box=12,
        )[0],
    }  # fmt: skip
    leaked = {
        "cancelled": _add(runtime, world, "cancelled", start, box=13)[0],
        "no_show": _add(runtime, world, "no_show", NOW - day, box=14)[0],
        "done": _add(runtime, world, "done", NOW - day, box=15)[0],
        "hold_claim_expired": _add(
            runtime, world, "held", start, hold=NOW + 5 * minute, claim_expires=NOW - minute,
            box=16,
        )[0],
    }  # fmt: skip
    dry = _run(runtime, world, dry_run=True)
    assert dry.claims == len(leaked)
    report = _run(runtime, world)
    assert report.claims == len(leaked)
    assert report.holds == 1, "the world's expired hold, its claim by cascade"
    claims = set(_state(runtime, world)["claims"])
    assert {str(i) for i in standing.values()} <= claims
    assert not {str(i) for i in leaked.values()} & claims
    [complete] = _events(runtime, "retention:run:complete")
    assert complete.purpose.endswith(f"/c:{len(leaked)}")  # type: ignore[union-attr]
    assert _run(runtime, world).claims == 0
