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
    PATIENT_CONTACT_UPDATE = "patient:contact:update"
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
    ACCOUNT_PATIENT_LINK_REQUEST = "account:patient-link:request"
    ACCOUNT_PATIENT_LINK_THROTTLED = "account:patient-link:throttled"
    ACCOUNT_PATIENT_LINK_CONFIRM = "account:patient-link:confirm"
    ACCOUNT_PATIENT_LINK_FAILURE = "account:patient-link:failure"
    ACCOUNT_DESK_CODE_CREATE = "account:desk-code:create"
    ACCOUNT_DEPENDENT_ADD = "account:dependent:add"
    ACCOUNT_DEPENDENT_REVOKE = "account:dependent:revoke"
    ACCOUNT_SECURITY_LOCK = "account:status:security-lock"
    STAFF_ADMINISTRATION_DENIED = "staff:administration:denied"
    ACCOUNT_STEP_UP_SUCCESS = "account:step-up:success"
    ACCOUNT_STEP_UP_FAILURE = "account:step-up:failure"
    ACCOUNT_STEP_UP_REQUIRED = "account:step-up:required"
    ACCOUNT_DELETION_REQUEST = "account:deletion:request"
    ACCOUNT_DELETION_CANCEL = "account:deletion:cancel"
    ACCOUNT_DELETION_FAILURE = "account:deletion:failure"
    ACCOUNT_DELETION_ERASE = "account:deletion:erase"
    ACCOUNT_DEVICE_EXPIRE = "account:device:expire"
    ACCESS_BREAK_GLASS_OPEN = "access:break-glass:open"
    ACCESS_BREAK_GLASS_REFUSED = "access:break-glass:refused"
    ACCESS_BREAK_GLASS_REVOKE = "access:break-glass:revoke"
    ACCESS_BREAK_GLASS_REVIEW = "access:break-glass:review"
    BREAK_GLASS_RECORD_READ = "break-glass:record:read"
    CATALOG_EXAM_CREATE = "catalog:exam:create"
    CATALOG_EXAM_UPDATE = "catalog:exam:update"
    CATALOG_ADMINISTRATION_DENIED = "catalog:administration:denied"
    SCHEDULE_SITE_UPDATE = "schedule:site:update"
    SCHEDULE_CLOSURE_ADD = "schedule:closure:add"
    SCHEDULE_CLOSURE_REMOVE = "schedule:closure:remove"
    APPOINTMENT_SLOT_HOLD = "appointment:slot:hold"
    APPOINTMENT_BOOKING_CONFIRM = "appointment:booking:confirm"
    APPOINTMENT_BOOKING_CANCEL = "appointment:booking:cancel"
    APPOINTMENT_BOOKING_RESCHEDULE = "appointment:booking:reschedule"
    APPOINTMENT_BOOKING_REFUSED = "appointment:booking:refused"
    APPOINTMENT_HOME_REQUEST = "appointment:home:request"
    APPOINTMENT_HOME_ASSIGN = "appointment:home:assign"
    APPOINTMENT_DESK_CHECK_IN = "appointment:desk:check-in"
    APPOINTMENT_DESK_NO_SHOW = "appointment:desk:no-show"
    APPOINTMENT_DESK_DONE = "appointment:desk:done"
    APPOINTMENT_DESK_WALK_IN = "appointment:desk:walk-in"
    APPOINTMENT_REMINDER_SEND = "appointment:reminder:send"
    PATIENT_IDENTITY_CHECK = "patient:identity:check"
    PATIENT_PREREGISTRATION_UPDATE = "patient:preregistration:update"
    PATIENT_DOCUMENT_UPLOAD = "patient:document:upload"
    PATIENT_DOCUMENT_READ = "patient:document:read"
    PATIENT_DOCUMENT_DELETE = "patient:document:delete"
    RETENTION_RUN_COMPLETE = "retention:run:complete"
    SECURITY_ALERT_RAISE = "security:alert:raise"
    SECURITY_ALERT_ACKNOWLEDGE = "security:alert:acknowledge"
    # The exfiltration guard's read budgets and lockout (labvault.security.budgets, .lockout).
    GUARD_BUDGET_EXCEEDED = "guard:budget:exceeded"
    GUARD_BUDGET_SET = "guard:budget:set"
    GUARD_PRINCIPAL_LOCK = "guard:principal:lock"
    # Honey records (labvault.security.honey).
    GUARD_HONEY_TOUCHED = "guard:honey:touched"
    GUARD_HONEY_PLANT = "guard:honey:plant"
    # Anomaly rules and the four-eyes unlock (labvault.security.anomalies, .unlock).
    GUARD_ANOMALY_SCAN = "guard:anomaly:scan"
    GUARD_UNLOCK_REQUEST = "guard:unlock:request"
    GUARD_UNLOCK_CANCEL = "guard:unlock:cancel"
    GUARD_PRINCIPAL_UNLOCK = "guard:principal:unlock"
    # Bulk exports with fingerprint rows (labvault.exports).
    EXPORT_CSV_CREATE = "export:csv:create"
    EXPORT_LEAK_ATTRIBUTE = "export:leak:attribute"
    AUDIT_LOG_SEARCH = "audit:log:search"
    AUDIT_LOG_VERIFY = "audit:log:verify"
    AUDIT_PROOF_CREATE = "audit:proof:create"
    KEYS_ROOT_ROTATE = "keys:root:rotate"
    KEYS_ROOT_RETIRE = "keys:root:retire"
    KEYS_ROOT_DESTROY = "keys:root:destroy"
    KEYS_REWRAP_BATCH = "keys:rewrap:batch"
    KEYS_REWRAP_COMPLETE = "keys:rewrap:complete"
    KEYS_PROVIDER_MIGRATE = "keys:provider:migrate"
    KEYS_INDEX_ROTATE = "keys:index:rotate"
    KEYS_INDEX_COMPLETE = "keys:index:complete"
    PATIENT_RECORD_ERASE = "patient:record:erase"
    PATIENT_LEGAL_HOLD_PLACE = "patient:legal-hold:place"
    PATIENT_LEGAL_HOLD_RELEASE = "patient:legal-hold:release"
    # Result intake (HL7 v2 / FHIR) and the matching queue (labvault.results.intake, .queue).
    RESULT_MESSAGE_RECEIVE = "result:message:receive"
    RESULT_MESSAGE_DUPLICATE = "result:message:duplicate"
    RESULT_MESSAGE_REJECT = "result:message:reject"
    RESULT_MESSAGE_QUEUE = "result:message:queue"
    RESULT_MESSAGE_READ = "result:message:read"
    RESULT_MESSAGE_ATTACH = "result:message:attach"
    RESULT_MESSAGE_DISCARD = "result:message:discard"
    RESULT_REPORT_CREATE = "result:report:create"
    RESULT_REPORT_UPDATE = "result:report:update"
    # The biologist's validation, release and delivery (labvault.results.review).
    RESULT_REVIEW_LIST = "result:review:list"
    RESULT_REVIEW_READ = "result:review:read"
    RESULT_REPORT_VALIDATE = "result:report:validate"
    RESULT_REPORT_REFUSED = "result:report:refused"
    RESULT_REPORT_PHONE = "result:report:phone"
    RESULT_REPORT_RELEASE = "result:report:release"
    RESULT_REPORT_NOTIFY = "result:report:notify"
    RESULT_REPORT_DELIVER = "result:report:deliver"
    RESULT_SENSITIVE_ADD = "result:sensitive-code:add"
    RESULT_SENSITIVE_REMOVE = "result:sensitive-code:remove"
    SERVICE_CLIENT_CREATE = "service:client:create"
    SERVICE_CLIENT_DISABLE = "service:client:disable"
    SERVICE_CLIENT_SECRET = "service:client:secret"  # noqa: S105 - a tag, not a secret
    SERVICE_CLIENT_PEERS = "service:client:peers"
    # The FHIR API (labvault.fhir): OAuth2 tokens and reads that open no sealed column.
    SERVICE_TOKEN_ISSUE = "service:token:issue"  # noqa: S105 - a tag, not a secret
    SERVICE_TOKEN_FAILURE = "service:token:failure"  # noqa: S105 - a tag, not a secret
    FHIR_RESOURCE_READ = "fhir:resource:read"
    FHIR_SEARCH = "fhir:search:run"
    # The patient's results and their shares (labvault.results.portal, .sharing).
    RESULT_PORTAL_READ = "result:portal:read"
    RESULT_PORTAL_DOWNLOAD = "result:portal:download"
    RESULT_SHARE_CREATE = "result:share:create"
    RESULT_SHARE_VIEW = "result:share:view"
    RESULT_SHARE_REVOKE = "result:share:revoke"
    RESULT_SHARE_FAILURE = "result:share:failure"


@dataclass(frozen=True, slots=True)
class ActionInfo:
    description: str
    patient_label: str | None = None
    """What the patient's access history says; ``None``: not shown there."""


ACTIONS: dict[AuditAction, ActionInfo] = {
    AuditAction.ACCESS_BREAK_GLASS_OPEN: ActionInfo(
        "A staff member opened a patient's file outside the relationship rule (break-glass); "
        "the purpose is the reason category.",
        "Accès exceptionnel à votre dossier (bris de glace)",
    ),
    AuditAction.ACCESS_BREAK_GLASS_REFUSED: ActionInfo(
        "A break-glass request was refused (no single matching patient, bad input or role)."
    ),
    AuditAction.ACCESS_BREAK_GLASS_REVOKE: ActionInfo("A break-glass grant was ended early."),
    AuditAction.ACCESS_BREAK_GLASS_REVIEW: ActionInfo(
        "A security officer reviewed a break-glass grant; the purpose is the outcome."
    ),
    AuditAction.BREAK_GLASS_RECORD_READ: ActionInfo(
        "A break-glass grant's sealed justification was decrypted."
    ),
    AuditAction.SECURITY_ALERT_RAISE: ActionInfo("A security alert was raised."),
    AuditAction.SECURITY_ALERT_ACKNOWLEDGE: ActionInfo("A security officer acknowledged an alert."),
    AuditAction.GUARD_BUDGET_EXCEEDED: ActionInfo(
        "A read was refused before any decryption: the principal would have opened more "
        "distinct patients than its read budget allows (purpose: the window, e.g. 1h)."
    ),
    AuditAction.GUARD_BUDGET_SET: ActionInfo(
        "An operator set or cleared an organization's read budget for a principal kind and "
        "role (purpose: the principal kind and role)."
    ),
    AuditAction.GUARD_HONEY_TOUCHED: ActionInfo(
        "A decrypt request named a honey record (a planted synthetic patient no legitimate "
        "view shows): refused before any decryption, the principal locked (target: the "
        "honey record; actor: who asked)."
    ),
    AuditAction.GUARD_HONEY_PLANT: ActionInfo(
        "Honey records were planted (target: the honey set, which names no record)."
    ),
    AuditAction.GUARD_PRINCIPAL_LOCK: ActionInfo(
        "The exfiltration guard locked a principal (account or service client) and revoked "
        "its sessions or tokens (purpose: why, e.g. read-budget or honey-record)."
    ),
    AuditAction.GUARD_ANOMALY_SCAN: ActionInfo(
        "The anomaly rules read the audit log (purpose: the rules run); findings raise "
        "alerts of their own."
    ),
    AuditAction.GUARD_UNLOCK_REQUEST: ActionInfo(
        "A security officer asked to unlock a principal locked by a security decision "
        "(purpose: the reason; denied: the same officer approving, or no such lock)."
    ),
    AuditAction.GUARD_UNLOCK_CANCEL: ActionInfo(
        "A pending four-eyes unlock request was withdrawn."
    ),
    AuditAction.GUARD_PRINCIPAL_UNLOCK: ActionInfo(
        "A second security officer approved an unlock request: the principal may sign in "
        "(or get tokens) again (purpose: the request's reason)."
    ),
    AuditAction.EXPORT_CSV_CREATE: ActionInfo(
        "A staff member exported a list as CSV after a step-up (target: the export record; "
        "purpose: the kind of export); its rows were read and audited as usual."
    ),
    AuditAction.EXPORT_LEAK_ATTRIBUTE: ActionInfo(
        "An operator matched a leaked file to an export by its fingerprint rows (target: "
        "the export found)."
    ),
    AuditAction.PATIENT_RECORD_CREATE: ActionInfo(
        "A patient record was created.", "Création de votre dossier"
    ),
    AuditAction.PATIENT_RECORD_READ: ActionInfo(
        "A patient record was decrypted and read.", "Consultation de votre dossier"
    ),
    AuditAction.PATIENT_CONTACT_UPDATE: ActionInfo(
        "A patient's contact details were changed.", "Modification de vos coordonnées"
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
    AuditAction.ACCOUNT_PATIENT_LINK_REQUEST: ActionInfo(
        "A patient account asked to link a Patient record (its own or a minor's) by identity "
        "traits and NIR; outcome failure when no code was sent (no record, traits not "
        "matching, already linked, no email on the record)."
    ),
    AuditAction.ACCOUNT_PATIENT_LINK_THROTTLED: ActionInfo(
        "A record-link step refused by a rate limit, before any lookup."
    ),
    AuditAction.ACCOUNT_PATIENT_LINK_CONFIRM: ActionInfo(
        "A Patient record was linked to its owner's account (right code from the contact on "
        "file, or at the lab desk: the actor says which).",
        "Rattachement de votre dossier à votre compte en ligne",
    ),
    AuditAction.ACCOUNT_PATIENT_LINK_FAILURE: ActionInfo(
        "A record link refused: wrong, used or expired code, unknown account or record, a "
        "record no longer linkable, or a staff member without the role (outcome denied)."
    ),
    AuditAction.ACCOUNT_DESK_CODE_CREATE: ActionInfo(
        "A patient account was given a short code to link a record at the lab desk."
    ),
    AuditAction.ACCOUNT_DEPENDENT_ADD: ActionInfo(
        "A guardian account may now act for a minor's record (code from the contact on file, "
        "or documents seen at the lab desk).",
        "Rattachement de votre dossier au compte en ligne d'un parent ou représentant légal",
    ),
    AuditAction.ACCOUNT_DEPENDENT_REVOKE: ActionInfo(
        "A guardian account stopped acting for a minor's record (by the guardian or the lab).",
        "Fin du rattachement de votre dossier au compte d'un parent ou représentant légal",
    ),
    AuditAction.ACCOUNT_SECURITY_LOCK: ActionInfo(
        "An account was locked by a security decision (a security officer or an automatic "
        "guard); only an admin unlocks it (refused: outcome denied)."
    ),
    AuditAction.STAFF_ADMINISTRATION_DENIED: ActionInfo(
        "A signed-in principal that is not an organization admin asked for a staff "
        "administration page or API route (answered 404)."
    ),
    AuditAction.ACCOUNT_STEP_UP_SUCCESS: ActionInfo(
        "A signed-in session re-proved a second factor (step-up) to open sensitive actions."
    ),
    AuditAction.ACCOUNT_STEP_UP_FAILURE: ActionInfo(
        "A step-up re-proof was refused (wrong, replayed or expired code, method not offered, "
        "passkey assertion not valid)."
    ),
    AuditAction.ACCOUNT_STEP_UP_REQUIRED: ActionInfo(
        "A sensitive action was refused: the session had no recent step-up."
    ),
    AuditAction.ACCOUNT_DELETION_REQUEST: ActionInfo(
        "A patient asked for the deletion of their account: status closing, every session "
        "revoked, a cancel link emailed."
    ),
    AuditAction.ACCOUNT_DELETION_CANCEL: ActionInfo(
        "A deletion request was cancelled with its emailed link; the account is active again."
    ),
    AuditAction.ACCOUNT_DELETION_FAILURE: ActionInfo(
        "An unknown, used or expired deletion-cancel link."
    ),
    AuditAction.ACCOUNT_DELETION_ERASE: ActionInfo(
        "An account was erased with its data key (crypto-shredding): its deletion grace "
        "period ended (its own Patient record is erased too unless a legal hold keeps it), or "
        "the Patient record it was the account of was erased."
    ),
    AuditAction.ACCOUNT_DEVICE_EXPIRE: ActionInfo(
        "Devices of an account not seen for LABVAULT_KNOWN_DEVICE_RETENTION_DAYS were forgotten "
        "by the retention job (one event per account, whatever the number of devices)."
    ),
    AuditAction.AUDIT_LOG_SEARCH: ActionInfo("The audit log was searched."),
    AuditAction.AUDIT_LOG_VERIFY: ActionInfo("The audit log was verified."),
    AuditAction.AUDIT_PROOF_CREATE: ActionInfo("An inclusion proof was issued."),
    AuditAction.KEYS_ROOT_ROTATE: ActionInfo(
        "A new root key version was created; new wraps use it (no key material in the event)."
    ),
    AuditAction.KEYS_ROOT_RETIRE: ActionInfo(
        "Root key versions older than the active one were retired: nothing wrapped under "
        "them, backups included, opens any more."
    ),
    AuditAction.KEYS_ROOT_DESTROY: ActionInfo(
        "Retired root key versions were destroyed in the key provider (Transit trim): no "
        "operator can make them unwrap again."
    ),
    AuditAction.KEYS_REWRAP_BATCH: ActionInfo(
        "A batch of wrapped keys was rewrapped under the active root key version (counts only)."
    ),
    AuditAction.KEYS_REWRAP_COMPLETE: ActionInfo(
        "Every wrapped key is under the active root key version."
    ),
    AuditAction.KEYS_PROVIDER_MIGRATE: ActionInfo(
        "Wrapped keys were moved from one key provider to another (counts only)."
    ),
    AuditAction.KEYS_INDEX_ROTATE: ActionInfo(
        "A new generation of blind-index keys was created; indexes are being recomputed."
    ),
    AuditAction.KEYS_INDEX_COMPLETE: ActionInfo(
        "Every blind index was recomputed under the new index keys; the old ones are destroyed."
    ),
    AuditAction.PATIENT_RECORD_ERASE: ActionInfo(
        "A patient record was erased: its data key was destroyed (crypto-shredding); a "
        "tombstone and the audit trail remain.",
        "Effacement de votre dossier",
    ),
    AuditAction.PATIENT_LEGAL_HOLD_PLACE: ActionInfo(
        "A legal hold was placed on a patient record: it cannot be erased until it ends.",
        "Conservation légale de votre dossier",
    ),
    AuditAction.PATIENT_LEGAL_HOLD_RELEASE: ActionInfo(
        "A legal hold on a patient record was released.",
        "Fin de conservation légale de votre dossier",
    ),
    AuditAction.CATALOG_EXAM_CREATE: ActionInfo("An exam was added to the organization's catalog."),
    AuditAction.CATALOG_EXAM_UPDATE: ActionInfo(
        "A catalog exam was changed (label, LOINC, duration, preparation rules or activity)."
    ),
    AuditAction.CATALOG_ADMINISTRATION_DENIED: ActionInfo(
        "A principal that is not an organization admin tried to change the exam catalog or a "
        "site's schedule or closures; nothing was changed."
    ),
    AuditAction.SCHEDULE_SITE_UPDATE: ActionInfo(
        "A site's schedule was set: opening hours, slot length, sampling and walk-in boxes."
    ),
    AuditAction.SCHEDULE_CLOSURE_ADD: ActionInfo("A closure (date range) was added to a site."),
    AuditAction.SCHEDULE_CLOSURE_REMOVE: ActionInfo("A site's closure was removed."),
    AuditAction.APPOINTMENT_SLOT_HOLD: ActionInfo(
        "A slot was held for a patient while the booking form is finished.",
        "Créneau réservé temporairement",
    ),
    AuditAction.APPOINTMENT_BOOKING_CONFIRM: ActionInfo(
        "An appointment was booked (a hold confirmed).", "Rendez-vous pris"
    ),
    AuditAction.APPOINTMENT_BOOKING_CANCEL: ActionInfo(
        "An appointment (or a hold) was cancelled.", "Rendez-vous annulé"
    ),
    AuditAction.APPOINTMENT_BOOKING_RESCHEDULE: ActionInfo(
        "An appointment was moved to another slot.", "Rendez-vous déplacé"
    ),
    AuditAction.APPOINTMENT_BOOKING_REFUSED: ActionInfo(
        "A booking, change or cancellation was refused (slot taken, deadline passed, not "
        "allowed); nothing was changed."
    ),
    AuditAction.APPOINTMENT_HOME_REQUEST: ActionInfo(
        "A home sampling visit was requested.", "Demande de prélèvement à domicile"
    ),
    AuditAction.APPOINTMENT_HOME_ASSIGN: ActionInfo(
        "A home sampling visit was assigned to a sampler.",
        "Préleveur affecté à votre prélèvement à domicile",
    ),
    AuditAction.APPOINTMENT_DESK_CHECK_IN: ActionInfo(
        "A patient was checked in at the desk.", "Arrivée enregistrée à l'accueil"
    ),
    AuditAction.APPOINTMENT_DESK_NO_SHOW: ActionInfo(
        "An appointment was marked as missed.", "Rendez-vous noté comme manqué"
    ),
    AuditAction.APPOINTMENT_DESK_DONE: ActionInfo(
        "A sampling visit was marked as done.", "Prélèvement effectué"
    ),
    AuditAction.APPOINTMENT_DESK_WALK_IN: ActionInfo(
        "A patient without appointment was registered at the desk.",
        "Passage sans rendez-vous enregistré",
    ),
    AuditAction.APPOINTMENT_REMINDER_SEND: ActionInfo(
        "An appointment reminder was sent (email and/or SMS; no health data in it).",
        "Rappel de rendez-vous envoyé",
    ),
    AuditAction.PATIENT_IDENTITY_CHECK: ActionInfo(
        "An identity document was checked at the desk; the identity status was raised.",
        "Vérification de votre pièce d'identité à l'accueil",
    ),
    AuditAction.PATIENT_PREREGISTRATION_UPDATE: ActionInfo(
        "A pre-registration (identity traits, insurance, third-party payment) was saved.",
        "Pré-enregistrement complété",
    ),
    AuditAction.PATIENT_DOCUMENT_UPLOAD: ActionInfo(
        "A document (prescription) was uploaded, with the patient's consent to share it.",
        "Ordonnance déposée",
    ),
    AuditAction.PATIENT_DOCUMENT_READ: ActionInfo(
        "A document (prescription) was opened.", "Consultation de votre ordonnance"
    ),
    AuditAction.PATIENT_DOCUMENT_DELETE: ActionInfo(
        "A document (prescription) was deleted (by the patient or at the end of its retention).",
        "Ordonnance supprimée",
    ),
    AuditAction.RETENTION_RUN_COMPLETE: ActionInfo(
        "The retention job ran: counts of holds, documents, pre-registrations and appointments "
        "purged or anonymised (no personal data in the event)."
    ),
    # Result intake and the matching queue (labvault.results.intake, .queue).
    AuditAction.RESULT_MESSAGE_RECEIVE: ActionInfo(
        "A result message from a laboratory system was received (target: the message id)."
    ),
    AuditAction.RESULT_MESSAGE_DUPLICATE: ActionInfo(
        "A result message already received came again; nothing was changed."
    ),
    AuditAction.RESULT_MESSAGE_REJECT: ActionInfo(
        "A result message was refused: unknown or disabled sending system (outcome denied)."
    ),
    AuditAction.RESULT_MESSAGE_QUEUE: ActionInfo(
        "A result message matched no patient with certainty and waits in the matching queue "
        "(purpose: the reason code)."
    ),
    AuditAction.RESULT_MESSAGE_READ: ActionInfo(
        "A queued result message was decrypted (matching queue)."
    ),
    AuditAction.RESULT_MESSAGE_ATTACH: ActionInfo(
        "A queued result message was attached to a patient by a person.",
        "Résultats d'analyses rattachés à votre dossier",
    ),
    AuditAction.RESULT_MESSAGE_DISCARD: ActionInfo(
        "A queued result message was discarded; its data key was destroyed."
    ),
    AuditAction.RESULT_REPORT_CREATE: ActionInfo(
        "Results were received from the laboratory system and stored in a patient's file.",
        "Réception de vos résultats d'analyses",
    ),
    AuditAction.RESULT_REPORT_UPDATE: ActionInfo(
        "A report was updated by a new message of the laboratory system (complement or "
        "correction).",
        "Mise à jour de vos résultats d'analyses",
    ),
    # The biologist's validation, release and delivery (labvault.results.review).
    AuditAction.RESULT_REVIEW_LIST: ActionInfo(
        "A biologist listed the reports to validate (no target: the list shows its own rows)."
    ),
    AuditAction.RESULT_REVIEW_READ: ActionInfo(
        "A biologist opened a report to validate it (values, ranges, previous values).",
        "Consultation de vos résultats par un biologiste",
    ),
    AuditAction.RESULT_REPORT_VALIDATE: ActionInfo(
        "A biologist validated a report (after a fresh step-up).",
        "Validation de vos résultats par un biologiste",
    ),
    AuditAction.RESULT_REPORT_REFUSED: ActionInfo(
        "A validation or a phone call record was refused (the report changed meanwhile, or "
        "is not in that state); nothing was changed."
    ),
    AuditAction.RESULT_REPORT_PHONE: ActionInfo(
        "A biologist recorded that a sensitive result was given by phone.",
        "Vos résultats vous ont été communiqués par téléphone",
    ),
    AuditAction.RESULT_REPORT_RELEASE: ActionInfo(
        "A validated report was released: visible to the patient.",
        "Vos résultats sont disponibles",
    ),
    AuditAction.RESULT_REPORT_NOTIFY: ActionInfo(
        "The patient was emailed that a document is available (no health data in it).",
        "Avis de mise à disposition de vos résultats envoyé",
    ),
    AuditAction.RESULT_REPORT_DELIVER: ActionInfo(
        "A released report was handed to the prescriber's delivery channel.",
        "Vos résultats ont été transmis à votre prescripteur",
    ),
    AuditAction.RESULT_SENSITIVE_ADD: ActionInfo(
        "An exam code was added to the sensitive exams (given by phone, never online first)."
    ),
    AuditAction.RESULT_SENSITIVE_REMOVE: ActionInfo(
        "An exam code was removed from the sensitive exams."
    ),
    AuditAction.SERVICE_CLIENT_CREATE: ActionInfo("A sending system (service client) was added."),
    AuditAction.SERVICE_CLIENT_DISABLE: ActionInfo(
        "A sending system (service client) was disabled."
    ),
    AuditAction.SERVICE_CLIENT_SECRET: ActionInfo(
        "A new OAuth2 client secret was issued to a service client (shown once)."
    ),
    AuditAction.SERVICE_CLIENT_PEERS: ActionInfo(
        "The network addresses a sending system's MLLP connections may come from were set."
    ),
    # The FHIR API (labvault.fhir).
    AuditAction.SERVICE_TOKEN_ISSUE: ActionInfo(
        "A service client obtained an access token for the FHIR API (target: the client; "
        "purpose: the scopes granted are in the token row, not here)."
    ),
    AuditAction.SERVICE_TOKEN_FAILURE: ActionInfo(
        "A token request was refused: unknown client, wrong secret, disabled client, bad "
        "scope or too many attempts (purpose: the OAuth2 error code)."
    ),
    AuditAction.FHIR_RESOURCE_READ: ActionInfo(
        "A laboratory system read an item of a patient's file through the FHIR API "
        "(purpose: the resource type).",
        "Consultation de votre dossier par un logiciel du laboratoire",
    ),
    AuditAction.FHIR_SEARCH: ActionInfo(
        "A laboratory system ran a FHIR search (purpose: the resource type; no criterion)."
    ),
    # The patient's results and their shares (labvault.results.portal, .sharing).
    AuditAction.RESULT_PORTAL_READ: ActionInfo(
        "A patient account opened a released report in the portal (target: the report; "
        "refused: outcome denied, for an absent, unreleased or foreign report)."
    ),
    AuditAction.RESULT_PORTAL_DOWNLOAD: ActionInfo(
        "A patient account downloaded a released report's PDF (target: the report)."
    ),
    AuditAction.RESULT_SHARE_CREATE: ActionInfo(
        "A patient shared one released report with a doctor: a time-limited link, shown once "
        "(target: the patient record; the recipient's name is sealed).",
        "Partage d'un compte rendu avec un médecin",
    ),
    AuditAction.RESULT_SHARE_VIEW: ActionInfo(
        "A shared report was opened with its link (actor: the share; target: the record).",
        "Consultation d'un compte rendu partagé, avec le lien que vous avez donné",
    ),
    AuditAction.RESULT_SHARE_REVOKE: ActionInfo(
        "A patient ended a share of a report before its expiry.",
        "Fin d'un partage de compte rendu",
    ),
    AuditAction.RESULT_SHARE_FAILURE: ActionInfo(
        "A share link that is unknown, expired or revoked was tried, or refused by a rate "
        "limit (target: the share when known)."
    ),
}

READ_ACTIONS: dict[str, AuditAction] = {
    "patient": AuditAction.PATIENT_RECORD_READ,
    "break-glass": AuditAction.BREAK_GLASS_RECORD_READ,
    "staff": AuditAction.STAFF_RECORD_READ,
    "account": AuditAction.ACCOUNT_RECORD_READ,
    "result-message": AuditAction.RESULT_MESSAGE_READ,
}
"""The event the decrypt choke point records for each kind of subject whose key it opens."""


def read_action(subject_type: str) -> AuditAction:
    try:
        return READ_ACTIONS[subject_type]
    except KeyError:
        raise ValueError(f"no audit action registered for reading a {subject_type!r}") from None


def patient_visible_actions() -> list[AuditAction]:
    return [action for action, info in ACTIONS.items() if info.patient_label is not None]
