"""The access world (``access_world``) over HTTP: the deployment serves tenant A, every
staff member of the world has an account bound to it, and two patient accounts act for
their own records. Sessions are put straight in the cookie (how people log in is tested
elsewhere); appointments are moved so that the world's NOW is the real now."""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from dataclasses import dataclass, field

from sqlalchemy import select, update

from access_world import NOW, TODAY, World, build_world
from helpers import CHEAP_HASHER
from labvault.accounts.models import Account, AccountDependent, AccountKind, AccountSession
from labvault.accounts.services import AccountService
from labvault.appointments.models import Appointment
from labvault.core.access.principals import SystemPrincipal
from labvault.core.config import Settings
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.staff.models import StaffRole

ORIGIN = "https://testserver"
SESSION_COOKIE = "__Host-labvault-session"
PASSWORD = "une phrase de passe assez longue"
SYSTEM = SystemPrincipal("test:callers")
ROLES = tuple(role.value for role in StaffRole)
PATIENT_OWN = "patient"
"""The patient account acting for the record ``today`` (and, if asked, a dependent)."""
PATIENT_OTHER = "other_patient"
"""A patient account acting for the record ``no_appointment``."""


def alpha_settings(settings: Settings) -> Settings:
    """The deployment serves the world's tenant A ("Labo Alpha")."""
    return settings.model_copy(update={"organization": "Labo Alpha"})


@dataclass
class Session:
    token: str
    csrf: str
    record_id: uuid.UUID


@dataclass
class CallerWorld:
    runtime: Runtime
    world: World
    accounts: dict[str, uuid.UUID] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    current: str = ""
    """The caller whose session the test client holds (see the tests' ``as_``)."""

    def service(self, session: object) -> AccountService:
        return AccountService(
            session,  # type: ignore[arg-type]
            tenant_id=self.world.tenant,
            provider=self.runtime.key_provider,
            mailer=self.runtime.mailer,
            limiter=self.runtime.rate_limiter,
            settings=self.runtime.settings,
            hasher=CHEAP_HASHER,
        )

    def provision(
        self,
        name: str,
        *,
        kind: AccountKind,
        role: str | None = None,
        staff_id: uuid.UUID | None = None,
        patient_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        with transaction(self.world.sessions) as session:
            account = self.service(session).provision(
                f"{name.replace('_', '.')}@alpha.example.org",
                Secret(PASSWORD),
                kind=kind,
                security_phrase=None,
                by=SYSTEM,
                role=role,
                staff_id=staff_id,
            )
            if patient_id is not None:
                account.patient_id = patient_id
            account_id = account.id
        self.accounts[name] = account_id
        self.sessions[name] = self.open_session(account_id)
        return account_id

    def open_session(self, account_id: uuid.UUID) -> Session:
        with transaction(self.world.sessions) as session:
            service = self.service(session)
            account = service.account(account_id)
            assert account is not None
            token, record = service.sessions.create(
                tenant_id=self.world.tenant,
                account_id=account_id,
                policy=service._policy(account),
                client_hash=None,
                second_factor="totp",
            )
            csrf = service.sessions.csrf_token(token.reveal())
            return Session(token.reveal(), csrf, record.id)

    def add_dependent(self, name: str, patient_id: uuid.UUID) -> None:
        with transaction(self.world.sessions) as session:
            session.add(
                AccountDependent(
                    tenant_id=self.world.tenant,
                    account_id=self.accounts[name],
                    patient_id=patient_id,
                    relationship="parent",
                    verified_by="desk",
                    created_at=utcnow(),
                )
            )

    def age_second_factor(self, name: str, minutes: int = 60) -> None:
        """The session's last second-factor proof is ``minutes`` old: no fresh step-up."""
        with transaction(self.world.sessions) as session:
            session.execute(
                update(AccountSession)
                .where(AccountSession.id == self.sessions[name].record_id)
                .values(second_factor_at=utcnow() - dt.timedelta(minutes=minutes), step_up_at=None)
            )


def _within_today(moment: dt.datetime, now: dt.datetime) -> dt.datetime:
    """``moment`` moved into now's Paris day if it fell outside (late in the evening, "now +
    2 h" is tomorrow): the world's "today" records must be today whatever the hour."""
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    day = now.astimezone(paris).date()
    start = dt.datetime.combine(day, dt.time(0, 1), paris)
    end = dt.datetime.combine(day, dt.time(23, 59), paris)
    return min(max(moment, start), end).astimezone(dt.UTC)


def build_caller_world(runtime: Runtime) -> CallerWorld:
    world = build_world(runtime)
    now = utcnow()
    delta = now - NOW
    today = {world.patients[name] for name in TODAY}
    with transaction(world.sessions) as session:
        for appointment in session.scalars(select(Appointment)):
            starts = appointment.starts_at
            if starts.tzinfo is None:
                starts = starts.replace(tzinfo=dt.UTC)
            moved = starts + delta
            if appointment.patient_id in today:
                moved = _within_today(moved, now)
            appointment.starts_at = moved
    built = CallerWorld(runtime, world)
    for role in ROLES:
        built.provision(role, kind=AccountKind.STAFF, role=role, staff_id=world.staff[role])
    built.provision(PATIENT_OWN, kind=AccountKind.PATIENT, patient_id=world.patients["today"])
    built.provision(
        PATIENT_OTHER, kind=AccountKind.PATIENT, patient_id=world.patients["no_appointment"]
    )
    return built


def account_of(runtime: Runtime, world: World, account_id: uuid.UUID) -> Account:
    with runtime.tenant_sessions(world.tenant)() as session:
        found = session.get(Account, account_id)
        assert found is not None
        session.expunge(found)
        return found
