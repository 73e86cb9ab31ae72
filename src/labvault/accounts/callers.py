"""The signed-in caller of a request, for any router: ONE public way to get it.

A route asks :func:`run_as_caller` to run its work for the caller behind the session cookie,
in one audited unit of work, with the guarantees of ``labvault.accounts.routes``:

- the ``__Host-`` session cookie of a fully signed-in session (second factor done);
- unsafe methods refused from another origin and without the session's ``X-CSRF-Token``;
- on object routes (``object_route=True``) every refusal that could tell something about the
  object, including "not signed in", is the same 404 as "absent" (invariant I7);
- a refusal that services attach audit events to (``AuditedRefusalError``) rolls the unit
  back and keeps its "denied" events (``audited_transaction``); an expected failure that is
  not one (a missing step-up, a bad CSRF token) commits what was recorded before it.

The caller carries its account, its session record, its :class:`Principal`, its tenant and
what it may reach (:meth:`Caller.scope`): a staff member's relationship scope, or a patient
account's own record plus the minor dependents it may act for today.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from labvault.accounts.forms import (
    error_page,
    form_csrf_ok,
    redirect_to,
    refuse_cross_site,
    runtime_of,
)
from labvault.accounts.linking import account_acts_for, paris_today
from labvault.accounts.models import Account, AccountDependent, AccountKind, AccountSession
from labvault.accounts.pages import back_to_login
from labvault.accounts.routes import (
    AUTH_PROBLEMS,
    SESSION_COOKIE,
    STEP_UP_RESPONSES,
    CsrfRefusedError,
    RequestContext,
    csrf_header_ok,
    failure_response,
    guard,
)
from labvault.accounts.services import AccountService, AuthError, InvalidInputError
from labvault.accounts.stepup import StepUp, StepUpRequired
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.audit.events import AuditedRefusalError, audited_transaction
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import is_sqlite_busy, utcnow
from labvault.core.runtime import Runtime
from labvault.core.web.problems import problem_response
from labvault.patients.scope import AccessScope, patient_scope, staff_scope, window_from

__all__ = [
    "NOT_FOUND",
    "OBJECT_PROBLEMS",
    "PROBLEMS",
    "STEP_UP_PROBLEMS",
    "Caller",
    "CallerNotFoundError",
    "CallerRefusedError",
    "not_found",
    "problem",
    "run_as_caller",
    "run_page_as_caller",
]

T = TypeVar("T")

NOT_FOUND = "Introuvable."
"""The one detail of every 404 of an object route: absent, out of scope, not granted."""


def problem(description: str) -> dict[str, Any]:
    """An OpenAPI ``responses`` entry answered as ``application/problem+json``."""
    return {"description": description, "content": {"application/problem+json": {}}}


PROBLEMS: dict[int | str, dict[str, Any]] = {
    **AUTH_PROBLEMS,
    401: problem("Not signed in (or the second factor is not done)."),
    403: problem("Cross-origin request or missing CSRF token."),
}
"""The answers of a signed-in, non-object route."""
OBJECT_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **{k: v for k, v in PROBLEMS.items() if k != 401},
    404: problem(
        "Absent, out of the caller's scope, not granted to its role, or no signed-in session: "
        "one answer (byte-identical) for every reason."
    ),
}
"""The answers of an object route: no 401, everything unknown or forbidden is 404."""
STEP_UP_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **OBJECT_PROBLEMS,
    403: STEP_UP_RESPONSES[403],
}


class CallerNotFoundError(Exception):
    """Answer the route's uniform 404 (the object is absent, or the caller may not know)."""


class CallerRefusedError(Exception):
    """Answer ``response`` (an expected refusal with its own answer, e.g. a 422)."""

    def __init__(self, response: Response) -> None:
        super().__init__("refused")
        self.response = response


def not_found() -> Response:
    return problem_response(404, detail=NOT_FOUND)


@dataclass
class Caller:
    """The signed-in caller, inside its request's unit of work."""

    account: Account
    record: AccountSession
    principal: Principal
    tenant_id: uuid.UUID
    session: Session
    service: AccountService
    context: RequestContext
    now: dt.datetime = field(default_factory=utcnow)
    _scope: AccessScope | None = field(default=None, repr=False)

    @property
    def runtime(self) -> Runtime:
        return self.context.runtime

    @property
    def is_staff(self) -> bool:
        return self.account.kind == AccountKind.STAFF.value

    @property
    def is_patient(self) -> bool:
        return self.account.kind == AccountKind.PATIENT.value

    @property
    def role(self) -> str | None:
        return self.account.role if self.is_staff else None

    @property
    def staff_id(self) -> uuid.UUID | None:
        return self.account.staff_id if self.is_staff else None

    def keyring(self) -> TenantKeyring:
        """The caller's keyring: every key it opens and every event it records is the
        caller's, with the request's audit context."""
        return TenantKeyring(
            self.session,
            self.runtime.key_provider,
            self.tenant_id,
            self.principal,
            context=self.context.audit,
        )

    def scope(self) -> AccessScope:
        """What the caller may reach, resolved once per request.

        Staff: their role's policy and their sites' relationship scope (plus their live
        break-glass grants). A patient account: its own record and the dependents it may act
        for today (minors only, checked from the birth date, audited as ``guardian-check``).
        """
        if self._scope is None:
            self._scope = self._build_scope()
        return self._scope

    def _build_scope(self) -> AccessScope:
        settings = self.runtime.settings
        if self.is_staff:
            # An account without a staff member gets an id no staff member has: no sites,
            # so its relationship clauses match nothing.
            return staff_scope(
                self.session,
                self.principal,
                self.tenant_id,
                self.account.staff_id or uuid.UUID(int=0),
                window=window_from(settings),
                now=self.now,
            )
        own: set[uuid.UUID] = set()
        if self.account.patient_id is not None:
            own.add(self.account.patient_id)
        dependents = self.session.scalars(
            select(AccountDependent.patient_id).where(
                AccountDependent.tenant_id == self.tenant_id,
                AccountDependent.account_id == self.account.id,
                AccountDependent.revoked_at.is_(None),
            )
        )
        keyring = self.keyring()
        today = paris_today(self.now)
        for patient_id in sorted(set(dependents)):
            if account_acts_for(self.session, keyring, self.account, patient_id, today=today):
                own.add(patient_id)
        return patient_scope(self.principal, self.tenant_id, frozenset(own), now=self.now)

    def require_step_up(self) -> None:
        """Raise ``StepUpRequired`` (audited) unless this session proved a second factor
        recently (``labvault.accounts.stepup``)."""
        StepUp(self.service).require(self.record, self.account)


def _principal(account: Account) -> Principal:
    return Principal(PrincipalKind(account.kind), str(account.id), role=account.role)


_EXPECTED = (AuthError, CsrfRefusedError, InvalidInputError, StepUpRequired)


def run_as_caller(
    request: Request,
    action: Callable[[Caller], T],
    *,
    object_route: bool = False,
    check_csrf: bool | None = None,
    kinds: frozenset[AccountKind] = frozenset(AccountKind),
    on_refusal: Callable[[AuditedRefusalError], Response] | None = None,
) -> T | Response:
    """Run ``action`` for the signed-in caller in one audited unit of work.

    Returns the action's result, or the response of a refusal: 403 cross-origin / CSRF,
    401 not signed in (404 on object routes), 403 ``step_up_required``, 404 for
    :class:`CallerNotFoundError` (and for an account kind not in ``kinds``), or the response
    a :class:`CallerRefusedError` carries. ``check_csrf`` defaults to "unsafe methods only".
    A service's audited refusal is rolled back with its events kept, then answered by
    ``on_refusal`` (default: the uniform 404).
    """
    if (refused := guard(request)) is not None:
        return refused
    if check_csrf is None:
        check_csrf = request.method not in {"GET", "HEAD", "OPTIONS"}
    context = RequestContext(request, runtime_of(request))
    token = request.cookies.get(SESSION_COOKIE, "")
    for attempt in range(2):
        try:
            return _run_as_caller_once(
                context, token, kinds, check_csrf, action, on_refusal, object_route
            )
        except Exception as error:
            # SQLite (the embedded default): a unit of work that read, then wrote after
            # another connection committed, is refused at once; it rolled back whole, so it
            # runs again once instead of answering 500.
            if attempt or not is_sqlite_busy(error):
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def _run_as_caller_once(
    context: RequestContext,
    token: str,
    kinds: frozenset[AccountKind],
    check_csrf: bool,
    action: Callable[[Caller], T],
    on_refusal: Callable[[AuditedRefusalError], Response] | None,
    object_route: bool,
) -> T | Response:
    failure: Exception | None = None
    result: T | None = None
    try:
        with audited_transaction(context.runtime.sessions) as session:
            service = context.service(session)
            try:
                found = service.current(token) if token else None
                if found is None:
                    raise AuthError("Vous n'êtes pas connecté.")
                if check_csrf and not csrf_header_ok(context, service):
                    raise CsrfRefusedError
                record, account = found
                if AccountKind(account.kind) not in kinds:
                    raise CallerNotFoundError
                caller = Caller(
                    account=account,
                    record=record,
                    principal=_principal(account),
                    tenant_id=account.tenant_id,
                    session=session,
                    service=service,
                    context=context,
                )
                result = action(caller)
            except (*_EXPECTED, CallerNotFoundError, CallerRefusedError) as exc:
                failure = exc
    except AuditedRefusalError as refusal:
        failure = refusal
    if failure is None:
        return result  # type: ignore[return-value]
    if isinstance(failure, AuditedRefusalError) and on_refusal is not None:
        return on_refusal(failure)
    return _answer(failure, object_route=object_route)


def _answer(failure: Exception, *, object_route: bool) -> Response:
    if isinstance(failure, CallerRefusedError):
        return failure.response
    if isinstance(failure, CallerNotFoundError):
        return not_found()
    if isinstance(failure, AuditedRefusalError):
        # A service's refusal, recorded: the route did not catch it, so it is "not found".
        return not_found()
    if object_route and isinstance(failure, AuthError) and not isinstance(failure, StepUpRequired):
        return not_found()
    return failure_response(failure)


# --- pages ------------------------------------------------------------------------------------

STEP_UP_PAGE = "/compte/confirmer-identite"


def run_page_as_caller(
    request: Request,
    action: Callable[[Caller], Response],
    *,
    csrf_token: str | None = None,
    on_refusal: Callable[[AuditedRefusalError], Response] | None = None,
    step_up_return: str | None = None,
) -> Response:
    """:func:`run_as_caller` for French pages: not signed in goes to the login page (or to
    the second factor), a form POST needs its ``csrf_token`` field and must come from one of
    our pages, anything unknown or forbidden is the "page introuvable" 404 page, and a
    missing step-up sends the browser to ``/compte/confirmer-identite`` and back to
    ``step_up_return`` (a local path; default: the current path, for GET pages)."""
    unsafe = request.method not in {"GET", "HEAD", "OPTIONS"}
    if unsafe and (refused := refuse_cross_site(request)) is not None:
        return refused
    context = RequestContext(request, runtime_of(request))
    token = request.cookies.get(SESSION_COOKIE, "")
    failure: Exception | None = None
    result: Response | None = None
    login: Response | None = None
    try:
        with audited_transaction(context.runtime.sessions) as session:
            service = context.service(session)
            try:
                found = service.current(token) if token else None
                if found is None:
                    if token and service.pending(token) is not None:
                        login = redirect_to(request, "/compte/second-facteur")
                    else:
                        login = back_to_login(request, token)
                    raise AuthError("Vous n'êtes pas connecté.")
                if unsafe and not form_csrf_ok(service, token, csrf_token or ""):
                    raise CsrfRefusedError
                record, account = found
                caller = Caller(
                    account=account,
                    record=record,
                    principal=_principal(account),
                    tenant_id=account.tenant_id,
                    session=session,
                    service=service,
                    context=context,
                )
                result = action(caller)
            except (*_EXPECTED, CallerNotFoundError, CallerRefusedError) as exc:
                failure = exc
    except AuditedRefusalError as refusal:
        failure = refusal
    if failure is None:
        assert result is not None
        return result
    if login is not None:
        return login
    if isinstance(failure, AuditedRefusalError) and on_refusal is not None:
        return on_refusal(failure)
    if isinstance(failure, CallerRefusedError):
        return failure.response
    if isinstance(failure, StepUpRequired):
        return redirect_to(request, STEP_UP_PAGE, suite=step_up_return or request.url.path)
    if isinstance(failure, CsrfRefusedError):
        return error_page(
            request,
            403,
            "Formulaire expiré",
            "Ce formulaire a expiré. Rechargez la page, puis envoyez-le à nouveau.",
        )
    return error_page(request, 404, "Page introuvable", "Cette page n'existe pas.")
