"""A patient shares one released report with another doctor, through a time-limited link.

Why it is built this way:

- The link is ``/partage/<token>``: 256 random bits (``secrets.token_urlsafe(32)``), shown
  to the patient once; only its SHA-256 digest is stored, so a database dump holds no usable
  link. The link carries no personal data (no name, no report id, no exam).
- The recipient's name is sealed under the patient's key (the patient reads it back in its
  list of shares); its duration is 24 hours, 7 days or 30 days at most; creating a share
  needs a recent step-up (the pages ask for it), revoking one does not (it only narrows).
- Opening a link is anonymous: the token is the credential. The opening runs as a system
  principal named after the share (``system:result-share:<share id>``), explicit and
  greppable; each view is counted and audited with the patient's record as its target, so
  the patient sees it in its access history ("who opened my file"). The identity shown to
  the doctor is limited to names and birth date (:class:`IdentityVerification`), nothing
  else of the record is decrypted.
- Unknown, malformed, expired and revoked links, and reports no longer released, get one
  neutral answer (``None`` here, a 404 page there). Failures are counted per client address
  and refused once too many (a brake on guessing on top of the 256 bits), as are views.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
import secrets
import unicodedata
import uuid
from dataclasses import dataclass
from typing import Final

from sqlalchemy import func, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from labvault.core.access.policies import Interaction
from labvault.core.access.principals import ANONYMOUS, SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditContext, AuditedRefusalError, AuditTrail, Outcome
from labvault.core.crypto.keyring import Keyring, TenantKeyring
from labvault.core.crypto.providers import KeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import utcnow
from labvault.core.ratelimit import RateLimiter, RateLimiterUnavailable, RateRule
from labvault.patients.scope import AccessScope, IdentityVerification
from labvault.patients.services import SUBJECT_TYPE, PatientRepository, SealedItem
from labvault.results.models import ReportStatus, ResultReport, ResultShare
from labvault.results.portal import (
    RESOURCE,
    ReportDetail,
    ReportReader,
    ResultNotFoundError,
    ResultPortal,
)

__all__ = [
    "DURATIONS",
    "SHARE_PATH",
    "CreatedShare",
    "ResultSharing",
    "ShareError",
    "ShareGoneError",
    "ShareLine",
    "ShareThrottledError",
    "ShareViewer",
    "SharedReport",
    "token_digest",
]

SHARE_PATH: Final = "/partage"
SHARES_TABLE: Final = ResultShare.__tablename__
SHARE_TARGET: Final = "result-share"
CREATE_PURPOSE: Final = "result-share-create"
LIST_PURPOSE: Final = "result-shares"
REVOKE_PURPOSE: Final = "result-share-revoke"
VIEW_PURPOSE: Final = "result-share"
TOKEN_BYTES: Final = 32
"""256 random bits: ``token_urlsafe`` writes them as 43 URL-safe characters."""
TOKEN_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{43}")
RECIPIENT_MAX: Final = 120
MAX_LIVE_SHARES: Final = 10
"""Live (unexpired, unrevoked) shares a report may have at once."""
DURATIONS: Final[dict[str, tuple[dt.timedelta, str]]] = {
    "24h": (dt.timedelta(hours=24), "24 heures"),
    "7j": (dt.timedelta(days=7), "7 jours"),
    "30j": (dt.timedelta(days=30), "30 jours"),
}
"""The durations a patient may choose (30 days at most), by form value."""
VIEWS_PER_CLIENT: Final = RateRule("result-share-view-client", "60/hour")
FAILURES_PER_CLIENT: Final = RateRule("result-share-failure-client", "10/hour")
THROTTLE_RECORDS_PER_CLIENT: Final = RateRule("result-share-throttled-client", "1/hour")
"""A throttled client is recorded once per window, not once per request: a client hammering
the links must not grow the (append-only) audit log without bound."""
IDENTITY_FIELDS: Final = frozenset({"birth_name", "used_name", "first_names", "birth_date"})
"""What a doctor with the link learns of the record: whose report it is, nothing more."""


def token_digest(token: str) -> bytes:
    """What is stored of a link's token."""
    return hashlib.sha256(token.encode("ascii")).digest()


def share_principal(share_id: uuid.UUID) -> SystemPrincipal:
    """The principal a link's opening runs as: one per share, so the access history tells
    two shares apart without saying who the doctor is."""
    return SystemPrincipal(f"result-share:{share_id.hex}")


class ShareError(ValueError):
    """A share refused as asked: French messages by form field, nothing written."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("share refused")
        self.errors = errors


class ShareThrottledError(Exception):
    """Too many link openings (or failures) from this client: answer 429."""


class ShareGoneError(AuditedRefusalError):
    """The record was erased (its key destroyed) between the check and the opening: the
    unit of work is rolled back (the view is not counted) and the link answers 404."""


@dataclass(frozen=True, slots=True, repr=False)
class CreatedShare:
    id: uuid.UUID
    report_id: uuid.UUID
    token: Secret[str]
    expires_at: dt.datetime

    def __repr__(self) -> str:
        return f"CreatedShare({self.id})"

    def path(self) -> str:
        return f"{SHARE_PATH}/{self.token.reveal()}"


@dataclass(frozen=True, slots=True, repr=False)
class ShareLine:
    """One of the patient's shares, as its list shows it (the recipient opened)."""

    id: uuid.UUID
    report_id: uuid.UUID
    recipient: str
    created_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    views: int
    last_viewed_at: dt.datetime | None
    live: bool

    def __repr__(self) -> str:
        return f"ShareLine({self.id})"


def _clean_recipient(value: str) -> str:
    text = unicodedata.normalize("NFC", value)
    text = "".join(" " if unicodedata.category(c).startswith(("C", "Z")) else c for c in text)
    return " ".join(text.split())


class ResultSharing:
    """A patient account's shares of its released reports (own records and dependents')."""

    def __init__(
        self,
        session: Session,
        keyring: Keyring,
        scope: AccessScope,
        *,
        now: dt.datetime | None = None,
    ) -> None:
        self._session = session
        self._keyring = keyring
        self._portal = ResultPortal(session, keyring, scope)
        self._repository = PatientRepository(session, keyring, scope)
        self._now = now or utcnow()

    @property
    def tenant_id(self) -> uuid.UUID:
        return self._keyring.tenant_id

    def require_report(self, report_id: uuid.UUID, purpose: str) -> uuid.UUID:
        """The report's patient when the report is released and the account's; else the
        audited :class:`ResultNotFoundError` (nothing opened)."""
        report = self._portal.require(report_id, AuditAction.RESULT_SHARE_CREATE, purpose)
        return report.patient_id

    def create(
        self,
        report_id: uuid.UUID,
        *,
        account_id: uuid.UUID,
        recipient: str,
        duration: str,
    ) -> CreatedShare:
        """A new share of a released report of the account's. Raises
        :class:`ResultNotFoundError` (audited) or :class:`ShareError` (nothing written)."""
        patient_id = self.require_report(report_id, CREATE_PURPOSE)
        errors: dict[str, str] = {}
        name = _clean_recipient(recipient)
        if not name:
            errors["recipient"] = "Indiquez le nom du médecin avec qui vous partagez ce résultat."
        elif len(name) > RECIPIENT_MAX:
            errors["recipient"] = f"Le nom ne peut pas dépasser {RECIPIENT_MAX} caractères."
        if duration not in DURATIONS:
            errors["duration"] = "Choisissez une durée : 24 heures, 7 jours ou 30 jours."
        if not errors and self._live_count(report_id) >= MAX_LIVE_SHARES:
            errors["general"] = (
                f"Ce compte rendu a déjà {MAX_LIVE_SHARES} partages en cours : arrêtez-en un "
                "avant d'en créer un autre."
            )
        if errors:
            raise ShareError(errors)
        share_id = uuid.uuid4()
        sealed = self._repository.seal_for(
            patient_id,
            RESOURCE,
            Interaction.READ,
            SealedItem(patient_id, SHARES_TABLE, share_id, {"recipient": name.encode()}),
            purpose=CREATE_PURPOSE,
        )
        recipient_blob = sealed.get("recipient") if sealed is not None else None
        if recipient_blob is None:
            raise self._portal.refused(report_id, AuditAction.RESULT_SHARE_CREATE, CREATE_PURPOSE)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        expires_at = self._now + DURATIONS[duration][0]
        self._session.add(
            ResultShare(
                id=share_id,
                tenant_id=self.tenant_id,
                patient_id=patient_id,
                report_id=report_id,
                token_digest=token_digest(token),
                recipient=recipient_blob,
                created_by_account_id=account_id,
                created_at=self._now,
                expires_at=expires_at,
            )
        )
        self._session.flush()
        self._keyring.audit.record(
            AuditAction.RESULT_SHARE_CREATE,
            tenant_id=self.tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=patient_id,
            purpose=CREATE_PURPOSE,
        )
        return CreatedShare(share_id, report_id, Secret(token), expires_at)

    def shares(self, report_id: uuid.UUID | None = None) -> list[ShareLine]:
        """The shares of the account's records (of one report if named), newest first."""
        reachable = self._portal.reachable()
        if not reachable:
            return []
        query = select(ResultShare).where(
            ResultShare.tenant_id == self.tenant_id,
            ResultShare.patient_id.in_(sorted(reachable)),
        )
        if report_id is not None:
            query = query.where(ResultShare.report_id == report_id)
        rows = list(
            self._session.scalars(query.order_by(ResultShare.created_at.desc(), ResultShare.id))
        )
        if not rows:
            return []
        opened = self._repository.open_for(
            RESOURCE,
            [
                SealedItem(row.patient_id, SHARES_TABLE, row.id, {"recipient": row.recipient})
                for row in rows
            ],
            purpose=LIST_PURPOSE,
        )
        lines = []
        for row in rows:
            blob = opened.get(row.id, {}).get("recipient")
            if blob is None:
                continue
            lines.append(
                ShareLine(
                    id=row.id,
                    report_id=row.report_id,
                    recipient=blob.decode(),
                    created_at=row.created_at,
                    expires_at=row.expires_at,
                    revoked_at=row.revoked_at,
                    views=row.views,
                    last_viewed_at=row.last_viewed_at,
                    live=row.revoked_at is None and row.expires_at > self._now,
                )
            )
        return lines

    def revoke(self, share_id: uuid.UUID) -> uuid.UUID:
        """End a share now (it stays listed, as ended); returns its report. Revoking an
        ended share changes nothing. Anything not the account's: the audited 404."""
        reachable = self._portal.reachable()
        row = self._session.scalars(
            select(ResultShare)
            .where(ResultShare.tenant_id == self.tenant_id, ResultShare.id == share_id)
            .with_for_update()
        ).one_or_none()
        if row is None or row.patient_id not in reachable:
            error = self._keyring.audit.refusal(
                ResultNotFoundError("not found"),
                AuditAction.RESULT_SHARE_REVOKE,
                tenant_id=self.tenant_id,
                target_type=SHARE_TARGET,
                target_id=share_id,
                purpose=REVOKE_PURPOSE,
            )
            assert isinstance(error, ResultNotFoundError)
            raise error
        if row.revoked_at is None:
            row.revoked_at = self._now
            self._keyring.audit.record(
                AuditAction.RESULT_SHARE_REVOKE,
                tenant_id=self.tenant_id,
                target_type=SUBJECT_TYPE,
                target_id=row.patient_id,
                purpose=REVOKE_PURPOSE,
            )
        return row.report_id

    def _live_count(self, report_id: uuid.UUID) -> int:
        return int(
            self._session.scalar(
                select(func.count())
                .select_from(ResultShare)
                .where(
                    ResultShare.tenant_id == self.tenant_id,
                    ResultShare.report_id == report_id,
                    ResultShare.revoked_at.is_(None),
                    ResultShare.expires_at > self._now,
                )
            )
            or 0
        )


# --- opening a link (anonymous) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class SharedReport:
    """What the doctor with the link sees: whose report, the report, until when."""

    share_id: uuid.UUID
    patient_name: str
    birth_date: dt.date | None
    expires_at: dt.datetime
    detail: ReportDetail

    def __repr__(self) -> str:
        return f"SharedReport({self.share_id})"


class ShareViewer:
    """Opens links for anonymous visitors of one tenant, in the caller's transaction."""

    def __init__(
        self,
        session: Session,
        provider: KeyProvider,
        tenant_id: uuid.UUID,
        limiter: RateLimiter,
        *,
        client: str,
        context: AuditContext | None = None,
        now: dt.datetime | None = None,
    ) -> None:
        self._session = session
        self._provider = provider
        self._tenant_id = tenant_id
        self._limiter = limiter
        self._client = client
        self._context = context
        self._now = now or utcnow()

    def open(self, token: str) -> SharedReport | None:
        """The shared report, its view counted and audited; ``None`` for every link that does
        not open (one answer). Raises :class:`ShareThrottledError`."""
        found = self._live(token, pdf=False)
        if found is None:
            return None
        share, report, keyring = found
        repository = PatientRepository(self._session, keyring)
        reader = ReportReader(self._session, repository, self._tenant_id, VIEW_PURPOSE)
        who = PatientRepository(self._session, keyring, IdentityVerification(IDENTITY_FIELDS))
        record = who.get(share.patient_id, purpose=VIEW_PURPOSE)
        if record is None:  # erased meanwhile: its key is gone
            raise ShareGoneError
        try:
            detail = reader.detail(report, trends=False)  # this report only
        except LookupError:
            raise ShareGoneError from None
        names = [record.first_names or "", record.used_name or record.birth_name or ""]
        return SharedReport(
            share_id=share.id,
            patient_name=" ".join(n for n in names if n),
            birth_date=record.birth_date,
            expires_at=share.expires_at,
            detail=detail,
        )

    def pdf(self, token: str) -> bytes | None:
        """The shared report's PDF (a view too); ``None`` as :meth:`open`."""
        found = self._live(token, pdf=True)
        if found is None:
            return None
        _, report, keyring = found
        reader = ReportReader(
            self._session, PatientRepository(self._session, keyring), self._tenant_id, VIEW_PURPOSE
        )
        content = reader.pdf(report)
        if content is None:
            raise ShareGoneError
        return content

    def _live(self, token: str, *, pdf: bool) -> tuple[ResultShare, ResultReport, Keyring] | None:
        """The live share of ``token`` and its released report (with a PDF if ``pdf``), the
        view counted and recorded, and the keyring its opening runs with; ``None`` (a
        failure, counted and recorded) otherwise. Nothing is opened here."""
        try:
            if not self._limiter.test(FAILURES_PER_CLIENT, self._client).allowed:
                if self._limiter.hit(THROTTLE_RECORDS_PER_CLIENT, self._client).allowed:
                    self._trail().record(
                        AuditAction.RESULT_SHARE_FAILURE,
                        tenant_id=self._tenant_id,
                        purpose="throttled",
                        outcome=Outcome.DENIED,
                    )
                raise ShareThrottledError
        except RateLimiterUnavailable:
            raise ShareThrottledError from None
        if not TOKEN_PATTERN.fullmatch(token):
            self._failed(None)
            return None
        share = self._session.scalars(
            select(ResultShare).where(
                ResultShare.tenant_id == self._tenant_id,
                ResultShare.token_digest == token_digest(token),
            )
        ).one_or_none()
        if share is None:
            self._failed(None)
            return None
        if share.revoked_at is not None or share.expires_at <= self._now:
            self._failed(share.id)
            return None
        report = self._session.scalars(
            select(ResultReport).where(
                ResultReport.tenant_id == self._tenant_id,
                ResultReport.id == share.report_id,
                ResultReport.patient_id == share.patient_id,
                ResultReport.status == ReportStatus.RELEASED.value,
            )
        ).one_or_none()
        if report is None or (pdf and report.pdf is None):
            self._failed(share.id)
            return None
        if not self._limiter.hit_or_deny(VIEWS_PER_CLIENT, self._client).allowed:
            raise ShareThrottledError
        counted = self._session.execute(
            update(ResultShare)
            .where(
                ResultShare.tenant_id == self._tenant_id,
                ResultShare.id == share.id,
                ResultShare.revoked_at.is_(None),
                ResultShare.expires_at > self._now,
            )
            .values(views=ResultShare.views + 1, last_viewed_at=self._now)
            .execution_options(synchronize_session=False)
        )
        assert isinstance(counted, CursorResult)
        if counted.rowcount != 1:  # revoked meanwhile
            self._failed(share.id)
            return None
        keyring = TenantKeyring(
            self._session,
            self._provider,
            self._tenant_id,
            share_principal(share.id),
            context=self._context,
        )
        keyring.audit.record(
            AuditAction.RESULT_SHARE_VIEW,
            tenant_id=self._tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=share.patient_id,
            purpose=VIEW_PURPOSE,
        )
        return share, report, keyring

    def _trail(self) -> AuditTrail:
        return AuditTrail(self._session, ANONYMOUS, self._context)

    def _failed(self, share_id: uuid.UUID | None) -> None:
        """Count the failure against the client and record it; the one neutral answer."""
        with contextlib.suppress(RateLimiterUnavailable):  # the next check fails closed
            self._limiter.hit(FAILURES_PER_CLIENT, self._client)
        self._trail().record(
            AuditAction.RESULT_SHARE_FAILURE,
            tenant_id=self._tenant_id,
            target_type=SHARE_TARGET if share_id is not None else None,
            target_id=share_id,
            purpose=VIEW_PURPOSE,
            outcome=Outcome.FAILURE,
        )
        return None
