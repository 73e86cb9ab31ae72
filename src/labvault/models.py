"""Every feature's models, imported so that ``Base.metadata`` is complete (migrations, tests)."""

from labvault.accounts.devices import KnownDevice
from labvault.accounts.models import (
    Account,
    AccountDependent,
    AccountSession,
    OneTimeCode,
    RecoveryCode,
    TotpCredential,
)
from labvault.accounts.webauthn import WebAuthnCredential
from labvault.appointments.models import Appointment
from labvault.catalog.models import Exam
from labvault.core.audit.models import AuditCheckpoint, AuditEvent, AuditLogState, AuditTreeNode
from labvault.core.crypto.models import DataKeyRecord, IndexKeyRecord
from labvault.core.db import Base
from labvault.exports.models import ExportRecord
from labvault.organizations.models import Organization, Site
from labvault.patients.models import Patient
from labvault.results.models import (
    ResultMessage,
    ResultObservation,
    ResultOrder,
    ResultReport,
    ResultShare,
    SensitiveExamCode,
    ServiceClient,
    ServiceClientSite,
    ServiceToken,
)
from labvault.schedules.models import SiteClosure, SiteSchedule
from labvault.security.budget_models import ReadBudgetLimit, ReadBudgetRead
from labvault.security.guard_models import AnomalyFinding, UnlockRequest
from labvault.security.honey_models import HoneyMark, HoneySet
from labvault.security.models import BreakGlassGrant, SecurityAlert
from labvault.staff.models import StaffMember, StaffSite

__all__ = [
    "Account",
    "AccountDependent",
    "AccountSession",
    "AnomalyFinding",
    "Appointment",
    "AuditCheckpoint",
    "AuditEvent",
    "AuditLogState",
    "AuditTreeNode",
    "Base",
    "BreakGlassGrant",
    "DataKeyRecord",
    "Exam",
    "ExportRecord",
    "HoneyMark",
    "HoneySet",
    "IndexKeyRecord",
    "KnownDevice",
    "OneTimeCode",
    "Organization",
    "Patient",
    "ReadBudgetLimit",
    "ReadBudgetRead",
    "RecoveryCode",
    "ResultMessage",
    "ResultObservation",
    "ResultOrder",
    "ResultReport",
    "ResultShare",
    "SecurityAlert",
    "SensitiveExamCode",
    "ServiceClient",
    "ServiceClientSite",
    "ServiceToken",
    "Site",
    "SiteClosure",
    "SiteSchedule",
    "StaffMember",
    "StaffSite",
    "TotpCredential",
    "UnlockRequest",
    "WebAuthnCredential",
]
