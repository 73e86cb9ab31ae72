"""The organization's sensitive exams: results never published online before a biologist
has given them by phone (HIV, HTLV, pregnancy, genetics...).

The intake (``labvault.results.intake``) reads :func:`sensitive_codes` to decide a report's
delivery: any exam or observation code listed here makes it "by phone". The list is lab
configuration (codes, not patients' data): in clear, per tenant, changed with
``labvault results sensitive add|remove`` (audited) and seeded with :data:`DEFAULT_CODES`
when an organization is created by ``labvault init`` or the demo.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail
from labvault.core.db import utcnow
from labvault.results.content import LOINC
from labvault.results.models import SensitiveExamCode

__all__ = [
    "DEFAULT_CODES",
    "SENSITIVE_TARGET",
    "InvalidSensitiveCodeError",
    "SensitiveCode",
    "add_code",
    "list_codes",
    "remove_code",
    "seed_default_codes",
    "sensitive_codes",
]

SENSITIVE_TARGET: Final = "sensitive-exam-code"
MAX_SYSTEM = 64
MAX_CODE = 64
MAX_LABEL = 200


@dataclass(frozen=True, slots=True)
class SensitiveCode:
    system: str
    code: str
    label: str


# LOINC numbers (https://loinc.org/<code>/), checked against LOINC's pages and lab test
# catalogues that map their tests to LOINC:
# - HIV: 56888-1 HIV 1+2 Ab + HIV1 p24 Ag [Presence] in Serum or Plasma by Immunoassay
#   (4th-generation screening), 7918-6 HIV 1+2 Ab [Presence] in Serum, 89365-1 HIV 1 and 2
#   Ab panel by rapid immunoassay, 20447-9 HIV 1 RNA [#/volume] (viral load) in Serum or
#   Plasma by NAA with probe detection, 25836-8 HIV 1 RNA (viral load) in Specimen.
# - HTLV: 29901-6 HTLV I+II Ab [Presence] in Serum, 22362-8 HTLV I+II Ab (order code).
# - Pregnancy (hCG): 2106-3 Choriogonadotropin [Presence] in Urine, 2118-8 in Serum or
#   Plasma, 80385-8 (pregnancy test) in Serum by rapid immunoassay, 21198-7
#   Choriogonadotropin.beta subunit [Units/volume] in Serum or Plasma (quantitative).
# - Genetics: 29770-5 Karyotype [Identifier] in Blood or Tissue.
DEFAULT_CODES: Final[tuple[SensitiveCode, ...]] = (
    SensitiveCode(LOINC, "56888-1", "VIH 1+2 : anticorps et antigène p24 (dépistage)"),
    SensitiveCode(LOINC, "7918-6", "VIH 1+2 : anticorps"),
    SensitiveCode(LOINC, "89365-1", "VIH 1+2 : anticorps, test rapide"),
    SensitiveCode(LOINC, "20447-9", "VIH 1 : charge virale (ARN)"),
    SensitiveCode(LOINC, "25836-8", "VIH 1 : charge virale (ARN), tout prélèvement"),
    SensitiveCode(LOINC, "29901-6", "HTLV I+II : anticorps"),
    SensitiveCode(LOINC, "22362-8", "HTLV I+II : anticorps (demande)"),
    SensitiveCode(LOINC, "2106-3", "hCG : test de grossesse urinaire"),
    SensitiveCode(LOINC, "2118-8", "hCG : test de grossesse sanguin"),
    SensitiveCode(LOINC, "80385-8", "hCG : test de grossesse sanguin rapide"),
    SensitiveCode(LOINC, "21198-7", "hCG bêta : dosage sanguin"),
    SensitiveCode(LOINC, "29770-5", "Caryotype"),
)


class InvalidSensitiveCodeError(ValueError):
    """A code that cannot be stored as given (empty, too long, control characters)."""


def _clean(value: str, name: str, limit: int) -> str:
    value = value.strip()
    if not value:
        raise InvalidSensitiveCodeError(f"the {name} is empty")
    if len(value) > limit:
        raise InvalidSensitiveCodeError(f"the {name} is longer than {limit} characters")
    if any(not char.isprintable() for char in value):
        raise InvalidSensitiveCodeError(f"the {name} holds control characters")
    return value


def sensitive_codes(session: Session, tenant_id: uuid.UUID) -> frozenset[tuple[str, str]]:
    """``(system, code)`` of every sensitive exam of the organization, for the intake."""
    return frozenset(
        (system, code)
        for system, code in session.execute(
            select(SensitiveExamCode.system, SensitiveExamCode.code).where(
                SensitiveExamCode.tenant_id == tenant_id
            )
        )
    )


def list_codes(session: Session, tenant_id: uuid.UUID) -> list[SensitiveCode]:
    return [
        SensitiveCode(row.system, row.code, row.label)
        for row in session.scalars(
            select(SensitiveExamCode)
            .where(SensitiveExamCode.tenant_id == tenant_id)
            .order_by(SensitiveExamCode.system, SensitiveExamCode.code)
        )
    ]


def add_code(
    session: Session,
    audit: AuditTrail,
    tenant_id: uuid.UUID,
    system: str,
    code: str,
    label: str,
) -> bool:
    """Add one code (audited); ``False`` when it is already listed (nothing changed)."""
    system = _clean(system, "coding system", MAX_SYSTEM)
    code = _clean(code, "code", MAX_CODE)
    label = _clean(label, "label", MAX_LABEL)
    existing = session.scalar(
        select(SensitiveExamCode.id).where(
            SensitiveExamCode.tenant_id == tenant_id,
            SensitiveExamCode.system == system,
            SensitiveExamCode.code == code,
        )
    )
    if existing is not None:
        return False
    row = SensitiveExamCode(
        tenant_id=tenant_id, system=system, code=code, label=label, created_at=utcnow()
    )
    session.add(row)
    session.flush()
    audit.record(
        AuditAction.RESULT_SENSITIVE_ADD,
        tenant_id=tenant_id,
        target_type=SENSITIVE_TARGET,
        target_id=row.id,
    )
    return True


def remove_code(
    session: Session, audit: AuditTrail, tenant_id: uuid.UUID, system: str, code: str
) -> bool:
    """Remove one code (audited); ``False`` when it was not listed."""
    row_id = session.scalar(
        select(SensitiveExamCode.id).where(
            SensitiveExamCode.tenant_id == tenant_id,
            SensitiveExamCode.system == system.strip(),
            SensitiveExamCode.code == code.strip(),
        )
    )
    if row_id is None:
        return False
    session.execute(delete(SensitiveExamCode).where(SensitiveExamCode.id == row_id))
    audit.record(
        AuditAction.RESULT_SENSITIVE_REMOVE,
        tenant_id=tenant_id,
        target_type=SENSITIVE_TARGET,
        target_id=row_id,
    )
    return True


def seed_default_codes(session: Session, tenant_id: uuid.UUID) -> int:
    """Give a new organization :data:`DEFAULT_CODES` (those it lacks); how many were added.

    Not audited one by one: it is part of creating the organization."""
    present = sensitive_codes(session, tenant_id)
    added = 0
    now = utcnow()
    for default in DEFAULT_CODES:
        if (default.system, default.code) in present:
            continue
        session.add(
            SensitiveExamCode(
                tenant_id=tenant_id,
                system=default.system,
                code=default.code,
                label=default.label,
                created_at=now,
            )
        )
        added += 1
    session.flush()
    return added
