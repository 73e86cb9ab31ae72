"""The biologist's report page for a corrected report: "Version validée précédente" with
each value of the last validated version next to the corrected one; nothing of that kind
for a first version. The page only renders the service's view (tested on both backends in
test_report_versions.py), so SQLite is enough here."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from caller_world import ORIGIN, SESSION_COOKIE, CallerWorld, alpha_settings, build_caller_world
from labvault.app import create_app
from labvault.core.access.policies import Interaction
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.patients.services import PatientRepository, SealedItem
from labvault.results.content import ObservationContent, dump
from labvault.results.intake import keep_version
from labvault.results.models import ReportStatus, ResultObservation, ResultReport
from results_world import SYSTEM, add_report, glucose, hemoglobin

QUEUE = "/biologie/resultats"
HEADING = "Version validée précédente"


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def alpha(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(alpha_settings(settings))
    yield runtime
    runtime.close()


@pytest.fixture
def cw(alpha: Runtime) -> CallerWorld:
    return build_caller_world(alpha)


@pytest.fixture
def client(alpha: Runtime, cw: CallerWorld) -> Iterator[TestClient]:
    with TestClient(create_app(alpha.settings, alpha), base_url=ORIGIN) as test_client:
        client_ = test_client
        client_.cookies.set(
            SESSION_COOKIE, cw.sessions["biologist"].token, domain="testserver.local"
        )
        yield client_


def correct(
    cw: CallerWorld, report_id: uuid.UUID, observations: Sequence[ObservationContent]
) -> None:
    """What the intake does with a correction: keep the live version, then replace it."""
    with transaction(cw.world.sessions) as session:
        report = session.get(ResultReport, report_id)
        assert report is not None
        keep_version(session, cw.world.tenant, report_id, utcnow())
        report.version += 1
        report.status = ReportStatus.TO_VALIDATE.value
        report.lis_status = "C"
        report.validated_at = report.validated_by = None
        session.execute(delete(ResultObservation).where(ResultObservation.report_id == report_id))
        repository = PatientRepository(
            session, TenantKeyring(session, cw.runtime.key_provider, cw.world.tenant, SYSTEM)
        )
        for position, observation in enumerate(observations, start=1):
            row_id = uuid.uuid4()
            sealed = repository.seal_for(
                report.patient_id,
                "result",
                Interaction.CREATE,
                SealedItem(
                    report.patient_id, "result_observations", row_id, {"content": dump(observation)}
                ),
                purpose="test-results",
            )
            assert sealed is not None
            assert sealed["content"] is not None
            session.add(
                ResultObservation(
                    id=row_id,
                    tenant_id=cw.world.tenant,
                    patient_id=report.patient_id,
                    report_id=report_id,
                    position=position,
                    content=sealed["content"],
                )
            )


def new_report(cw: CallerWorld, status: ReportStatus) -> uuid.UUID:
    return add_report(
        cw.runtime,
        cw.world.sessions,
        cw.world.tenant,
        cw.world.patients["today"],
        [hemoglobin("10.4"), glucose("1.32")],
        status=status,
    )


def test_a_corrected_report_shows_the_last_validated_values_next_to_the_new_ones(
    client: TestClient, cw: CallerWorld
) -> None:
    report_id = new_report(cw, ReportStatus.VALIDATED)
    first = client.get(f"{QUEUE}/{report_id}")
    assert first.status_code == 200, first.text
    assert HEADING not in first.text
    correct(cw, report_id, [hemoglobin("9.1"), glucose("1.32")])
    page = client.get(f"{QUEUE}/{report_id}")
    assert page.status_code == 200, page.text
    assert HEADING in page.text
    assert "version 1" in page.text
    assert 'name="version" value="2"' in page.text
    row = page.text.split("718-7", 1)[1].split("</tr>", 1)[0]
    assert "9,1 g/dL" in row
    assert "10,4 g/dL" in row, "the validated value sits in the same row as the corrected one"
    assert page.headers["cache-control"] == "no-store"
    # Nothing of it in the URL of any link or form on the page.
    assert "10,4" not in "".join(part.split('"', 1)[0] for part in page.text.split('href="')[1:])


def test_a_correction_of_an_unvalidated_report_shows_no_validated_version(
    client: TestClient, cw: CallerWorld
) -> None:
    report_id = new_report(cw, ReportStatus.TO_VALIDATE)
    correct(cw, report_id, [hemoglobin("9.1")])
    page = client.get(f"{QUEUE}/{report_id}")
    assert page.status_code == 200, page.text
    assert 'name="version" value="2"' in page.text
    assert HEADING not in page.text
    assert "10,4" not in page.text
    with cw.world.sessions() as session:
        assert session.scalar(select(ResultReport.version).where(ResultReport.id == report_id)) == 2


def test_the_review_api_gives_the_last_validated_version_too(
    client: TestClient, cw: CallerWorld
) -> None:
    report_id = new_report(cw, ReportStatus.VALIDATED)
    api = f"/api/v1/results/review/{report_id}"
    first = client.get(api)
    assert first.status_code == 200, first.text
    assert first.json()["validated_version"] is None
    assert {o["validated_before"] is None for o in first.json()["observations"]} == {True}
    correct(cw, report_id, [hemoglobin("9.1")])  # the glucose line is gone in version 2
    answer = client.get(api)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["version"] == 2
    kept = body["validated_version"]
    assert (kept["version"], kept["status"]) == (1, "validated")
    ((observation,),) = [body["observations"]]
    assert (observation["value"], observation["validated_before"]["value"]) == ("9,1", "10,4")
    assert [value["code"] for value in kept["unmatched"]] == [glucose("1.32").code.code]
