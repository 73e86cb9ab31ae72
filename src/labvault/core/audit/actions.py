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
    STAFF_INVITATION_CREATE = "staff:invitation:create"
    STAFF_INVITATION_RENEW = "staff:invitation:renew"
    STAFF_INVITATION_ACCEPT = "staff:invitation:accept"
    STAFF_INVITATION_FAILURE = "staff:invitation:failure"
    ACCOUNT_RECORD_READ = "account:record:read"
    ACCOUNT_SIGNUP_REQUEST = "account:signup:request"
    ACCOUNT_EMAIL_CONFIRM = "account:email:confirm"
    ACCOUNT_EMAIL_FAILURE = "account:email:failure"
    ACCOUNT_PASSWORD_SUCCESS = "account:password:success"  # noqa: S105 - a tag, not a secret
    ACCOUNT_LOGIN_SUCCESS = "account:login:success"
    ACCOUNT_LOGIN_FAILURE = "account:login:failure"
    ACCOUNT_LOGIN_THROTTLED = "account:login:throttled"
    ACCOUNT_SECOND_FACTOR_FAILURE = "account:second-factor:failure"
    ACCOUNT_LOCK = "account:status:lock"
    ACCOUNT_LOGOUT = "account:session:logout"
    ACCOUNT_SESSION_REVOKE = "account:session:revoke"
    ACCOUNT_TOTP_ENROL = "account:totp:enrol"
    ACCOUNT_RECOVERY_CREATE = "account:recovery-codes:create"
    ACCOUNT_RECOVERY_USE = "account:recovery-codes:use"
    ACCOUNT_PASSWORD_RESET_REQUEST = "account:password-reset:request"  # noqa: S105 - a tag
    ACCOUNT_PASSWORD_RESET_THROTTLED = "account:password-reset:throttled"  # noqa: S105 - a tag
    ACCOUNT_PASSWORD_RESET_COMPLETE = "account:password-reset:complete"  # noqa: S105 - a tag
    ACCOUNT_PASSWORD_RESET_FAILURE = "account:password-reset:failure"  # noqa: S105 - a tag
    ACCOUNT_PASSWORD_CHANGE = "account:password:change"  # noqa: S105 - a tag, not a secret
    ACCOUNT_PASSWORD_CHANGE_FAILURE = "account:password-change:failure"  # noqa: S105 - a tag
    ACCOUNT_UNLOCK = "account:status:unlock"
    ACCOUNT_DEVICE_NEW = "account:device:new"
    ACCOUNT_PASSKEY_REGISTER = "account:passkey:register"
    ACCOUNT_PASSKEY_FAILURE = "account:passkey:failure"
    ACCOUNT_PASSKEY_CLONE = "account:passkey:clone"
    ACCOUNT_PASSKEY_DELETE = "account:passkey:delete"
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
    AuditAction.STAFF_INVITATION_CREATE: ActionInfo(
        "A staff member was invited: a pending account, a single-use link emailed (refused: "
        "outcome denied)."
    ),
    AuditAction.STAFF_INVITATION_RENEW: ActionInfo(
        "A new invitation link was emailed; the previous ones stopped working."
    ),
    AuditAction.STAFF_INVITATION_ACCEPT: ActionInfo(
        "An invitation was accepted: password set, account active, second factor awaited."
    ),
    AuditAction.STAFF_INVITATION_FAILURE: ActionInfo(
        "An unknown, used or expired invitation link (or one refused by a rate limit)."
    ),
    AuditAction.ACCOUNT_RECORD_READ: ActionInfo("An account's sealed fields were decrypted."),
    AuditAction.ACCOUNT_SIGNUP_REQUEST: ActionInfo("A sign-up was requested."),
    AuditAction.ACCOUNT_EMAIL_CONFIRM: ActionInfo("An email address was proven by its code."),
    AuditAction.ACCOUNT_EMAIL_FAILURE: ActionInfo("A wrong or expired email code."),
    AuditAction.ACCOUNT_PASSWORD_SUCCESS: ActionInfo(
        "The password was right; the second factor is awaited."
    ),
    AuditAction.ACCOUNT_LOGIN_SUCCESS: ActionInfo("A login completed with its second factor."),
    AuditAction.ACCOUNT_LOGIN_FAILURE: ActionInfo("A failed login (unknown account or password)."),
    AuditAction.ACCOUNT_LOGIN_THROTTLED: ActionInfo("A login refused by a rate limit."),
    AuditAction.ACCOUNT_SECOND_FACTOR_FAILURE: ActionInfo("A wrong second-factor code."),
    AuditAction.ACCOUNT_LOCK: ActionInfo("An account was locked."),
    AuditAction.ACCOUNT_LOGOUT: ActionInfo("A session ended by logging out."),
    AuditAction.ACCOUNT_SESSION_REVOKE: ActionInfo("A session was revoked."),
    AuditAction.ACCOUNT_TOTP_ENROL: ActionInfo("An authenticator app was enrolled."),
    AuditAction.ACCOUNT_RECOVERY_CREATE: ActionInfo("New recovery codes were issued."),
    AuditAction.ACCOUNT_RECOVERY_USE: ActionInfo("A recovery code was used."),
    AuditAction.ACCOUNT_PASSWORD_RESET_REQUEST: ActionInfo(
        "A password reset link was requested (for an unknown address: outcome failure)."
    ),
    AuditAction.ACCOUNT_PASSWORD_RESET_THROTTLED: ActionInfo(
        "A password reset step refused by a rate limit."
    ),
    AuditAction.ACCOUNT_PASSWORD_RESET_COMPLETE: ActionInfo(
        "A new password was set with a reset link; every session was revoked."
    ),
    AuditAction.ACCOUNT_PASSWORD_RESET_FAILURE: ActionInfo(
        "An unknown, used or expired password reset link."
    ),
    AuditAction.ACCOUNT_PASSWORD_CHANGE: ActionInfo(
        "The password was changed while signed in; the other sessions were revoked."
    ),
    AuditAction.ACCOUNT_PASSWORD_CHANGE_FAILURE: ActionInfo(
        "A password change refused: the current password was wrong."
    ),
    AuditAction.ACCOUNT_UNLOCK: ActionInfo("A locked account was unlocked."),
    AuditAction.ACCOUNT_DEVICE_NEW: ActionInfo(
        "A login completed from a device not seen before for the account; its owner was told."
    ),
    AuditAction.ACCOUNT_PASSKEY_REGISTER: ActionInfo(
        "A passkey (WebAuthn credential) was registered; its owner was told."
    ),
    AuditAction.ACCOUNT_PASSKEY_FAILURE: ActionInfo(
        "A passkey registration was refused (unknown, used or expired challenge, wrong origin "
        "or RP, bad attestation), or a stored passkey failed to decrypt."
    ),
    AuditAction.ACCOUNT_PASSKEY_CLONE: ActionInfo(
        "A validly signed passkey assertion whose sign count did not grow: a possible clone, "
        "refused."
    ),
    AuditAction.ACCOUNT_PASSKEY_DELETE: ActionInfo(
        "A passkey was removed from an account; its owner was told."
    ),
    AuditAction.AUDIT_LOG_SEARCH: ActionInfo("The audit log was searched."),
    AuditAction.AUDIT_LOG_VERIFY: ActionInfo("The audit log was verified."),
    AuditAction.AUDIT_PROOF_CREATE: ActionInfo("An inclusion proof was issued."),
}

READ_ACTIONS: dict[str, AuditAction] = {
    "patient": AuditAction.PATIENT_RECORD_READ,
    "staff": AuditAction.STAFF_RECORD_READ,
    "account": AuditAction.ACCOUNT_RECORD_READ,
}
"""The event the decrypt choke point records for each kind of subject whose key it opens."""


def read_action(subject_type: str) -> AuditAction:
    try:
        return READ_ACTIONS[subject_type]
    except KeyError:
        raise ValueError(f"no audit action registered for reading a {subject_type!r}") from None


def patient_visible_actions() -> list[AuditAction]:
    return [action for action, info in ACTIONS.items() if info.patient_label is not None]
