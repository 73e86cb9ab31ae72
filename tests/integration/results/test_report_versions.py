"""Amended reports keep their history (both backends): a correction from the laboratory
system copies the version it replaces (report row and observations, ciphertext verbatim)
into ``result_report_versions`` / ``result_observation_versions`` before overwriting it.
The kept blobs stay bound to their original rows: they open with the patient's key in
their place only, and no longer once the patient is erased; nothing of either version is
in clear at rest; the biologist reviewing the correction sees the last validated values
next to the corrected ones; another tenant never sees the versions (RLS)."""

from __future__ import annotations

import uuid

import pytest
from results_intake_world import (
    COMMENT,
    HEMOGLOBIN,
    PDF,
    IntakeWorld,
    add_biologist,
    build_intake_world,
    oru,
    receive,
    review,
)
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from helpers import leaked, pg_dump, sqlite_files
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.events import audited_transaction
from labvault.core.config import Settings
from labvault.core.crypto.errors import DecryptionError
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.core.tenancy import apply
from labvault.organizations.services import create_organization
from labvault.patients.erasure import KeylessKeyring, erase_patient
from labvault.patients.models import ErasureRequester
from labvault.patients.services import PatientRepository, SealedItem
from labvault.results import content
from labvault.results.content import ObservationContent, ReportContent
from labvault.results.models import (
    ResultObservation,
    ResultObservationVersion,
    ResultReport,
    ResultReportVersion,
)
from labvault.results.review import ReportView

FIRST_GLUCOSE = "6.10"
CORRECTED_GLUCOSE = "5.42"


@pytest.fixture
def world(runtime: Runtime) -> IntakeWorld:
    return build_intake_world(runtime)


@pytest.fixture
def biologist(world: IntakeWorld) -> uuid.UUID:
    return add_biologist(world)


def mark_validated(world: IntakeWorld, order_patient: uuid.UUID) -> uuid.UUID:
    """As a biologist's validation leaves the row (without the retention hold, so the
    record can still be erased)."""
    with transaction(world.runtime.sessions) as session:
        report = session.scalars(
            select(ResultReport).where(ResultReport.patient_id == order_patient)
        ).one()
        report.status = "validated"
        report.validated_at = utcnow()
        report.validated_by = uuid.uuid4()
        return report.id


def live_blobs(
    world: IntakeWorld, report_id: uuid.UUID
) -> tuple[ResultReport, dict[uuid.UUID, tuple[int, bytes]]]:
    with world.runtime.sessions() as session:
        report = session.get(ResultReport, report_id)
        assert report is not None
        session.expunge(report)
        rows = session.scalars(
            select(ResultObservation).where(ResultObservation.report_id == report_id)
        )
        return report, {r.id: (r.position, bytes(r.content)) for r in rows}


def kept(
    world: IntakeWorld, report_id: uuid.UUID
) -> list[tuple[ResultReportVersion, list[ResultObservationVersion]]]:
    with world.runtime.sessions() as session:
        versions = list(
            session.scalars(
                select(ResultReportVersion)
                .where(ResultReportVersion.report_id == report_id)
                .order_by(ResultReportVersion.version)
            )
        )
        found = []
        for version in versions:
            observations = list(
                session.scalars(
                    select(ResultObservationVersion)
                    .where(ResultObservationVersion.report_version_id == version.id)
                    .order_by(ResultObservationVersion.position)
                )
            )
            session.expunge_all()
            found.append((version, observations))
        return found


def open_kept(
    world: IntakeWorld,
    patient_id: uuid.UUID,
    version: ResultReportVersion,
    observations: list[ResultObservationVersion],
) -> tuple[dict[uuid.UUID, dict[str, bytes | None]], list[SealedItem]]:
    """Open a kept version in its original place (result_reports / result_observations)."""
    items = [
        SealedItem(
            patient_id,
            "result_reports",
            version.report_id,
            {"content": version.content, "pdf": version.pdf},
        ),
        *(
            SealedItem(patient_id, "result_observations", o.id, {"content": o.content})
            for o in observations
        ),
    ]
    with transaction(world.runtime.sessions) as session:
        repository = PatientRepository(session, world.keyring(session))
        return repository.open_for("result", items, purpose="test"), items


# -- the copy -----------------------------------------------------------------------------------


def test_a_correction_after_validation_keeps_version_1_byte_identical(world: IntakeWorld) -> None:
    person, patient = world.people["ins"], world.patients["ins"]
    receive(world, oru(person, status="P", glucose=FIRST_GLUCOSE, pdf=PDF))
    report_id = mark_validated(world, patient)
    first, first_observations = live_blobs(world, report_id)
    receive(world, oru(person, control_id="MSG0002", status="C"))

    ((version, observations),) = kept(world, report_id)
    assert version.version == 1
    assert version.status == "validated"
    assert version.lis_status == "P"
    assert version.patient_id == patient
    assert version.tenant_id == world.tenant
    assert version.validated_by == first.validated_by
    assert version.validated_at == first.validated_at
    assert version.received_at == first.received_at
    assert version.superseded_at is not None
    assert bytes(version.content) == bytes(first.content)
    assert version.pdf is not None
    assert first.pdf is not None
    assert bytes(version.pdf) == bytes(first.pdf)
    assert {o.id: (o.position, bytes(o.content)) for o in observations} == first_observations

    live, live_observations = live_blobs(world, report_id)
    assert live.version == 2
    assert live.status == "to-validate"
    assert live.lis_status == "C"
    assert live.validated_at is None
    assert bytes(live.content) != bytes(first.content)
    assert not set(live_observations) & set(first_observations)


def test_every_superseded_version_is_kept_not_only_validated_ones(world: IntakeWorld) -> None:
    person = world.people["ins"]
    receive(world, oru(person, status="P", glucose=FIRST_GLUCOSE))
    receive(world, oru(person, control_id="MSG0002", status="P", glucose="5.90"))
    receive(world, oru(person, control_id="MSG0003", status="F"))
    with world.runtime.sessions() as session:
        report_id = session.scalars(select(ResultReport.id)).one()
    found = kept(world, report_id)
    assert [(v.version, v.status) for v, _ in found] == [(1, "to-validate"), (2, "to-validate")]
    assert all(len(observations) == 2 for _, observations in found)
    opened, _ = open_kept(world, world.patients["ins"], *found[1])
    glucose = content.load(ObservationContent, opened[found[1][1][0].id]["content"])
    assert str(glucose.number) == "5.90"


# -- the kept ciphertext ------------------------------------------------------------------------


def test_the_kept_version_opens_in_its_place_only_and_not_after_erasure(
    world: IntakeWorld,
) -> None:
    person, patient = world.people["ins"], world.patients["ins"]
    receive(world, oru(person, status="P", glucose=FIRST_GLUCOSE, pdf=PDF))
    report_id = mark_validated(world, patient)
    receive(world, oru(person, control_id="MSG0002", status="C"))
    ((version, observations),) = kept(world, report_id)

    opened, _ = open_kept(world, patient, version, observations)
    report = content.load(ReportContent, opened[report_id]["content"])
    assert report.title == "Bilan standard"
    assert opened[report_id]["pdf"] == PDF
    values = [content.load(ObservationContent, opened[o.id]["content"]) for o in observations]
    assert [str(v.number) for v in values] == [FIRST_GLUCOSE, HEMOGLOBIN]

    # Another report of the same patient, corrected too: its own kept version.
    receive(world, oru(person, control_id="MSG0003", order="DOS999", status="P"))
    receive(world, oru(person, control_id="MSG0004", order="DOS999", status="C"))
    with world.runtime.sessions() as session:
        other_id = session.scalars(
            select(ResultReport.id).where(ResultReport.id != report_id)
        ).one()
    ((other, other_observations),) = kept(world, other_id)
    # The first report's blobs copied into the other report's version rows do not open.
    with transaction(world.runtime.sessions) as session:
        session.execute(
            update(ResultReportVersion)
            .where(ResultReportVersion.id == other.id)
            .values(content=version.content)
        )
        session.execute(
            update(ResultObservationVersion)
            .where(ResultObservationVersion.id == other_observations[0].id)
            .values(content=observations[0].content)
        )
    ((moved, moved_observations),) = kept(world, other_id)
    with pytest.raises(DecryptionError):
        open_kept(world, patient, moved, [])
    with pytest.raises(DecryptionError):
        open_kept(
            world,
            patient,
            version,  # the first report's own row opens; the moved observation does not
            moved_observations[:1],
        )

    # Erased: the data key is gone, the kept ciphertext stays and opens no more.
    with audited_transaction(world.runtime.sessions) as session:
        keyring = KeylessKeyring(session, world.tenant, SystemPrincipal("cli:test-erase"))
        erase_patient(session, keyring, patient, ErasureRequester.CLI)
    with world.runtime.sessions() as session:
        assert (
            session.scalars(select(DataKeyRecord).where(DataKeyRecord.subject_id == patient)).all()
            == []
        )
    ((still, still_observations),) = kept(world, report_id)
    assert bytes(still.content) == bytes(version.content)
    opened, _ = open_kept(world, patient, still, still_observations)
    assert opened == {}


def test_no_value_of_either_version_in_clear_at_rest(
    world: IntakeWorld, settings: Settings, backend: str
) -> None:
    person, patient = world.people["ins"], world.patients["ins"]
    receive(world, oru(person, status="P", glucose="7.77", hiv=True, pdf=PDF))
    report_id = mark_validated(world, patient)
    receive(world, oru(person, control_id="MSG0002", status="C", glucose="8.88"))
    assert len(kept(world, report_id)) == 1
    values = [
        "7.77",
        "8.88",
        HEMOGLOBIN,
        COMMENT,
        "Glucose",
        "Hémoglobine",
        "Bilan standard",
        "Négatif",
        "VIH 1+2",
        "synthetic report",
        person.birth_name,
        "DOS456",
    ]
    if backend == "sqlite":
        blob = b"".join(path.read_bytes() for path in sqlite_files(settings.sqlalchemy_url))
    else:
        blob = pg_dump(settings.sqlalchemy_url)
    assert b"result_report_versions" in blob
    assert leaked(blob, values) == []


# -- the biologist's review ---------------------------------------------------------------------


def by_code(view: ReportView) -> dict[str, tuple[str, str | None]]:
    return {
        o.code.code: (o.value, o.validated_before.value if o.validated_before else None)
        for o in view.observations
    }


def test_the_review_shows_the_last_validated_values_next_to_the_corrected_ones(
    world: IntakeWorld, biologist: uuid.UUID
) -> None:
    person = world.people["ins"]
    receive(world, oru(person, status="P", glucose=FIRST_GLUCOSE))
    (item,) = review(world, biologist, lambda s: s.queue())
    first = review(world, biologist, lambda s: s.report(item.report_id))
    assert first.version == 1
    assert first.validated_version is None
    assert all(o.validated_before is None for o in first.observations)
    review(world, biologist, lambda s: s.validate(item.report_id, 1))

    receive(world, oru(person, control_id="MSG0002", status="C"))
    corrected = review(world, biologist, lambda s: s.report(item.report_id))
    assert corrected.version == 2
    assert corrected.validated_version is not None
    assert corrected.validated_version.version == 1
    assert corrected.validated_version.status.value == "released"
    assert corrected.validated_version.unmatched == ()
    assert by_code(corrected) == {"2345-7": ("5,42", "6,10"), "718-7": ("13,7", "13,7")}

    # A complement that was never validated does not hide the validated version 1.
    receive(world, oru(person, control_id="MSG0003", status="C", glucose="5.00"))
    third = review(world, biologist, lambda s: s.report(item.report_id))
    assert third.version == 3
    assert third.validated_version is not None
    assert third.validated_version.version == 1
    assert by_code(third)["2345-7"] == ("5,00", "6,10")


def test_a_correction_of_a_version_never_validated_shows_no_validated_version(
    world: IntakeWorld, biologist: uuid.UUID
) -> None:
    person = world.people["ins"]
    receive(world, oru(person, status="P", glucose=FIRST_GLUCOSE))
    receive(world, oru(person, control_id="MSG0002", status="C"))
    (item,) = review(world, biologist, lambda s: s.queue())
    view = review(world, biologist, lambda s: s.report(item.report_id))
    assert view.version == 2
    assert view.validated_version is None
    assert all(o.validated_before is None for o in view.observations)


def test_observations_are_matched_by_code_then_by_position(
    world: IntakeWorld, biologist: uuid.UUID
) -> None:
    person = world.people["ins"]
    receive(world, oru(person, status="P", glucose=FIRST_GLUCOSE, hiv=True))
    (item,) = review(world, biologist, lambda s: s.queue())
    review(world, biologist, lambda s: s.validate(item.report_id, 1))
    # The correction sends the glucose under a local code at position 1, and no HIV line.
    corrected = oru(person, control_id="MSG0002", status="C").replace(
        "2345-7^Glucose^LN", "GLY^Glycémie^L"
    )
    receive(world, corrected)
    view = review(world, biologist, lambda s: s.report(item.report_id))
    assert by_code(view) == {"GLY": ("5,42", "6,10"), "718-7": ("13,7", "13,7")}
    assert view.validated_version is not None
    (gone,) = view.validated_version.unmatched
    assert gone.code.code == "56888-1"


# -- tenants ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.pg)], indirect=True
)
def test_another_tenant_never_sees_the_versions(world: IntakeWorld) -> None:
    """Row-level security is PostgreSQL's."""
    runtime = world.runtime
    assert runtime.engine.dialect.name == "postgresql"
    person, patient = world.people["ins"], world.patients["ins"]
    receive(world, oru(person, status="P", glucose=FIRST_GLUCOSE))
    report_id = mark_validated(world, patient)
    receive(world, oru(person, control_id="MSG0002", status="C"))
    with transaction(runtime.sessions) as session:
        other = create_organization(session, runtime.key_provider, "Labo Beta").id
    tables = ("result_report_versions", "result_observation_versions")

    def counted(tenant: uuid.UUID | None) -> dict[str, int]:
        with runtime.engine.begin() as connection:
            apply(connection, tenant, None)
            return {
                table: int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
                for table in tables
            }

    assert counted(world.tenant) == {tables[0]: 1, tables[1]: 2}
    assert counted(other) == dict.fromkeys(tables, 0)
    assert counted(None) == dict.fromkeys(tables, 0)

    # Nor can it write one into the first tenant.
    def write_as_the_other_tenant() -> None:
        with runtime.engine.begin() as connection:
            apply(connection, other, None)
            connection.execute(
                text(
                    "INSERT INTO result_report_versions (id, tenant_id, patient_id, report_id, "
                    "version, lis_status, status, content, received_at, superseded_at) VALUES "
                    "(:id, :tenant, :patient, :report, 9, 'C', 'validated', '\\x00', now(), "
                    "now())"
                ),
                {
                    "id": uuid.uuid4(),
                    "tenant": world.tenant,
                    "patient": patient,
                    "report": report_id,
                },
            )

    with pytest.raises(DBAPIError, match="row-level security"):
        write_as_the_other_tenant()
