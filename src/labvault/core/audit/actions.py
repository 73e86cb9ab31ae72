"""The one registry of audit action tags, ``area:object:action``.

An event's action must be one of these: a tag nobody registered is a bug, not a new kind of
event. Each tag says, in French, what the patient sees in their access history (or nothing:
tags that are not about a patient's file are not shown there).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

TAG_PATTERN = re.compile(r"[a-z]+(?:-[a-z]+)*:[a-z]+(?:-[a-z]+)*:[a-z]+(?:-[a-z]+)*")


class AuditAction(enum.StrEnum):
    PATIENT_RECORD_CREATE = "patient:record:create"
    PATIENT_RECORD_READ = "patient:record:read"
    PATIENT_SEARCH_NIR = "patient:search:nir"
    PATIENT_SEARCH_EMAIL = "patient:search:email"
    PATIENT_SEARCH_PHONE = "patient:search:phone"
    PATIENT_SEARCH_NAME = "patient:search:name"
    PATIENT_HISTORY_READ = "patient:history:read"
    STAFF_RECORD_CREATE = "staff:record:create"
    STAFF_RECORD_READ = "staff:record:read"
    ACCOUNT_LOGIN_SUCCESS = "account:login:success"
    ACCOUNT_LOGIN_FAILURE = "account:login:failure"
    AUDIT_LOG_SEARCH = "audit:log:search"
    AUDIT_LOG_VERIFY = "audit:log:verify"
    AUDIT_PROOF_CREATE = "audit:proof:create"


@dataclass(frozen=True, slots=True)
class ActionInfo:
    description: str
    patient_label: str | None = None
    """What the patient's access history says; ``None``: not shown there."""


ACTIONS: dict[AuditAction, ActionInfo] = {
    AuditAction.PATIENT_RECORD_CREATE: ActionInfo(
        "A patient record was created.", "Création de votre dossier"
    ),
    AuditAction.PATIENT_RECORD_READ: ActionInfo(
        "A patient record was decrypted and read.", "Consultation de votre dossier"
    ),
    AuditAction.PATIENT_SEARCH_NIR: ActionInfo("A search by NIR (blind index)."),
    AuditAction.PATIENT_SEARCH_EMAIL: ActionInfo("A search by email address (blind index)."),
    AuditAction.PATIENT_SEARCH_PHONE: ActionInfo("A search by phone number (blind index)."),
    AuditAction.PATIENT_SEARCH_NAME: ActionInfo(
        "A search by birth name, first name and birth date (blind index)."
    ),
    AuditAction.PATIENT_HISTORY_READ: ActionInfo(
        "A patient's access history was read.", "Consultation de l'historique des accès"
    ),
    AuditAction.STAFF_RECORD_CREATE: ActionInfo("A staff member was added."),
    AuditAction.STAFF_RECORD_READ: ActionInfo("A staff member's record was decrypted and read."),
    AuditAction.ACCOUNT_LOGIN_SUCCESS: ActionInfo("A successful login."),
    AuditAction.ACCOUNT_LOGIN_FAILURE: ActionInfo("A failed login."),
    AuditAction.AUDIT_LOG_SEARCH: ActionInfo("The audit log was searched."),
    AuditAction.AUDIT_LOG_VERIFY: ActionInfo("The audit log was verified."),
    AuditAction.AUDIT_PROOF_CREATE: ActionInfo("An inclusion proof was issued."),
}

READ_ACTIONS: dict[str, AuditAction] = {
    "patient": AuditAction.PATIENT_RECORD_READ,
    "staff": AuditAction.STAFF_RECORD_READ,
}
"""The event the decrypt choke point records for each kind of subject whose key it opens."""


def read_action(subject_type: str) -> AuditAction:
    try:
        return READ_ACTIONS[subject_type]
    except KeyError:
        raise ValueError(f"no audit action registered for reading a {subject_type!r}") from None


def patient_visible_actions() -> list[AuditAction]:
    return [action for action, info in ACTIONS.items() if info.patient_label is not None]
