"""Lab results written straight into the access world (``caller_world``): an order, its
report and observations, sealed under the patient's key by a named system principal, as
the intake stores them. The biologist's tests start from here."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Sequence
from decimal import Decimal

from sqlalchemy.orm import Session, sessionmaker

from labvault.core.access.policies import Interaction
from labvault.core.access.principals import SystemPrincipal
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.patients.services import PatientRepository, SealedItem
from labvault.results.content import (
    LOINC,
    Coding,
    Delivery,
    ObservationContent,
    OrderDetails,
    Prescriber,
    ReportContent,
    dump,
)
from labvault.results.models import ReportStatus, ResultObservation, ResultOrder, ResultReport

SYSTEM = SystemPrincipal("test:results-world")

HEMOGLOBIN = Coding(system=LOINC, code="718-7", display="Hémoglobine")
GLUCOSE = Coding(system=LOINC, code="2345-7", display="Glycémie à jeun")
HIV = Coding(system=LOINC, code="56888-1", display="Sérologie VIH 1+2")
PRESCRIBER = Prescriber(identifier="10101010101", name="Dr Hippolyte Bonnefoy")
TITLE = "Bilan sanguin Zéphyrin"
"""A title found nowhere else, to look for in emails and files."""
CONCLUSION = "Anémie modérée Quetzalcoatl"


def hemoglobin(value: str = "10.4", flags: tuple[str, ...] = ("L",)) -> ObservationContent:
    return ObservationContent(
        code=HEMOGLOBIN,
        value_type="NM",
        number=Decimal(value),
        unit="g/dL",
        reference_range="12.0-16.0",
        abnormal_flags=flags,
    )


def glucose(value: str = "1.32") -> ObservationContent:
    return ObservationContent(
        code=GLUCOSE,
        value_type="NM",
        number=Decimal(value),
        unit="g/L",
        reference_range="0.70-1.10",
        abnormal_flags=("H",),
    )


def hiv_positive() -> ObservationContent:
    return ObservationContent(
        code=HIV, value_type="ST", text="Positif confirmé", abnormal_flags=("A",)
    )


def add_report(
    runtime: Runtime,
    sessions: sessionmaker[Session],
    tenant_id: uuid.UUID,
    patient_id: uuid.UUID,
    observations: Sequence[ObservationContent],
    *,
    title: str = TITLE,
    delivery: Delivery = Delivery.ONLINE,
    status: ReportStatus = ReportStatus.TO_VALIDATE,
    received_at: dt.datetime | None = None,
    version: int = 1,
    site_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """An order, its report and its observations for ``patient_id``; the report's id.

    ``site_id`` stays empty by default: an order at a site may put its patient in that
    site's care (the relationship rule), which these tests set with appointments only."""
    received = received_at or utcnow()
    with transaction(sessions) as session:
        keyring = TenantKeyring(session, runtime.key_provider, tenant_id, SYSTEM)
        repository = PatientRepository(session, keyring)
        order_id, report_id = uuid.uuid4(), uuid.uuid4()

        def seal(table: str, row_id: uuid.UUID, column: str, value: bytes) -> bytes:
            sealed = repository.seal_for(
                patient_id,
                "result",
                Interaction.CREATE,
                SealedItem(patient_id, table, row_id, {column: value}),
                purpose="test-results",
            )
            assert sealed is not None
            blob = sealed[column]
            assert blob is not None
            return blob

        details = OrderDetails(
            placer_order_number="CMD-" + uuid.uuid4().hex[:8],
            exams=tuple(o.code for o in observations),
            prescriber=PRESCRIBER,
            collected_at=received - dt.timedelta(hours=3),
        )
        session.add(
            ResultOrder(
                id=order_id,
                tenant_id=tenant_id,
                patient_id=patient_id,
                order_digest=os.urandom(32),
                site_id=site_id,
                details=seal("result_orders", order_id, "details", dump(details)),
                created_at=received,
                updated_at=received,
            )
        )
        content = ReportContent(
            title=title,
            delivery=delivery,
            sensitive_codes=tuple(o.code for o in observations if o.code == HIV),
        )
        session.flush()
        session.add(
            ResultReport(
                id=report_id,
                tenant_id=tenant_id,
                patient_id=patient_id,
                order_id=order_id,
                status=status.value,
                lis_status="F",
                version=version,
                content=seal("result_reports", report_id, "content", dump(content)),
                received_at=received,
                updated_at=received,
            )
        )
        session.flush()
        for position, observation in enumerate(observations, start=1):
            observation_id = uuid.uuid4()
            session.add(
                ResultObservation(
                    id=observation_id,
                    tenant_id=tenant_id,
                    patient_id=patient_id,
                    report_id=report_id,
                    position=position,
                    content=seal(
                        "result_observations", observation_id, "content", dump(observation)
                    ),
                )
            )
    return report_id
