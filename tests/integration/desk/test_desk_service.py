"""The desk service on SQLite and PostgreSQL: two desks checking the same patient in at the
same moment (exactly one wins, the other gets the French conflict), a sampler's day limited
to today, and walk-in lookups throttled per staff member."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
import zoneinfo
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from access_world import World
from caller_world import CallerWorld, alpha_settings, build_caller_world
from labvault.appointments.models import Appointment, AppointmentKind, AppointmentStatus
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction, utcnow
from labvault.core.ratelimit import RateDecision, RateLimiterUnavailable, RateRule
from labvault.core.runtime import Runtime
from labvault.desk.services import (
    PARIS,
    WALK_IN_DAILY_LIMIT,
    WALK_IN_HOURLY_LIMIT,
    DeskConflictError,
    DeskInputError,
    DeskService,
    WalkInNotFoundError,
    paris_day,
)
from labvault.organizations.models import Site
from labvault.patients.scope import staff_scope
from labvault.security.models import SecurityAlert


class DenyEverything:
    def hit(self, rule: RateRule, *identifiers: str) -> RateDecision:
        return RateDecision(allowed=False, retry_after=60.0, remaining=0)


@pytest.fixture
def alpha(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime(alpha_settings(settings))
    yield runtime
    runtime.close()


@pytest.fixture
def cw(alpha: Runtime) -> CallerWorld:
    return build_caller_world(alpha)


def desk(
    session: object, runtime: Runtime, world: World, role: str, **kwargs: object
) -> DeskService:
    principal = Principal(PrincipalKind.STAFF, f"desk-{role}", role=role)
    keyring = TenantKeyring(session, runtime.key_provider, world.tenant, principal)  # type: ignore[arg-type]
    scope = staff_scope(session, principal, world.tenant, world.staff[role])  # type: ignore[arg-type]
    return DeskService(session, keyring, scope, **kwargs)  # type: ignore[arg-type]


def today_appointment(cw: CallerWorld) -> uuid.UUID:
    with cw.world.sessions() as session:
        found = session.scalar(
            select(Appointment.id).where(Appointment.patient_id == cw.world.patients["today"])
        )
        assert found is not None
        return found


def test_two_desks_checking_in_at_once_one_wins(cw: CallerWorld) -> None:
    appointment = today_appointment(cw)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt() -> None:
        try:
            with transaction(cw.world.sessions) as session:
                service = desk(session, cw.runtime, cw.world, "receptionist")
                barrier.wait(timeout=10)
                service.check_in(appointment)
            result = "ok"
        except DeskConflictError:
            result = "conflict"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["conflict", "ok"]
    with cw.world.sessions() as session:
        row = session.get(Appointment, appointment)
        assert row is not None
        assert row.status == "checked_in"
        assert row.checked_in_at is not None


def test_a_sampler_sees_today_only(cw: CallerWorld) -> None:
    with transaction(cw.world.sessions) as session:
        service = desk(session, cw.runtime, cw.world, "sampler")
        site = cw.world.sites["main"]
        today = service.schedule(site, service.today())
        assert {row.patient_id for row in today} == {
            cw.world.patients["today"],
            cw.world.patients["earlier_today"],
        }
        assert service.schedule(site, service.today() + dt.timedelta(days=1)) == []
        reception = desk(session, cw.runtime, cw.world, "receptionist")
        tomorrow = reception.schedule(site, reception.today() + dt.timedelta(days=1))
        assert [row.patient_id for row in tomorrow] == [cw.world.patients["tomorrow"]]
        assert paris_day(tomorrow[0].starts_at) == reception.today() + dt.timedelta(days=1)


def test_walk_in_lookups_are_throttled_before_any_search(cw: CallerWorld) -> None:
    person = cw.world.inputs["no_appointment"]
    with transaction(cw.world.sessions) as session:
        service = desk(session, cw.runtime, cw.world, "receptionist", limiter=DenyEverything())
        with pytest.raises(DeskInputError, match="Trop de recherches"):
            service.walk_in(
                None,
                birth_name=person.birth_name,
                first_name=person.first_given_name,
                birth_date=person.birth_date,
                nir=None,
            )


def test_walk_in_lookups_are_limited_per_hour_without_alert(cw: CallerWorld) -> None:
    """The real limiter: the hour's lookups, then a refusal before any search, no alert
    (the alert is for the daily limit)."""
    person = cw.world.inputs["no_appointment"]
    limiter = cw.runtime.rate_limiter
    with transaction(cw.world.sessions) as session:
        service = desk(session, cw.runtime, cw.world, "receptionist", limiter=limiter)
        for _ in range(WALK_IN_HOURLY_LIMIT):
            with pytest.raises(WalkInNotFoundError):
                service.walk_in(
                    None,
                    birth_name="Personne",
                    first_name=person.first_given_name,
                    birth_date=person.birth_date,
                    nir=None,
                )
        with pytest.raises(DeskInputError, match="Trop de recherches") as raised:
            service.walk_in(
                None,
                birth_name=person.birth_name,
                first_name=person.first_given_name,
                birth_date=person.birth_date,
                nir=None,
            )
        assert not isinstance(raised.value, WalkInNotFoundError)
        assert session.scalar(select(func.count()).select_from(SecurityAlert)) == 0
    assert WALK_IN_HOURLY_LIMIT <= WALK_IN_DAILY_LIMIT <= 20


class Unavailable:
    def hit(self, rule: RateRule, *identifiers: str) -> RateDecision:
        raise RateLimiterUnavailable("down")


def test_walk_in_lookups_fail_closed_when_the_limiter_is_down(cw: CallerWorld) -> None:
    person = cw.world.inputs["no_appointment"]
    with transaction(cw.world.sessions) as session:
        service = desk(session, cw.runtime, cw.world, "receptionist", limiter=Unavailable())
        with pytest.raises(DeskInputError, match="indisponible"):
            service.walk_in(
                None,
                birth_name=person.birth_name,
                first_name=person.first_given_name,
                birth_date=person.birth_date,
                nir=None,
            )


# --- the site's own time zone -----------------------------------------------------------------

FAR_EAST = "Pacific/Kiritimati"  # UTC+14: 13 hours ahead of Paris in winter, 12 in summer


def test_the_desk_uses_the_site_s_time_zone(cw: CallerWorld) -> None:
    """At noon in Paris it is already tomorrow on Kiritimati: the site's day, not Paris's,
    decides the schedule, the round, check-in and the identity check."""
    site_id = cw.world.sites["main"]
    paris_today = paris_day(utcnow())
    noon = dt.datetime.combine(paris_today, dt.time(12), PARIS).astimezone(dt.UTC)
    zone = zoneinfo.ZoneInfo(FAR_EAST)
    site_today = noon.astimezone(zone).date()
    assert site_today == paris_today + dt.timedelta(days=1)
    patient = cw.world.patients["in_20_days"]

    def add(starts: dt.datetime, kind: AppointmentKind = AppointmentKind.SITE) -> uuid.UUID:
        with transaction(cw.world.sessions) as session:
            row = Appointment(
                id=uuid.uuid4(),
                tenant_id=cw.world.tenant,
                patient_id=patient,
                site_id=site_id,
                starts_at=starts,
                status=AppointmentStatus.BOOKED.value,
                kind=kind.value,
            )
            session.add(row)
            return row.id

    with transaction(cw.world.sessions) as session:
        site = session.get(Site, site_id)
        assert site is not None
        site.timezone = FAR_EAST
    # Paris: today 10:00 / 14:00 and tomorrow 00:00; Kiritimati: today 23:00, tomorrow
    # 03:00 and 13:00.
    site_yesterday = add(noon - dt.timedelta(hours=2))
    site_morning = add(noon + dt.timedelta(hours=2))
    site_noon = add(noon + dt.timedelta(hours=12))
    home = add(noon + dt.timedelta(hours=2), AppointmentKind.HOME)
    with transaction(cw.world.sessions) as session:
        service = desk(session, cw.runtime, cw.world, "receptionist", clock=lambda: noon)
        chosen = service.site(site_id)
        assert chosen.timezone == FAR_EAST
        assert service.today(chosen) == site_today
        listed = {row.appointment_id: row for row in service.schedule(site_id, site_today)}
        assert site_morning in listed
        assert site_noon in listed
        assert site_yesterday not in listed
        assert listed[site_noon].can_check_in
        assert listed[site_noon].can_check_identity
        assert [r.appointment_id for r in service.round(site_id, site_today)] == [home]
        assert service.round(site_id, paris_today) == []
        with pytest.raises(DeskConflictError):
            service.check_in(site_yesterday)
        with pytest.raises(DeskConflictError):
            service.identity_check(site_yesterday, "cni")
        assert service.check_in(site_noon).status is AppointmentStatus.CHECKED_IN
        outcome = service.identity_check(site_noon, "cni")
        assert outcome.status_after.value == "VALI"
