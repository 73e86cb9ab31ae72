"""The desk service on SQLite and PostgreSQL: two desks checking the same patient in at the
same moment (exactly one wins, the other gets the French conflict), a sampler's day limited
to today, and walk-in lookups throttled per staff member."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from access_world import World
from caller_world import CallerWorld, alpha_settings, build_caller_world
from labvault.appointments.models import Appointment
from labvault.core.access.principals import Principal, PrincipalKind
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction
from labvault.core.ratelimit import RateDecision, RateRule
from labvault.core.runtime import Runtime
from labvault.desk.services import DeskConflictError, DeskInputError, DeskService, paris_day
from labvault.patients.scope import staff_scope


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
