"""Step-up re-authentication: a signed-in session re-proves a second factor before a
sensitive action (changing factors or the password, the deletion request, and later showing
a full NIR, exports, changing contact details, staff admin actions).

The rule
    A session may do a sensitive action while its last proof of a possession factor is
    recent: ``step_up_at`` (a re-proof in THIS session) or ``second_factor_at`` (the login's
    own second factor) within ``LABVAULT_STEP_UP_MINUTES`` (default 5). A proof in another
    session of the same account does not count: the columns belong to the session row.
    Features call :func:`require_step_up`, which raises :class:`StepUpRequired`; the API
    answers it with 403 ``step_up_required`` (the session itself is fine: not 401), the pages
    redirect to ``/compte/confirmer-identite?suite=<local path>``.

The re-proof (:class:`StepUp`)
    - an authenticator app's code (replays refused: the same ``last_step`` as the login),
    - a passkey: a WebAuthn authentication bound to this session and account, with its own
      challenge purpose (``webauthn-step-up``), so a login challenge cannot serve here,
    - for patients, a code emailed for this purpose (``step-up``),
    - a recovery code only when the account has no other factor (it is single-use and the
      last way back into the account).
    The roles that require a passkey re-prove with their passkey only. Every attempt counts
    toward the per-account second-factor rate limit; successes and failures are audited
    (``account:step-up:success`` / ``account:step-up:failure``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from labvault.accounts.models import Account, AccountKind, AccountSession
from labvault.accounts.services import (
    CODE_SENDS_PER_ACCOUNT,
    SECOND_FACTOR_PER_ACCOUNT,
    AccountService,
    AuthError,
)
from labvault.accounts.webauthn import METHOD as PASSKEY
from labvault.accounts.webauthn import STEP_UP as PASSKEY_STEP_UP
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import Outcome
from labvault.core.config import Settings
from labvault.core.db import utcnow

__all__ = [
    "EMAIL_PURPOSE",
    "STEP_UP_REQUIRED",
    "StepUp",
    "StepUpFailedError",
    "StepUpRequired",
    "is_stepped_up",
    "require_step_up",
]

STEP_UP_REQUIRED = "step_up_required"
"""The machine-readable reason of the API's 403 (``reason`` in the problem document)."""
EMAIL_PURPOSE = "step-up"
"""The ``one_time_codes`` purpose of an emailed step-up code."""
REQUIRED_MESSAGE = (
    "Pour des raisons de sécurité, confirmez votre identité avant cette action "
    "(code de votre application, clé d'accès ou code reçu par e-mail)."
)
FAILED_MESSAGE = "Code incorrect ou expiré."


class StepUpRequired(Exception):  # noqa: N818 - reads as a state, like the API's reason
    """The session has no recent proof of a second factor: re-prove one, then retry."""

    reason = STEP_UP_REQUIRED

    def __init__(self) -> None:
        super().__init__(REQUIRED_MESSAGE)


class StepUpFailedError(AuthError):
    """A re-proof that failed (wrong, replayed or expired code, method not offered)."""

    def __init__(self) -> None:
        super().__init__(FAILED_MESSAGE)


def _window(settings: Settings) -> dt.timedelta:
    return dt.timedelta(minutes=settings.step_up_minutes)


def is_stepped_up(
    record: AccountSession, settings: Settings, clock: Callable[[], dt.datetime] = utcnow
) -> bool:
    """Whether ``record`` proved a second factor (login or step-up) within the window."""
    now = clock()
    window = _window(settings)
    return any(
        proved is not None and dt.timedelta(0) <= now - proved < window
        for proved in (record.step_up_at, record.second_factor_at)
    )


def require_step_up(
    record: AccountSession, settings: Settings, clock: Callable[[], dt.datetime] = utcnow
) -> None:
    """Raise :class:`StepUpRequired` unless ``record`` (the request's own session) proved a
    second factor within ``LABVAULT_STEP_UP_MINUTES``. Call it before any sensitive action,
    in the action's transaction."""
    if not is_stepped_up(record, settings, clock):
        raise StepUpRequired


class StepUp:
    """Re-proof of a second factor by a signed-in session, on the service's plumbing (its
    transaction, rate limiter, audit trail, mailer and clock)."""

    def __init__(self, service: AccountService) -> None:
        self._service = service

    def methods(self, account: Account) -> tuple[str, ...]:
        """The methods the account may re-prove with, preferred first. A recovery code only
        when there is nothing else; a role that requires a passkey, its passkey only."""
        offered = self._service._factors(account)
        others = tuple(method for method in offered if method != "recovery")
        return others or offered

    def is_fresh(self, record: AccountSession) -> bool:
        return is_stepped_up(record, self._service._settings, self._service._clock)

    def require(self, record: AccountSession, account: Account) -> None:
        """:func:`require_step_up`, with the refusal audited."""
        if self.is_fresh(record):
            return
        self._service._audit(
            AuditAction.ACCOUNT_STEP_UP_REQUIRED,
            account.id,
            principal=self._service._principal(account),
            outcome=Outcome.DENIED,
        )
        raise StepUpRequired

    def send_email_code(self, account: Account) -> None:
        """Email a 6-digit code for the step-up of a patient account."""
        service = self._service
        if account.kind != AccountKind.PATIENT.value or "email" not in self.methods(account):
            raise StepUpFailedError
        service._check_rate(CODE_SENDS_PER_ACCOUNT, service._identifier(account.email_index))
        code = service._new_code(account, EMAIL_PURPOSE)
        service._send(
            account,
            "Votre code de confirmation d'identité",
            f"Votre code de confirmation : {code.reveal()}\nIl est valable 10 minutes. Il sert "
            "à confirmer une action sensible sur votre compte (par exemple changer votre mot de "
            "passe ou demander la suppression du compte).\n\nSi vous n'êtes pas à l'origine de "
            "cette demande, changez tout de suite votre mot de passe.",
            "account:step-up-code",
        )

    def passkey_options(self, record: AccountSession, account: Account) -> str:
        """WebAuthn request options (JSON) for a step-up of ``record`` by passkey.

        Raises ``PasskeyError`` when passkeys are unavailable or the account has none."""
        if PASSKEY not in self.methods(account):
            raise StepUpFailedError
        return self._service.passkeys.authentication_options(account, record.id, PASSKEY_STEP_UP)

    def verify(self, record: AccountSession, account: Account, method: str, code: str) -> None:
        """Re-prove ``method`` for the session ``record``: its ``step_up_at`` becomes now.

        Every failure raises :class:`StepUpFailedError` (one message), audited; attempts
        count toward the per-account second-factor limit (``ThrottledError`` past it)."""
        service = self._service
        principal = service._principal(account)
        service._check_rate(SECOND_FACTOR_PER_ACCOUNT, service._identifier(account.email_index))
        if not self._check(record, account, method, code):
            service._audit(
                AuditAction.ACCOUNT_STEP_UP_FAILURE,
                account.id,
                principal=principal,
                outcome=Outcome.FAILURE,
            )
            raise StepUpFailedError
        record.step_up_at = service._clock()
        service._audit(AuditAction.ACCOUNT_STEP_UP_SUCCESS, account.id, principal=principal)

    def _check(self, record: AccountSession, account: Account, method: str, code: str) -> bool:
        service = self._service
        if method not in self.methods(account) or not code or len(code) > 65536:
            return False
        if method == PASSKEY:
            return service.passkeys.check_assertion(account, record.id, code, PASSKEY_STEP_UP)
        if method == "email":
            return account.kind == AccountKind.PATIENT.value and service._use_code(
                account, EMAIL_PURPOSE, code
            )
        if method in {"totp", "recovery"}:
            return service._check_factor(account, method, code, service._principal(account))
        return False
