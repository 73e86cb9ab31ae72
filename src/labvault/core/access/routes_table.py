"""Every route of the application and who may use it: the table reviewers read.

One entry per ``"<METHOD> <path template>"`` exactly as FastAPI lists it in ``app.routes``
(``HEAD`` is folded into ``GET``; a mounted app is ``"MOUNT <path>"``). The entry says what
the route requires before it answers anything but its refusal:

- :func:`public`: anonymous flows (sign-up, login and its second factor, password reset,
  invitations, static files). Their protections are rate limits and uniform answers, not
  access control.
- :func:`account`: a fully signed-in account acting on itself (its sessions, factors,
  links, its own closure), optionally only accounts of some kinds (``patient``/``staff``).
- :func:`roles`: staff of the named roles only (e.g. ``organization_admin`` for the
  staff administration); everybody else gets the route's refusal (404 by default: the
  answer of an address that does not exist, I7).
- :func:`policy`: an interaction of the access policy (``core/access/data/policy.toml``)
  on a resource, e.g. ``patient:read``, on the object named by ``object_from``
  (``"path:<name>"``, ``"body:<name>"`` or ``"query:<name>"``). The caller gets 2xx
  exactly when its compiled policy grants the interaction *and* the object is in its
  record scope (own records, the relationship with its sites, break-glass), else 404.
- :func:`service`: the FHIR API (``labvault.fhir``): a service client's bearer token (a
  session cookie counts for nothing: 401 with ``WWW-Authenticate``) carrying the SMART
  ``scope`` named (else 403), then the access policy of its kind and its sites'
  relationship, as for ``policy`` entries (else 404, or an empty search).

``tests/integration/test_authorization_matrix.py`` is generated from this table and the
application's routes: a route without an entry fails the suite, an entry without a route
too, and every ``policy`` and ``roles`` entry is exercised for every role. Adding a route
means adding its line here, in the same change.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from labvault.core.access.policies import RESOURCES, STAFF_SUBJECTS, Interaction

__all__ = [
    "ROUTES",
    "Requirement",
    "RouteAccess",
    "account",
    "policy",
    "public",
    "roles",
    "route_keys",
]


class Requirement(enum.StrEnum):
    PUBLIC = "public"
    ACCOUNT = "account"
    ROLES = "roles"
    POLICY = "policy"
    SERVICE = "service"


ACCOUNT_KINDS = frozenset({"patient", "staff"})


@dataclass(frozen=True, slots=True)
class RouteAccess:
    requirement: Requirement
    account_kinds: frozenset[str] = ACCOUNT_KINDS
    """Which kinds of signed-in accounts may call it (``account`` and ``policy`` entries)."""
    roles: frozenset[str] = frozenset()
    """``roles``: the staff roles allowed. ``policy``: an extra restriction to these roles
    (empty: whoever the policy grants)."""
    resource: str | None = None
    interaction: Interaction | None = None
    object_from: str | None = None
    """Where the object's id comes from: ``path:<name>``, ``body:<name>`` or ``query:<name>``."""
    refusal: int = 404
    """What a signed-in caller without the requirement gets."""
    needs_fields: frozenset[str] = frozenset()
    """``policy``: fields the interaction must reveal to the caller (e.g. the NIR's);
    ``<resource>.<field>``: a field the caller's read of another resource must reveal."""
    note: str = ""
    scope: str | None = None
    """``service``: the SMART scope the bearer token must carry (``system/Patient.r``)."""

    def __post_init__(self) -> None:
        if not self.account_kinds <= ACCOUNT_KINDS:
            raise ValueError(f"unknown account kinds {sorted(self.account_kinds)}")
        if not self.roles <= STAFF_SUBJECTS:
            raise ValueError(f"unknown roles {sorted(self.roles - STAFF_SUBJECTS)}")
        if self.requirement is Requirement.ROLES and not self.roles:
            raise ValueError("a roles entry names its roles")
        if self.requirement is Requirement.POLICY and (
            self.resource not in RESOURCES or self.interaction is None
        ):
            raise ValueError(f"a policy entry names a known resource, not {self.resource!r}")
        if self.requirement is Requirement.SERVICE and not (
            self.scope and self.scope.startswith("system/") and self.account_kinds == frozenset()
        ):
            raise ValueError("a service entry names its SMART scope and no account kind")
        if self.object_from is not None:
            where, _, name = self.object_from.partition(":")
            if where not in ("path", "body", "query") or not name:
                raise ValueError(
                    f"object_from is path:/body:/query:<name>, not {self.object_from!r}"
                )

    @property
    def object_param(self) -> str | None:
        """The name of the parameter carrying the object's id, if any."""
        return None if self.object_from is None else self.object_from.partition(":")[2]

    def __str__(self) -> str:
        match self.requirement:
            case Requirement.PUBLIC:
                return "public"
            case Requirement.ACCOUNT:
                return f"account({'/'.join(sorted(self.account_kinds))})"
            case Requirement.ROLES:
                return f"roles({', '.join(sorted(self.roles))})"
            case Requirement.POLICY:
                return f"{self.resource}:{self.interaction} on {self.object_from or '-'}"
            case Requirement.SERVICE:
                return f"service({self.scope}) on {self.object_from or '-'}"


def public(note: str = "") -> RouteAccess:
    return RouteAccess(Requirement.PUBLIC, account_kinds=frozenset(), note=note)


def account(
    *kinds: str, object_from: str | None = None, refusal: int = 404, note: str = ""
) -> RouteAccess:
    return RouteAccess(
        Requirement.ACCOUNT,
        account_kinds=frozenset(kinds) or ACCOUNT_KINDS,
        object_from=object_from,
        refusal=refusal,
        note=note,
    )


def roles(
    *names: str, object_from: str | None = None, refusal: int = 404, note: str = ""
) -> RouteAccess:
    return RouteAccess(
        Requirement.ROLES,
        account_kinds=frozenset({"staff"}),
        roles=frozenset(names),
        object_from=object_from,
        refusal=refusal,
        note=note,
    )


def policy(
    requirement: str,
    *,
    object_from: str | None = None,
    kinds: Iterable[str] = ACCOUNT_KINDS,
    only_roles: Iterable[str] = (),
    needs_fields: Iterable[str] = (),
    note: str = "",
) -> RouteAccess:
    """``policy("patient:read", object_from="path:patient_id")``."""
    resource, _, interaction = requirement.partition(":")
    return RouteAccess(
        Requirement.POLICY,
        account_kinds=frozenset(kinds),
        roles=frozenset(only_roles),
        resource=resource,
        interaction=Interaction(interaction),
        object_from=object_from,
        needs_fields=frozenset(needs_fields),
        note=note,
    )


def service(
    scope: str,
    *,
    resource: str | None = None,
    interaction: str | None = None,
    object_from: str | None = None,
    note: str = "",
) -> RouteAccess:
    """``service("system/Patient.r", resource="patient", interaction="read")``: a bearer
    token with the scope, then the policy's interaction (if any) for the client's kind."""
    return RouteAccess(
        Requirement.SERVICE,
        account_kinds=frozenset(),
        scope=scope,
        resource=resource,
        interaction=None if interaction is None else Interaction(interaction),
        object_from=object_from,
        refusal=401,
        note=note,
    )


_SIGN_IN = public("login steps: the pending session, rate limits, one answer for all")
_RESET = public("password reset: one answer whatever the address")
_PASSKEY_LOGIN = public("passkey login: one answer for unknown credentials")
_INVITATION = public("staff invitation: the token is the credential")
_ENROLMENT = public("first factor of an invited staff member: its pending enrolment")
_SELF = account()
_PATIENT_SELF = account("patient")
_PATIENT_SELF_API = account("patient", refusal=403, note="other kinds: 403, not a patient account")
_ADMIN = roles("organization_admin", note="staff administration")
_CONFIG = roles("organization_admin", note="exam catalog and site schedules")
_CONFIG_EXAM = roles("organization_admin", object_from="path:exam_id", note="its catalog's exams")
_CONFIG_SITE = roles(
    "organization_admin", object_from="path:site_id", note="its organization's sites"
)
_OWN_BOOKING = account(
    "patient",
    object_from="body:patient_id",
    note="appointment:create on its own record or a dependent's (the service's audited 404)",
)
# Both kinds on paper: a GET of an account("patient") entry is asked without its object by
# the matrix; the page itself answers staff with the 404 of an unknown appointment.
_OWN_APPOINTMENT = account(
    object_from="path:appointment_id",
    note="patient accounts only, on appointments of their own records or dependents' "
    "(anything else, staff included: the same 404 page)",
)
# Mirrors labvault.security.breakglass.BREAK_GLASS_ROLES (the matrix test checks they agree).
BREAK_GLASS_ROLES = ("receptionist", "biologist")
_BREAK_GLASS = roles(
    *BREAK_GLASS_ROLES,
    object_from="body:nir",
    note="outside the relationship rule: reason, justification, alert, review",
)
_OFFICER = roles("security_officer", note="the security review: no health data")
# The lab desk (labvault.desk): the service applies the policy on the appointment's patient
# (appointment:read/update, patient:update for the identity check) at the caller's sites.
# Its API on one appointment is a policy entry restricted to the desk roles (desk roles AND
# the policy); its listings and forms (body:appointment_id) stay roles entries.
_DESK_STAFF = roles(
    "receptionist",
    "sampler",
    note="the desk: the caller's sites, the patients in its scope (a sampler: today's)",
)
# The desk's API on one appointment: desk roles AND the policy, which a policy entry with
# only_roles states (the matrix asks every role about appointments in and out of scope).
_DESK_STAFF_APPOINTMENT = policy(
    "appointment:update",
    object_from="path:appointment_id",
    kinds=("staff",),
    only_roles=("receptionist", "sampler"),
    note="desk staff; also: at one of the caller's sites, not a hold (else the same 404)",
)
_DESK_STAFF_FORM = roles(
    "receptionist",
    "sampler",
    object_from="body:appointment_id",
    note="appointment:update on the appointment's patient, at the caller's sites",
)
_RECEPTION = roles("receptionist", note="the desk's receptionists")
_DESK = roles(
    "receptionist",
    object_from="body:patient_id",
    note="the lab desk: also needs the patient in the receptionist's relationship scope",
)

# Pre-registration and documents (labvault.preregistration): the service applies the policy
# on the object's patient (appointment:read/update, prescription:read/create) and answers
# anything else with the same 404. API routes are policy entries on the appointment or the
# document; the pages' entries below stay account entries.
_PREREGISTRATION_OWN = account(
    "patient",
    object_from="path:appointment_id",
    note="appointment:update / prescription:create on the appointment's patient (own or "
    "dependent), appointment held or booked",
)
_PREREGISTRATION_READ = policy(
    "appointment:read",
    object_from="path:appointment_id",
    needs_fields=("patient.ins_number",),
    note="it carries the NIR: only callers whose patient:read reveals it (not the sampler)",
)
_DOCUMENT_READ = policy(
    "prescription:read", object_from="path:document_id", note="the document's patient"
)
_DOCUMENT_DELETE = policy(
    "prescription:create",
    object_from="path:document_id",
    kinds=("patient",),
    note="the patient account (own, dependents)",
)

# A patient's results (labvault.results.portal): the service applies result:read (own
# records, dependents) to released reports only; anything else is the same 404 page.
_OWN_RESULT = account(
    object_from="path:report_id",
    note="patient accounts only, result:read on a released report of their own records or "
    "dependents' (anything else, staff included: the same 404 page)",
)
# The biologist's review of results (labvault.results.review): result:update on the report's
# patient, in the relationship scope of the biologist's sites.
_BIOLOGIST = roles(
    "biologist", note="result:update: reports of patients in the caller's relationship scope"
)
_BIOLOGIST_REPORT = roles(
    "biologist",
    object_from="path:report_id",
    note="result:update on the report's patient (relationship scope; else the same 404)",
)
_BIOLOGIST_VALIDATION = roles(
    "biologist",
    object_from="path:report_id",
    note="result:update on the report's patient; also a fresh step-up; 409 if the report "
    "changed since the version named or is not in that state (nothing written)",
)
# The matching queue of received results (labvault.results.queue_pages).
_MATCHING_QUEUE = roles(
    "biologist",
    "receptionist",
    note="reason and time only: nothing decrypted; only messages of sending systems serving "
    "the caller's sites",
)
_MATCHING_MESSAGE = roles(
    "biologist",
    "receptionist",
    object_from="path:message_id",
    note="a queued message of a sending system serving the caller's sites (opening it is "
    "audited; a receptionist sees the claimed identity only, the orders need result read); "
    "attaching checks the chosen record is in the caller's relationship scope; discarding "
    "needs a reason from a closed list and a fresh step-up; unknown, handled or another "
    "site's: the same 404",
)
_SHARE_LINK = public(
    "a patient's share link: the 256-bit token is the credential; unknown, expired or revoked: "
    "one 404; failures and views rate-limited per client"
)

# The FHIR API (labvault.fhir.routes): bearer tokens of service clients, SMART scopes, then
# the policy of the client's kind on the patients in care at its sites. Sites and schedules
# hold no personal data: the scope is their only requirement.
_FHIR_POLICY: Mapping[str, tuple[str | None, str]] = {
    "Patient": ("patient", "search"),
    "Location": (None, ""),
    "Schedule": (None, ""),
    "Slot": (None, ""),
    "Appointment": ("appointment", "read"),
    "ServiceRequest": ("result", "read"),
    "DiagnosticReport": ("result", "read"),
    "Observation": ("result", "read"),
    "DocumentReference": ("result", "read"),
}


def _fhir_routes() -> dict[str, RouteAccess]:
    routes: dict[str, RouteAccess] = {
        "GET /fhir/R4/metadata": public("the CapabilityStatement: no data"),
        "POST /fhir/R4/auth/token": public(
            "OAuth2 client credentials: rate limits, one invalid_client for every failure"
        ),
        "POST /fhir/R4": service(
            "system/DiagnosticReport.c",
            resource="result",
            interaction="create",
            note="results pushed by a laboratory system; also system/Observation.c",
        ),
        **{
            f"{method} /fhir/R4/{{path:path}}": public(
                "any other FHIR path: an OperationOutcome 404"
            )
            for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
        },
    }
    for kind, (resource, search) in _FHIR_POLICY.items():
        read = "read" if resource else None
        routes[f"GET /fhir/R4/{kind}/{{resource_id}}"] = service(
            f"system/{kind}.r", resource=resource, interaction=read, object_from="path:resource_id"
        )
        for key in (f"GET /fhir/R4/{kind}", f"POST /fhir/R4/{kind}/_search"):
            routes[key] = service(f"system/{kind}.s", resource=resource, interaction=search or None)
    return routes


ROUTES: Mapping[str, RouteAccess] = MappingProxyType(
    {
        **_fhir_routes(),
        # --- operations and static files ------------------------------------------------
        "GET /": public("home page"),
        "GET /api/v1/health": public("liveness: no data"),
        "GET /api/v1/openapi.json": public("the API's schema"),
        "MOUNT /static": public("CSS, images, the passkey script"),
        # --- patient sign-up and login (API) --------------------------------------------
        "POST /api/v1/auth/signup": public("sign-up: one answer whatever the address"),
        "POST /api/v1/auth/signup/confirm": public("address proof by code"),
        "POST /api/v1/auth/login": _SIGN_IN,
        "POST /api/v1/auth/login/email-code": _SIGN_IN,
        "POST /api/v1/auth/login/second-factor": _SIGN_IN,
        "POST /api/v1/auth/password-reset": _RESET,
        "POST /api/v1/auth/password-reset/complete": _RESET,
        "POST /api/v1/auth/webauthn/authentication/options": _PASSKEY_LOGIN,
        "POST /api/v1/auth/webauthn/authentication": _PASSKEY_LOGIN,
        # --- an account on itself (API) -------------------------------------------------
        "GET /api/v1/auth/me": _SELF,
        "POST /api/v1/auth/logout": _SELF,
        "POST /api/v1/auth/password": _SELF,
        "GET /api/v1/auth/sessions": _SELF,
        "DELETE /api/v1/auth/sessions/{session_id}": account(
            object_from="path:session_id", note="only the account's own sessions"
        ),
        "POST /api/v1/auth/totp": _SELF,
        "POST /api/v1/auth/totp/confirm": _SELF,
        "POST /api/v1/auth/recovery-codes": _SELF,
        "POST /api/v1/auth/webauthn/registration/options": _SELF,
        "POST /api/v1/auth/webauthn/registration": _SELF,
        "GET /api/v1/auth/webauthn/credentials": _SELF,
        "DELETE /api/v1/auth/webauthn/credentials/{passkey_id}": account(
            object_from="path:passkey_id", note="only the account's own passkeys"
        ),
        "GET /api/v1/auth/step-up": _SELF,
        "POST /api/v1/auth/step-up/email-code": _SELF,
        "POST /api/v1/auth/step-up": _SELF,
        "POST /api/v1/auth/step-up/passkey/options": _SELF,
        "POST /api/v1/auth/step-up/passkey": _SELF,
        "POST /api/v1/auth/account/deletion": account(
            "patient", refusal=403, note="staff get 403 staff-account: closed by their admin"
        ),
        "POST /api/v1/auth/account/deletion/cancel": public("the emailed token is the credential"),
        # --- staff login and enrolment (API) --------------------------------------------
        "POST /api/v1/auth/invitation/accept": _INVITATION,
        "POST /api/v1/auth/staff/login": _SIGN_IN,
        "POST /api/v1/auth/enrolment/totp": _ENROLMENT,
        "POST /api/v1/auth/enrolment/email-code": _ENROLMENT,
        "POST /api/v1/auth/enrolment/totp/confirm": _ENROLMENT,
        "POST /api/v1/auth/enrolment/passkey/options": _ENROLMENT,
        "POST /api/v1/auth/enrolment/passkey": _ENROLMENT,
        "POST /api/v1/auth/staff/password-reset": _RESET,
        # --- linking a patient account to its records (API) -----------------------------
        "POST /api/v1/account/patient-links": _PATIENT_SELF_API,
        "POST /api/v1/account/patient-links/confirm": _PATIENT_SELF_API,
        "POST /api/v1/account/desk-code": _PATIENT_SELF_API,
        "GET /api/v1/account/patients": _PATIENT_SELF_API,
        "DELETE /api/v1/account/dependents/{patient_id}": account(
            "patient", object_from="path:patient_id", note="only the account's own dependents"
        ),
        "POST /api/v1/staff/patient-links": _DESK,
        "POST /api/v1/staff/dependents/revoke": _DESK,
        # --- staff administration (API) -------------------------------------------------
        "GET /api/v1/admin/staff": _ADMIN,
        "GET /api/v1/admin/sites": _ADMIN,
        "POST /api/v1/admin/staff": _ADMIN,
        "POST /api/v1/admin/staff/{account_id}/invitation": roles(
            "organization_admin", object_from="path:account_id", note="staff of its organization"
        ),
        "POST /api/v1/admin/staff/{account_id}/unlock": roles(
            "organization_admin", object_from="path:account_id", note="staff of its organization"
        ),
        "POST /api/v1/auth/accounts/{account_id}/unlock": roles(
            "organization_admin", object_from="path:account_id", note="accounts of its organization"
        ),
        # --- exam catalog and site schedules (API, organization admins) ------------------
        "GET /api/v1/admin/exams": _CONFIG,
        "POST /api/v1/admin/exams": _CONFIG,
        "PATCH /api/v1/admin/exams/{exam_id}": _CONFIG_EXAM,
        "GET /api/v1/admin/sites/{site_id}/schedule": _CONFIG_SITE,
        "PUT /api/v1/admin/sites/{site_id}/schedule": _CONFIG_SITE,
        "GET /api/v1/admin/sites/{site_id}/closures": _CONFIG_SITE,
        "POST /api/v1/admin/sites/{site_id}/closures": _CONFIG_SITE,
        "DELETE /api/v1/admin/sites/{site_id}/closures/{closure_id}": _CONFIG_SITE,
        # --- patients (API) --------------------------------------------------------------
        "POST /api/v1/patients/search": policy(
            "patient:search",
            object_from="body:nir",
            note="one complete criterion; only records in scope; capped",
        ),
        "GET /api/v1/patients/{patient_id}": policy(
            "patient:read", object_from="path:patient_id", note="only the granted fields"
        ),
        "GET /api/v1/patients/{patient_id}/nir": policy(
            "patient:read",
            object_from="path:patient_id",
            needs_fields=("ins_number",),
            note="the full NIR: also needs a fresh step-up (403 step_up_required)",
        ),
        "PATCH /api/v1/patients/{patient_id}/contact": policy(
            "patient:update",
            object_from="path:patient_id",
            note="also needs a fresh step-up (403 step_up_required)",
        ),
        "GET /api/v1/patients/{patient_id}/access-history": policy(
            "patient:read",
            object_from="path:patient_id",
            kinds=("patient",),
            note="who opened my record: the patient account acting for it only",
        ),
        # --- booking (API, labvault.appointments.routes) ---------------------------------
        # BookingService applies appointment:read/create/update of the policy on the
        # appointment's patient (own records and dependents; staff: their sites'
        # relationship), anything else is its audited 404. The matrix asks every role about
        # an appointment of each kind of record.
        "GET /api/v1/sites": account(note="the organization's bookable sites: no patient data"),
        "GET /api/v1/exams": account(note="the active exam catalog: no patient data"),
        "POST /api/v1/sites/{site_id}/slots/search": account(
            object_from="path:site_id", note="free capacity only; a site of the organization"
        ),
        "POST /api/v1/appointments/holds": policy(
            "appointment:create", object_from="body:patient_id"
        ),
        "POST /api/v1/appointments/home-visits": policy(
            "appointment:create", object_from="body:patient_id"
        ),
        "GET /api/v1/appointments": policy(
            "appointment:read",
            object_from="query:patient_id",
            note="a patient account may leave patient_id out: its own and dependents'",
        ),
        "GET /api/v1/appointments/{appointment_id}": policy(
            "appointment:read", object_from="path:appointment_id"
        ),
        "POST /api/v1/appointments/{appointment_id}/confirm": policy(
            "appointment:update", object_from="path:appointment_id"
        ),
        "POST /api/v1/appointments/{appointment_id}/cancel": policy(
            "appointment:update",
            object_from="path:appointment_id",
            note="patients until the change deadline (409 deadline_passed)",
        ),
        "POST /api/v1/appointments/{appointment_id}/reschedule": policy(
            "appointment:update",
            object_from="path:appointment_id",
            note="patients until the change deadline (409 deadline_passed)",
        ),
        # --- break-glass and the security review (API) -------------------------------------
        "POST /api/v1/break-glass": _BREAK_GLASS,
        "DELETE /api/v1/break-glass/{grant_id}": roles(
            *BREAK_GLASS_ROLES, object_from="path:grant_id", note="the caller's own live grants"
        ),
        "GET /api/v1/security/break-glass": _OFFICER,
        "GET /api/v1/security/break-glass/{grant_id}/justification": roles(
            "security_officer", object_from="path:grant_id", note="the read is audited"
        ),
        "POST /api/v1/security/break-glass/{grant_id}/review": roles(
            "security_officer", object_from="path:grant_id"
        ),
        "GET /api/v1/security/alerts": _OFFICER,
        "POST /api/v1/security/alerts/{alert_id}/acknowledge": roles(
            "security_officer", object_from="path:alert_id"
        ),
        # --- the lab desk (API, labvault.desk) -------------------------------------------
        "GET /api/v1/desk/schedule": _DESK_STAFF,
        "POST /api/v1/desk/appointments/{appointment_id}/check-in": _DESK_STAFF_APPOINTMENT,
        "POST /api/v1/desk/appointments/{appointment_id}/no-show": _DESK_STAFF_APPOINTMENT,
        "POST /api/v1/desk/appointments/{appointment_id}/done": _DESK_STAFF_APPOINTMENT,
        "POST /api/v1/desk/appointments/{appointment_id}/identity-check": policy(
            "patient:update",
            object_from="path:appointment_id",
            kinds=("staff",),
            only_roles=("receptionist",),
            note="raises the patient's identity status; at the caller's sites, not a hold",
        ),
        "POST /api/v1/desk/walk-ins": roles(
            "receptionist",
            note="the identity document's traits must match exactly one record (audited)",
        ),
        "GET /api/v1/desk/rounds": _DESK_STAFF,
        "POST /api/v1/desk/schedule/export": roles(
            "receptionist",
            note="the day's schedule as CSV: a recent step-up, read budgets, fingerprint rows",
        ),
        "POST /api/v1/desk/appointments/{appointment_id}/sampler": policy(
            "appointment:update",
            object_from="path:appointment_id",
            kinds=("staff",),
            only_roles=("receptionist",),
            note="a home visit at the caller's sites, a sampler of that site",
        ),
        # --- pages: the lab desk ---------------------------------------------------------
        "GET /accueil/planning": _DESK_STAFF,
        "POST /accueil/planning/arrivee": _DESK_STAFF_FORM,
        "POST /accueil/planning/absence": _DESK_STAFF_FORM,
        "POST /accueil/planning/preleve": _DESK_STAFF_FORM,
        "POST /accueil/planning/identite": roles(
            "receptionist",
            object_from="body:appointment_id",
            note="patient:update on the appointment's patient",
        ),
        "GET /accueil/sans-rendez-vous": _RECEPTION,
        "POST /accueil/sans-rendez-vous": roles(
            "receptionist",
            note="the identity document's traits must match exactly one record (audited)",
        ),
        "POST /accueil/planning/export.csv": roles(
            "receptionist",
            note="the day's list as CSV: a recent step-up, read budgets, fingerprint rows",
        ),
        "GET /accueil/tournees": _DESK_STAFF,
        "POST /accueil/tournees/affectation": roles(
            "receptionist",
            object_from="body:appointment_id",
            note="a home visit at the caller's sites, a sampler of that site",
        ),
        # --- pages: patients, break-glass, the security review -----------------------------
        "GET /patients/recherche": policy("patient:search", note="the search form"),
        "POST /patients/recherche": policy("patient:search", object_from="body:nir"),
        "POST /patients/bris-de-glace": _BREAK_GLASS,
        "GET /patients/{patient_id}": policy(
            "patient:read", object_from="path:patient_id", note="only the granted fields"
        ),
        "GET /securite/acces-exceptionnels": _OFFICER,
        "GET /securite/acces-exceptionnels/{grant_id}": roles(
            "security_officer", object_from="path:grant_id"
        ),
        "POST /securite/acces-exceptionnels/{grant_id}/avis": roles(
            "security_officer", object_from="path:grant_id"
        ),
        "GET /securite/alertes": _OFFICER,
        "POST /securite/alertes/{alert_id}/prise-en-compte": roles(
            "security_officer", object_from="path:alert_id"
        ),
        "GET /securite/comptes-bloques": _OFFICER,
        "POST /securite/comptes-bloques/demande": roles(
            "security_officer", note="four-eyes unlock, first officer: reason, step-up"
        ),
        "POST /securite/comptes-bloques/approbation": roles(
            "security_officer", note="four-eyes unlock: another officer than the requester, step-up"
        ),
        "POST /securite/comptes-bloques/annulation": roles(
            "security_officer", note="withdraw a pending unlock request"
        ),
        # --- pages: sign-up, login, password ---------------------------------------------
        "GET /compte/inscription": public(),
        "POST /compte/inscription": public("sign-up: one answer whatever the address"),
        "GET /compte/confirmation": public(),
        "POST /compte/confirmation": public("address proof by code"),
        "GET /compte/connexion": public(),
        "POST /compte/connexion": _SIGN_IN,
        "GET /compte/second-facteur": _SIGN_IN,
        "POST /compte/second-facteur/envoi": _SIGN_IN,
        "POST /compte/second-facteur": _SIGN_IN,
        "POST /compte/second-facteur/cle-d-acces": _PASSKEY_LOGIN,
        "GET /compte/mot-de-passe/oubli": public(),
        "POST /compte/mot-de-passe/oubli": _RESET,
        "GET /compte/mot-de-passe/nouveau": _RESET,
        "POST /compte/mot-de-passe/nouveau": _RESET,
        "GET /compte/suppression/annulation": public("the emailed token is the credential"),
        "POST /compte/suppression/annulation": public("the emailed token is the credential"),
        "GET /compte/connexion-professionnel": public(),
        "POST /compte/connexion-professionnel": _SIGN_IN,
        "GET /compte/connexion-professionnel/mot-de-passe-oublie": public(),
        "POST /compte/connexion-professionnel/mot-de-passe-oublie": _RESET,
        "GET /compte/invitation": _INVITATION,
        "POST /compte/invitation": _INVITATION,
        "GET /compte/activation": _ENROLMENT,
        "POST /compte/activation/cle": _ENROLMENT,
        "POST /compte/activation/cle-d-acces": _ENROLMENT,
        "POST /compte/activation/envoi": _ENROLMENT,
        "POST /compte/activation": _ENROLMENT,
        # --- pages: an account on itself ------------------------------------------------
        "GET /compte/securite": _SELF,
        "POST /compte/securite/totp": _SELF,
        "POST /compte/securite/totp/confirmation": _SELF,
        "POST /compte/securite/codes-de-secours": _SELF,
        "POST /compte/securite/sessions/revocation": account(
            object_from="body:session_id", note="only the account's own sessions"
        ),
        "POST /compte/securite/mot-de-passe": _SELF,
        "POST /compte/securite/cles-d-acces": _SELF,
        "POST /compte/securite/cles-d-acces/suppression": account(
            object_from="body:passkey_id", note="only the account's own passkeys"
        ),
        "POST /compte/deconnexion": _SELF,
        "GET /compte/confirmer-identite": _SELF,
        "POST /compte/confirmer-identite/envoi": _SELF,
        "POST /compte/confirmer-identite": _SELF,
        "GET /compte/suppression": account("patient", refusal=403),
        "POST /compte/suppression": account("patient", refusal=403),
        "GET /compte/dossiers": _PATIENT_SELF,
        "POST /compte/dossiers/rattachement": _PATIENT_SELF,
        "POST /compte/dossiers/rattachement/code": _PATIENT_SELF,
        "POST /compte/dossiers/code-guichet": _PATIENT_SELF,
        "POST /compte/dossiers/enfants/retrait": account(
            "patient", object_from="body:patient_id", note="only the account's own dependents"
        ),
        # --- pages: a patient account's appointments (labvault.appointments.pages) --------
        "GET /compte/rendez-vous": _PATIENT_SELF,
        "GET /compte/rendez-vous/nouveau": _PATIENT_SELF,
        "POST /compte/rendez-vous/nouveau": account(
            "patient", object_from="body:patient_id", note="slot search for its own records"
        ),
        "POST /compte/rendez-vous/nouveau/creneau": _OWN_BOOKING,
        "GET /compte/rendez-vous/domicile": _PATIENT_SELF,
        "POST /compte/rendez-vous/domicile": _OWN_BOOKING,
        "GET /compte/rendez-vous/{appointment_id}/confirmation": _OWN_APPOINTMENT,
        "POST /compte/rendez-vous/{appointment_id}/confirmation": _OWN_APPOINTMENT,
        "GET /compte/rendez-vous/{appointment_id}/deplacer": _OWN_APPOINTMENT,
        "POST /compte/rendez-vous/{appointment_id}/deplacer": _OWN_APPOINTMENT,
        "GET /compte/rendez-vous/{appointment_id}/annuler": _OWN_APPOINTMENT,
        "POST /compte/rendez-vous/{appointment_id}/annuler": _OWN_APPOINTMENT,
        "GET /compte/guichet": roles("receptionist", note="the lab desk form"),
        "POST /compte/guichet": _DESK,
        # --- pages: staff administration -------------------------------------------------
        "GET /administration/personnel": _ADMIN,
        "POST /administration/personnel/renouvellement": _ADMIN,
        "POST /administration/personnel/deverrouillage": _ADMIN,
        "GET /administration/personnel/invitation": _ADMIN,
        "POST /administration/personnel/invitation": _ADMIN,
        # --- pages: exam catalog and site schedules ---------------------------------------
        "GET /administration/examens": _CONFIG,
        "POST /administration/examens": _CONFIG,
        "POST /administration/examens/modification": _CONFIG,
        "POST /administration/examens/activation": _CONFIG,
        "GET /administration/sites": _CONFIG,
        "GET /administration/sites/{site_id}/planning": _CONFIG_SITE,
        "POST /administration/sites/{site_id}/planning": _CONFIG_SITE,
        "POST /administration/sites/{site_id}/fermetures": _CONFIG_SITE,
        "POST /administration/sites/{site_id}/fermetures/suppression": _CONFIG_SITE,
        # --- pre-registration and prescriptions (API and pages) ---------------------------
        "PUT /api/v1/appointments/{appointment_id}/preregistration": policy(
            "appointment:update",
            object_from="path:appointment_id",
            kinds=("patient",),
            note="the patient account (own, dependents); appointment held or booked",
        ),
        "GET /api/v1/appointments/{appointment_id}/preregistration": _PREREGISTRATION_READ,
        "POST /api/v1/appointments/{appointment_id}/documents": policy(
            "prescription:create",
            object_from="path:appointment_id",
            kinds=("patient",),
            note="the patient account (own, dependents); appointment held or booked",
        ),
        "GET /api/v1/documents/{document_id}": _DOCUMENT_READ,
        "DELETE /api/v1/documents/{document_id}": _DOCUMENT_DELETE,
        "GET /api/v1/patients/{patient_id}/documents": policy(
            "prescription:read", object_from="path:patient_id", note="the list, no content"
        ),
        "GET /compte/rendez-vous/{appointment_id}/pre-enregistrement": account(
            object_from="path:appointment_id",
            note="patient accounts only, appointment:update on the appointment's patient "
            "(anything else, staff included: the same 404 page)",
        ),
        "POST /compte/rendez-vous/{appointment_id}/pre-enregistrement": _PREREGISTRATION_OWN,
        "POST /compte/rendez-vous/{appointment_id}/ordonnance": _PREREGISTRATION_OWN,
        "GET /compte/documents": _PATIENT_SELF,
        "POST /compte/documents/suppression": account(
            "patient", object_from="body:document_id", note="prescription:create: own documents"
        ),
        # --- pages: a patient's results and their shares (labvault.results.pages, .routes) --
        "GET /compte/resultats": _PATIENT_SELF,
        "GET /compte/resultats/{report_id}": _OWN_RESULT,
        "GET /compte/resultats/{report_id}/pdf": _OWN_RESULT,
        "POST /compte/resultats/{report_id}/partage": account(
            object_from="path:report_id",
            note="result:read on a released report of its own records or dependents'; also "
            "needs a fresh step-up (anything else, staff included: the same 404 page)",
        ),
        "POST /compte/resultats/partages/arret": account(
            object_from="body:share_id",
            note="a share of the account's own records' reports (else the same 404 page)",
        ),
        "GET /partage/{token}": _SHARE_LINK,
        "GET /partage/{token}/pdf": _SHARE_LINK,
        # --- the biologist's review (labvault.results.staff_routes, .staff_pages) ----------
        # ReviewService applies result:update of the policy on the report's patient (the
        # relationship with the biologist's sites); anything else is its audited 404.
        "GET /api/v1/results/review": _BIOLOGIST,
        "GET /api/v1/results/review/{report_id}": _BIOLOGIST_REPORT,
        "POST /api/v1/results/review/{report_id}/validate": _BIOLOGIST_VALIDATION,
        "POST /api/v1/results/review/{report_id}/phone-call": _BIOLOGIST_VALIDATION,
        "GET /biologie/resultats": _BIOLOGIST,
        "GET /biologie/resultats/{report_id}": _BIOLOGIST_REPORT,
        "POST /biologie/resultats/{report_id}/validation": _BIOLOGIST_VALIDATION,
        "POST /biologie/resultats/{report_id}/appel": _BIOLOGIST_VALIDATION,
        # --- the matching queue (labvault.results.queue_pages) ------------------------------
        # Results no patient was matched to with certainty: biologists and receptionists;
        # a record chosen must be in the caller's relationship scope (else the same refusal).
        "GET /laboratoire/rapprochement": _MATCHING_QUEUE,
        "GET /laboratoire/rapprochement/{message_id}": _MATCHING_MESSAGE,
        "POST /laboratoire/rapprochement/{message_id}/rattacher": _MATCHING_MESSAGE,
        "POST /laboratoire/rapprochement/{message_id}/ecarter": _MATCHING_MESSAGE,
    }
)
"""``"<METHOD> <path>"`` -> what it requires. Keep it sorted by feature, one line a route."""


def route_keys(routes: Iterable[object]) -> Iterator[str]:
    """``"<METHOD> <path>"`` for each route FastAPI serves (``app.routes``), mounts included."""
    from fastapi.routing import iter_route_contexts
    from starlette.routing import Mount

    for context in iter_route_contexts(list(routes)):  # type: ignore[arg-type]
        path = context.path
        if isinstance(context.original_route, Mount):
            yield f"MOUNT {path}"
            continue
        methods = set(context.methods or ())
        if "GET" in methods:
            methods.discard("HEAD")
        for method in sorted(methods):
            yield f"{method} {path}"
