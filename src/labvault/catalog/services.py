"""The exam catalog, read and written with the tenant's session.

Writes are for organization admins (and system jobs); anyone else gets
:class:`CatalogAccessDeniedError` and a "denied" audit event that outlives the rollback
(:func:`labvault.core.audit.events.audited_transaction`). Bad input raises
:class:`CatalogError` (French) before anything is written. Exam labels are health data once
linked to a patient: they appear in no audit event (ids only) and no log line.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from labvault.catalog.models import Exam
from labvault.catalog.schemas import CatalogError, ExamInput
from labvault.core.access.principals import PrincipalKind
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditedRefusalError, AuditTrail
from labvault.core.db import utcnow
from labvault.schedules.slots import ExamRule
from labvault.staff.models import StaffRole

ADMIN_ROLES = frozenset({StaffRole.ORGANIZATION_ADMIN.value})


class CatalogAccessDeniedError(AuditedRefusalError):
    """Not an organization admin: nothing changed, a "denied" event recorded."""

    def __init__(self) -> None:
        super().__init__("Action réservée aux administrateurs de l'organisation.")


def require_admin(
    audit: AuditTrail, tenant_id: uuid.UUID, target_type: str, target_id: uuid.UUID | None
) -> None:
    """Organization admins and system jobs change the catalog and the schedules."""
    principal = audit.principal
    if principal.kind is PrincipalKind.SYSTEM:
        return
    if principal.kind is PrincipalKind.STAFF and principal.role in ADMIN_ROLES:
        return
    raise audit.refusal(
        CatalogAccessDeniedError(),
        AuditAction.CATALOG_ADMINISTRATION_DENIED,
        tenant_id=tenant_id,
        target_type=target_type,
        target_id=target_id,
    )


def exam_rule(exam: Exam) -> ExamRule:
    return ExamRule(
        sampling_minutes=exam.sampling_minutes,
        window_start=exam.window_start,
        window_end=exam.window_end,
        no_appointment=exam.no_appointment,
    )


class ExamCatalog:
    def __init__(
        self,
        session: Session,
        audit: AuditTrail,
        tenant_id: uuid.UUID,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._session = session
        self._audit = audit
        self._tenant_id = tenant_id
        self._clock = clock

    def exams(self, *, include_inactive: bool = False) -> list[Exam]:
        query = select(Exam).where(Exam.tenant_id == self._tenant_id)
        if not include_inactive:
            query = query.where(Exam.active.is_(True))
        return list(self._session.scalars(query.order_by(Exam.code)))

    def get(self, exam_id: uuid.UUID) -> Exam | None:
        """This organization's exam, or None (absent and foreign look the same)."""
        return self._session.scalar(
            select(Exam).where(Exam.tenant_id == self._tenant_id, Exam.id == exam_id)
        )

    def active_exams(self, exam_ids: Iterable[uuid.UUID]) -> list[Exam]:
        """The active exams among ``exam_ids``; :class:`CatalogError` if one is not."""
        wanted = set(exam_ids)
        if not wanted:
            return []
        found = list(
            self._session.scalars(
                select(Exam).where(
                    Exam.tenant_id == self._tenant_id,
                    Exam.id.in_(wanted),
                    Exam.active.is_(True),
                )
            )
        )
        if len(found) != len(wanted):
            raise CatalogError("Examen introuvable.", "exams")
        return sorted(found, key=lambda exam: exam.code)

    def create(self, raw: Mapping[str, Any] | ExamInput) -> Exam:
        require_admin(self._audit, self._tenant_id, "exam", None)
        data = raw if isinstance(raw, ExamInput) else ExamInput.parse(dict(raw))
        self._check_code_free(data.code, None)
        now = self._clock()
        exam = Exam(
            id=uuid.uuid4(),
            tenant_id=self._tenant_id,
            created_at=now,
            updated_at=now,
            active=True,
            **data.model_dump(),
        )
        self._flush(exam)
        self._audit.record(
            AuditAction.CATALOG_EXAM_CREATE,
            tenant_id=self._tenant_id,
            target_type="exam",
            target_id=exam.id,
        )
        return exam

    def update(self, exam_id: uuid.UUID, raw: Mapping[str, Any] | ExamInput) -> Exam:
        require_admin(self._audit, self._tenant_id, "exam", exam_id)
        exam = self._existing(exam_id)
        data = raw if isinstance(raw, ExamInput) else ExamInput.parse(dict(raw))
        self._check_code_free(data.code, exam.id)
        for name, value in data.model_dump().items():
            setattr(exam, name, value)
        exam.updated_at = self._clock()
        self._flush(exam)
        self._audit.record(
            AuditAction.CATALOG_EXAM_UPDATE,
            tenant_id=self._tenant_id,
            target_type="exam",
            target_id=exam.id,
        )
        return exam

    def set_active(self, exam_id: uuid.UUID, active: bool) -> Exam:
        """Withdraw an exam from booking (or bring it back); exams are never deleted, since
        appointments will name them."""
        require_admin(self._audit, self._tenant_id, "exam", exam_id)
        exam = self._existing(exam_id)
        if exam.active != active:
            exam.active = active
            exam.updated_at = self._clock()
            self._audit.record(
                AuditAction.CATALOG_EXAM_UPDATE,
                tenant_id=self._tenant_id,
                target_type="exam",
                target_id=exam.id,
                purpose="activate" if active else "deactivate",
            )
        return exam

    def _existing(self, exam_id: uuid.UUID) -> Exam:
        exam = self.get(exam_id)
        if exam is None:
            raise CatalogError("Examen introuvable.")
        return exam

    def _check_code_free(self, code: str, exam_id: uuid.UUID | None) -> None:
        other = self._session.scalar(
            select(Exam.id).where(Exam.tenant_id == self._tenant_id, Exam.code == code)
        )
        if other is not None and other != exam_id:
            raise CatalogError("Ce code d'examen existe déjà dans le catalogue.", "code")

    def _flush(self, exam: Exam) -> None:
        try:
            with self._session.begin_nested():
                self._session.add(exam)
                self._session.flush()
        except IntegrityError:
            # A concurrent writer took the code between the check and the insert.
            raise CatalogError("Ce code d'examen existe déjà dans le catalogue.", "code") from None
