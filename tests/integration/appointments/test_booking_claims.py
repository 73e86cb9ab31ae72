"""How a hold claims boxes: the lowest box free in each slot of the visit, all slots in one
``INSERT ... ON CONFLICT DO NOTHING`` (the UNIQUE constraint still decides), so the work of a
hold does not grow with how full the slot already is. On SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from booking_world import PARIS, BookingWorld, build_booking_world, next_slot
from sqlalchemy import Engine, event, select

from access_world import NOW, build_world
from labvault.appointments.models import SlotClaim
from labvault.appointments.services import BookingError, SlotTakenError
from labvault.appointments.views import AppointmentView
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.events import AuditTrail, audited_transaction
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.schedules.services import SiteScheduleService

JOB = SystemPrincipal("test:booking-claims")
NINE = next_slot((NOW + dt.timedelta(days=1)).date(), 9)
STEP = dt.timedelta(minutes=15)


@pytest.fixture
def bw(runtime: Runtime) -> BookingWorld:
    return build_booking_world(runtime, build_world(runtime))


def _clock() -> dt.datetime:
    return NOW


@contextmanager
def _statements(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(" ".join(str(args[2]).split()))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _hold(bw: BookingWorld, patient: str, exam: str, starts: dt.datetime) -> AppointmentView:
    with audited_transaction(bw.world.sessions) as session:
        service = bw.service(session, JOB, _clock)
        return service.hold(bw.world.patients[patient], bw.annex, [bw.exams[exam]], starts)


def _boxes(bw: BookingWorld, appointment_id: uuid.UUID) -> list[tuple[dt.datetime, int]]:
    with transaction(bw.world.sessions) as session:
        rows = session.execute(
            select(SlotClaim.starts_at, SlotClaim.box)
            .where(SlotClaim.appointment_id == appointment_id)
            .order_by(SlotClaim.starts_at)
        )
        return [(starts_at, box) for starts_at, box in rows]


def _engine(bw: BookingWorld) -> Engine:
    with bw.world.sessions() as session:
        bind = session.get_bind()
    assert isinstance(bind, Engine)
    return bind


def test_a_hold_takes_the_lowest_free_box_with_one_insert(bw: BookingWorld) -> None:
    first, second, _ = (
        _hold(bw, name, "glucose", NINE) for name in ("today", "tomorrow", "in_20_days")
    )
    assert [box for _, box in _boxes(bw, second.id)] == [1]
    with audited_transaction(bw.world.sessions) as session:
        bw.service(session, JOB, _clock).cancel(second.id)  # box 1 is free again

    with _statements(_engine(bw)) as seen:
        fourth = _hold(bw, "29_days_ago", "glucose", NINE)
    assert _boxes(bw, fourth.id) == [(NINE, 1)]
    inserts = [sql for sql in seen if sql.startswith("INSERT INTO slot_claims")]
    assert len(inserts) == 1
    assert "ON CONFLICT" in inserts[0]
    # One SAVEPOINT: the call's own (all or nothing), none per box tried.
    assert len([sql for sql in seen if sql.startswith("SAVEPOINT")]) == 1
    assert _boxes(bw, first.id) == [(NINE, 0)]


def test_a_longer_visit_claims_each_slot_in_one_insert(bw: BookingWorld) -> None:
    _hold(bw, "today", "glucose", NINE)  # 09:00 box 0
    _hold(bw, "tomorrow", "glucose", NINE + STEP)  # 09:15 box 0
    _hold(bw, "in_20_days", "glucose", NINE + STEP)  # 09:15 box 1

    with _statements(_engine(bw)) as seen:
        long = _hold(bw, "29_days_ago", "long", NINE)  # 40 minutes: 09:00, 09:15, 09:30
    assert _boxes(bw, long.id) == [(NINE, 1), (NINE + STEP, 2), (NINE + 2 * STEP, 0)]
    assert len([sql for sql in seen if sql.startswith("INSERT INTO slot_claims")]) == 1

    # 09:15 is now full (3 bookable boxes): the same visit again is refused, nothing left.
    before = _all_claims(bw)
    with pytest.raises(SlotTakenError):
        _hold(bw, "45_days_ago", "long", NINE)
    assert _all_claims(bw) == before


def test_an_expired_hold_is_cleared_only_where_the_visit_needs_its_box(
    bw: BookingWorld,
) -> None:
    def later() -> dt.datetime:
        return NOW + dt.timedelta(minutes=11)

    expired = _hold(bw, "today", "long", NINE)  # 09:00, 09:15, 09:30 on box 0, expiring
    with audited_transaction(bw.world.sessions) as session:
        service = bw.service(session, JOB, later)
        taken = service.hold(bw.world.patients["tomorrow"], bw.annex, [bw.exams["glucose"]], NINE)
    assert _boxes(bw, taken.id) == [(NINE, 0)]  # the expired claim gave way
    left = _boxes(bw, expired.id)
    assert left == [(NINE + STEP, 0), (NINE + 2 * STEP, 0)]  # other slots untouched


def _all_claims(bw: BookingWorld) -> list[tuple[uuid.UUID, dt.datetime, int]]:
    with transaction(bw.world.sessions) as session:
        rows = session.execute(
            select(SlotClaim.appointment_id, SlotClaim.starts_at, SlotClaim.box).order_by(
                SlotClaim.starts_at, SlotClaim.box
            )
        )
        return [(appointment, starts_at, box) for appointment, starts_at, box in rows]


def test_closed_days_offer_nothing_to_search_hold_or_reschedule(bw: BookingWorld) -> None:
    """Closures come with the site's schedule (one query): a closed local day has no slot,
    a hold or a move into it is refused, the days around it are untouched."""
    tomorrow = NINE.astimezone(PARIS).date()
    after = tomorrow + dt.timedelta(days=1)
    with transaction(bw.world.sessions) as session:
        schedules = SiteScheduleService(
            session, AuditTrail(session, JOB), bw.world.tenant, clock=_clock
        )
        schedules.add_closure(bw.annex, starts_on=tomorrow, ends_on=tomorrow, reason="Inventaire")
    glucose = [bw.exams["glucose"]]
    with audited_transaction(bw.world.sessions) as session:
        slots = bw.service(session, JOB, _clock).search_slots(bw.annex, glucose, tomorrow, after)
    days = {slot.starts_at.astimezone(PARIS).date() for slot in slots}
    assert days == {after}
    with pytest.raises(BookingError, match="pas proposé"):
        _hold(bw, "today", "glucose", NINE)
    with pytest.raises(BookingError, match="pas proposé"):
        _hold(bw, "today", "glucose", next_slot(tomorrow, 17, 45))  # the day's last slot
    held = _hold(bw, "today", "glucose", NINE + dt.timedelta(days=1))
    with (
        pytest.raises(BookingError, match="pas proposé"),
        audited_transaction(bw.world.sessions) as session,
    ):
        bw.service(session, JOB, _clock).reschedule(held.id, NINE)
    assert _boxes(bw, held.id) == [(NINE + dt.timedelta(days=1), 0)]
    # The main site is open that day.
    with audited_transaction(bw.world.sessions) as session:
        view = bw.service(session, JOB, _clock).hold(
            bw.world.patients["tomorrow"], bw.main, glucose, NINE
        )
    assert view.starts_at == NINE
