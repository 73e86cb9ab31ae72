"""Released reports made straight in the database for the portal and sharing tests: an
order, a report and its observations, every health value sealed under the patient's key as a
system principal, the way the intake and the biologist's release leave them."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from decimal import Decimal

from sqlalchemy.orm import Session, sessionmaker

from labvault.core.access.policies import Interaction
from labvault.core.access.principals import SystemPrincipal
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.patients.services import PatientRepository, SealedItem
from labvault.results.content import (
    LOINC,
    Coding,
    ObservationContent,
    OrderDetails,
    Prescriber,
    ReportContent,
    dump,
)
from labvault.results.models import (
    ReportStatus,
    ResultObservation,
    ResultOrder,
    ResultReport,
)

SYSTEM = SystemPrincipal("test:results-world")
GLUCOSE = Coding(system=LOINC, code="2345-7", display="Glycémie à jeun")
HEMOGLOBIN = Coding(system=LOINC, code="718-7", display="Hémoglobine")
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


def glucose(value: str, *, flags: tuple[str, ...] = ()) -> ObservationContent:
    return ObservationContent(
        code=GLUCOSE,
        value_type="NM",
        number=Decimal(value),
        unit="g/L",
        reference_range="0,70-1,10",
        abnormal_flags=flags,
    )


def hemoglobin(value: str, *, flags: tuple[str, ...] = ()) -> ObservationContent:
    return ObservationContent(
        code=HEMOGLOBIN,
        value_type="NM",
        number=Decimal(value),
        unit="g/dL",
        reference_range="12,0-16,0",
        abnormal_flags=flags,
    )


def make_report(
    runtime: Runtime,
    sessions: sessionmaker[Session],
    tenant_id: uuid.UUID,
    patient_id: uuid.UUID,
    *,
    site_id: uuid.UUID | None,
    title: str = "Bilan sanguin",
    conclusion: str = "",
    observations: Sequence[ObservationContent] = (),
    pdf: bytes | None = PDF,
    status: ReportStatus = ReportStatus.RELEASED,
    collected_at: dt.datetime | None = None,
    released_at: dt.datetime | None = None,
    prescriber: str = "Dr Claire Fontaine",
) -> uuid.UUID:
    """A report of ``patient_id`` in ``status``; its id."""
    released_at = released_at or dt.datetime.now(dt.UTC)
    collected_at = collected_at or released_at - dt.timedelta(hours=6)
    order_id, report_id = uuid.uuid4(), uuid.uuid4()
    observation_ids = [uuid.uuid4() for _ in observations]
    with transaction(sessions) as session:
        keyring = TenantKeyring(session, runtime.key_provider, tenant_id, SYSTEM)
        repository = PatientRepository(session, keyring)

        def seal(
            table: str, row_id: uuid.UUID, values: dict[str, bytes | None]
        ) -> dict[str, bytes]:
            sealed = repository.seal_for(
                patient_id,
                "result",
                Interaction.CREATE,
                SealedItem(patient_id, table, row_id, values),
                purpose="test-results",
            )
            assert sealed is not None
            return {k: v for k, v in sealed.items() if v is not None}

        details = OrderDetails(
            placer_order_number=f"P{order_id.hex[:8]}",
            exams=tuple(o.code for o in observations),
            prescriber=Prescriber(name=prescriber),
            collected_at=collected_at,
        )
        session.add(
            ResultOrder(
                id=order_id,
                tenant_id=tenant_id,
                patient_id=patient_id,
                order_digest=uuid.uuid4().bytes * 2,
                site_id=site_id,
                details=seal("result_orders", order_id, {"details": dump(details)})["details"],
            )
        )
        session.flush()
        content = ReportContent(title=title, conclusion=conclusion)
        values: dict[str, bytes | None] = {"content": dump(content)}
        if pdf is not None:
            values["pdf"] = pdf
        sealed = seal("result_reports", report_id, values)
        validated = status is not ReportStatus.TO_VALIDATE
        session.add(
            ResultReport(
                id=report_id,
                tenant_id=tenant_id,
                patient_id=patient_id,
                order_id=order_id,
                status=status.value,
                lis_status="F",
                content=sealed["content"],
                pdf=sealed.get("pdf"),
                validated_at=released_at if validated else None,
                released_at=released_at if status is ReportStatus.RELEASED else None,
            )
        )
        session.flush()
        for position, (observation_id, observation) in enumerate(
            zip(observation_ids, observations, strict=True), start=1
        ):
            session.add(
                ResultObservation(
                    id=observation_id,
                    tenant_id=tenant_id,
                    patient_id=patient_id,
                    report_id=report_id,
                    position=position,
                    content=seal(
                        "result_observations", observation_id, {"content": dump(observation)}
                    )["content"],
                )
            )
    return report_id
