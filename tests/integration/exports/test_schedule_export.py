"""The desk's day schedule as CSV (issue 9, item 6): a recent step-up, the day's visible rows
plus fingerprint rows unique to the export, recorded and audited, counted against the read
budget, honey records left out; ``labvault guard attribute`` names the export of a copy.

SQLite for all; the export itself on PostgreSQL too (row-level security on the record)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from caller_world import ORIGIN, SESSION_COOKIE, CallerWorld, alpha_settings, build_caller_world
from labvault.accounts.models import Account, AccountKind, AccountStatus
from labvault.app import create_app
from labvault.appointments.models import Appointment
from labvault.cli import app as cli
from labvault.core.access.decrypt import uninstall_guards
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.exports.fingerprints import DIGEST_BYTES
from labvault.exports.models import ExportRecord
from labvault.exports.services import CSV_HEADER
from labvault.patients.models import Patient
from labvault.patients.services import PatientRepository
from labvault.security.honey import PLANT_JOB, HoneyMembership, plant_honey
from labvault.security.lockout import wait_for_deferred
from labvault.security.models import SecurityAlert
from labvault.staff.models import StaffRole
from labvault.staff.services import StaffRepository

PAGE = "/accueil/planning/export.csv"
API = "/api/v1/desk/schedule/export"
FORM = {"Sec-Fetch-Site": "same-origin"}
SETUP = SystemPrincipal("test:exports")
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"])


def _world(runtime: Runtime) -> Iterator[tuple[CallerWorld, TestClient]]:
    cw = build_caller_world(runtime)
    with TestClient(create_app(runtime.settings, runtime), base_url=ORIGIN) as client:
        yield cw, client
    wait_for_deferred()
    uninstall_guards(runtime.engine)
    runtime.close()


@pytest.fixture
def world(settings: Settings) -> Iterator[tuple[CallerWorld, TestClient]]:
    yield from _world(Runtime(alpha_settings(settings)))


def as_(client: TestClient, cw: CallerWorld, name: str) -> str:
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cw.sessions[name].token, domain="testserver.local")
    return cw.sessions[name].csrf


def export(client: TestClient, cw: CallerWorld, name: str) -> list[list[str]]:
    """Export the main site's day as ``name``; the CSV's lines (header first)."""
    csrf = as_(client, cw, name)
    answer = client.post(
        PAGE,
        data={"csrf_token": csrf, "site": str(cw.world.sites["main"]), "jour": ""},
        headers=FORM,
        follow_redirects=False,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["cache-control"] == "no-store"
    disposition = answer.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="planning-')
    assert cw.world.inputs["today"].birth_name not in disposition
    text = answer.content.decode("utf-8-sig")
    return list(csv.reader(io.StringIO(text), delimiter=";"))


def visible(client: TestClient, cw: CallerWorld, name: str) -> set[tuple[str, str]]:
    """The (birth name, first names) the planning shows ``name`` today at the main site."""
    as_(client, cw, name)
    shown = client.get("/api/v1/desk/schedule", params={"site_id": str(cw.world.sites["main"])})
    assert shown.status_code == 200, shown.text
    return {(i["birth_name"], i["first_names"]) for i in shown.json()["items"]}


def records(cw: CallerWorld) -> list[ExportRecord]:
    with cw.world.sessions() as session:
        return list(session.scalars(select(ExportRecord).order_by(ExportRecord.created_at)))


def add_receptionist(cw: CallerWorld, name: str) -> uuid.UUID:
    with transaction(cw.world.sessions) as session:
        keyring = TenantKeyring(session, cw.runtime.key_provider, cw.world.tenant, SETUP)
        staff_id = StaffRepository(session, keyring).add(
            first_name="Dominique",
            last_name="Accueil",
            email=f"{name}@alpha.example.org",
            role=StaffRole.RECEPTIONIST,
            site_ids=[cw.world.sites["main"]],
        )
    cw.provision(name, kind=AccountKind.STAFF, role="receptionist", staff_id=staff_id)
    return staff_id


@sqlite_only
def test_the_export_needs_a_recent_step_up_and_is_the_desk_s_receptionists_only(
    world: tuple[CallerWorld, TestClient],
) -> None:
    cw, client = world
    cw.age_second_factor("receptionist")
    csrf = as_(client, cw, "receptionist")
    page = client.post(
        PAGE,
        data={"csrf_token": csrf, "site": str(cw.world.sites["main"])},
        headers=FORM,
        follow_redirects=False,
    )
    assert page.status_code == 303
    assert page.headers["location"].endswith(
        "/compte/confirmer-identite?suite=%2Faccueil%2Fplanning"
    )
    api = client.post(API, headers={"X-CSRF-Token": csrf, "Origin": ORIGIN})
    assert api.status_code == 403
    assert api.json()["reason"] == "step_up_required"
    for name in ("sampler", "biologist", "patient"):
        csrf = as_(client, cw, name)
        refused = client.post(PAGE, data={"csrf_token": csrf}, headers=FORM)
        assert refused.status_code == 404
        assert client.post(API, headers={"X-CSRF-Token": csrf, "Origin": ORIGIN}).status_code == 404
    assert records(cw) == []


@sqlite_only
def test_a_day_without_visits_exports_nothing(world: tuple[CallerWorld, TestClient]) -> None:
    cw, client = world
    csrf = as_(client, cw, "receptionist")
    empty = (dt.date.today() + dt.timedelta(days=200)).isoformat()
    site = str(cw.world.sites["main"])
    api = client.post(
        API,
        params={"site_id": site, "day": empty},
        headers={"X-CSRF-Token": csrf, "Origin": ORIGIN},
    )
    assert api.status_code == 422
    assert "rien à exporter" in api.json()["detail"]
    page = client.post(
        PAGE,
        data={"csrf_token": csrf, "site": site, "jour": empty},
        headers=FORM,
        follow_redirects=False,
    )
    assert page.status_code == 303
    assert "/accueil/planning?" in page.headers["location"]
    assert records(cw) == []


def test_the_export_holds_the_day_s_rows_and_fingerprints_recorded_and_audited(
    world: tuple[CallerWorld, TestClient],
) -> None:
    cw, client = world
    as_(client, cw, "receptionist")
    planning = client.get("/accueil/planning")
    assert "Exporter la liste du jour (CSV)" in planning.text
    expected = visible(client, cw, "receptionist")
    assert (cw.world.inputs["today"].birth_name, cw.world.inputs["today"].first_names) in expected
    lines = export(client, cw, "receptionist")
    assert tuple(lines[0]) == CSV_HEADER
    rows = {(line[1], line[3]) for line in lines[1:]}
    assert expected <= rows
    extra = rows - expected
    [record] = records(cw)
    assert len(extra) == record.fingerprint_count == 2
    assert len(lines) - 1 == record.row_count + record.fingerprint_count
    assert record.row_count == len(expected)
    assert record.staff_id == cw.world.staff["receptionist"]
    assert record.recipient_account_id == cw.accounts["receptionist"]
    assert len(record.fingerprint_digests) == DIGEST_BYTES * record.fingerprint_count
    # Only digests at rest: no fingerprint name in the record.
    for birth_name, _ in extra:
        assert birth_name.encode() not in record.fingerprint_digests
    with cw.runtime.audit_sessions() as session:
        events = list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == AuditAction.EXPORT_CSV_CREATE.value)
            )
        )
    assert [(e.target_id, e.actor_id) for e in events] == [
        (record.id, str(cw.accounts["receptionist"]))
    ]


@sqlite_only
def test_two_exports_differ_and_attribute_names_the_right_one_from_a_damaged_copy(
    world: tuple[CallerWorld, TestClient],
    cli_env: Settings,
    tmp_path: Path,
) -> None:
    cw, client = world
    second = add_receptionist(cw, "receptionist_two")
    expected = visible(client, cw, "receptionist")
    first_lines = export(client, cw, "receptionist")
    second_lines = export(client, cw, "receptionist_two")
    first_fp = {(row[1], row[3]) for row in first_lines[1:]} - expected
    second_fp = {(row[1], row[3]) for row in second_lines[1:]} - expected
    assert first_fp
    assert second_fp
    assert not first_fp & second_fp
    first, second_record = records(cw)
    assert second_record.staff_id == second
    # The leaked copy: no header, rows shuffled, one fingerprint row and a real row gone,
    # written with commas.
    body = second_lines[1:]
    random.Random(7).shuffle(body)
    dropped_fp = next(row for row in body if (row[1], row[3]) in second_fp)
    body.remove(dropped_fp)
    body.remove(next(row for row in body if (row[1], row[3]) in expected))
    leak = tmp_path / "leak.txt"
    leak.write_text("\n".join(",".join(row) for row in body), encoding="utf-8")
    found = CliRunner().invoke(cli, ["guard", "attribute", str(leak)])
    assert found.exit_code == 0, found.output
    assert str(second_record.id) in found.output
    assert str(second) in found.output
    assert str(first.id) not in found.output
    assert "1/2" in found.output
    # Real rows only: nothing to attribute.
    clean = tmp_path / "clean.csv"
    clean.write_text(
        "\n".join(";".join(row) for row in second_lines if (row[1], row[3]) in expected),
        encoding="utf-8",
    )
    none = CliRunner().invoke(cli, ["guard", "attribute", str(clean)])
    assert none.exit_code == 1, none.output
    with cw.runtime.audit_sessions() as session:
        targets = set(
            session.scalars(
                select(AuditEvent.target_id).where(
                    AuditEvent.action == AuditAction.EXPORT_LEAK_ATTRIBUTE.value
                )
            )
        )
    assert targets == {second_record.id}


@pytest.fixture
def tiny(settings: Settings) -> Iterator[tuple[CallerWorld, TestClient]]:
    limits = (1, 3, 10)
    budgets = alpha_settings(settings).model_copy(
        update={"guard_budgets": {"staff:receptionist": limits}}
    )
    yield from _world(Runtime(budgets))


@sqlite_only
def test_the_export_counts_against_the_read_budget(tiny: tuple[CallerWorld, TestClient]) -> None:
    cw, client = tiny
    csrf = as_(client, cw, "receptionist")
    answer = client.post(
        PAGE,
        data={"csrf_token": csrf, "site": str(cw.world.sites["main"])},
        headers=FORM,
        follow_redirects=False,
    )
    assert answer.status_code == 429
    assert cw.world.inputs["today"].birth_name not in answer.text
    assert records(cw) == []
    with cw.runtime.audit_sessions() as session:
        created = session.scalars(
            select(AuditEvent).where(AuditEvent.action == AuditAction.EXPORT_CSV_CREATE.value)
        )
        assert list(created) == []


@sqlite_only
def test_honey_records_are_not_exported_and_raise_nothing(
    world: tuple[CallerWorld, TestClient],
) -> None:
    cw, client = world
    runtime, tenant = cw.runtime, cw.world.tenant
    with transaction(cw.world.sessions) as session:
        keyring = TenantKeyring(
            session, runtime.key_provider, tenant, SystemPrincipal(PLANT_JOB), guards=[]
        )
        plant_honey(session, runtime.key_provider, keyring, keyring.audit, density=0.05, minimum=3)
    with cw.world.sessions() as session:
        everyone = set(session.scalars(select(Patient.id).where(Patient.tenant_id == tenant)))
        honey = HoneyMembership(session, runtime.key_provider, tenant).honey_ids(everyone)
    assert len(honey) == 3
    with transaction(cw.world.sessions) as session:
        today_at = session.scalars(
            select(Appointment.starts_at).where(
                Appointment.patient_id == cw.world.patients["today"]
            )
        ).one()
        for patient_id in sorted(honey):
            session.add(
                Appointment(
                    tenant_id=tenant,
                    patient_id=patient_id,
                    site_id=cw.world.sites["main"],
                    starts_at=today_at,
                )
            )
        keyring = TenantKeyring(session, runtime.key_provider, tenant, SETUP, guards=[])
        opened = PatientRepository(session, keyring).get_many(sorted(honey), purpose="test")
        # Whole identities: a surname alone ("Dupont") may well be a real patient's too, or
        # a fingerprint row's.
        names = {(r.birth_name, r.first_names) for r in opened}
    assert len(names) == 3
    lines = export(client, cw, "receptionist")
    exported = {(line[1], line[3]) for line in lines[1:]}
    assert not exported & names
    [record] = records(cw)
    assert len(lines) - 1 == record.row_count + record.fingerprint_count
    wait_for_deferred()
    with cw.world.sessions() as session:
        assert list(session.scalars(select(SecurityAlert.kind))) == []
        account = session.get(Account, cw.accounts["receptionist"])
        assert account is not None
        assert account.status != AccountStatus.LOCKED.value
