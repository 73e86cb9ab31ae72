"""Changes racing on PostgreSQL (review 6): two changes of one appointment at once run one
after the other (its row is locked), so neither leaves a claim behind (M1); bookings of
one patient account at once cannot each see room for one more (M2).

Each test holds the first change's transaction open, starts the second in a thread, then
commits the first: without the locks the second one works from what it saw before.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from booking_world import SETUP, BookingWorld, build_booking_world, next_slot
from sqlalchemy import select

from access_world import build_world
from labvault.appointments.models import Appointment, AppointmentStatus, SlotClaim
from labvault.appointments.services import MAX_LIVE_PER_RECORD, BookingError, BookingService
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime

PG_ONLY = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.pg)], indirect=True
)
WAIT = 1.5
"""How long the first change stays uncommitted while the second one runs."""


def _race(
    bw: BookingWorld,
    first: Callable[[Any], Any],
    second: Callable[[Any], Any],
) -> list[BaseException]:
    """``first`` in a transaction left open while ``second`` runs in a thread; then both
    end. The errors of ``second``."""
    errors: list[BaseException] = []
    session = bw.world.sessions()
    try:
        first(session)

        def other() -> None:
            try:
                with transaction(bw.world.sessions) as own:
                    second(own)
            except BaseException as error:  # reported to the test
                errors.append(error)

        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(WAIT)
        session.commit()
    finally:
        session.close()
    thread.join(30)
    assert not thread.is_alive()
    return errors


def _claims(bw: BookingWorld, appointment_id: uuid.UUID) -> tuple[str, dt.datetime, list[Any]]:
    with transaction(bw.world.sessions) as session:
        row = session.get(Appointment, appointment_id)
        assert row is not None
        claims = session.execute(
            select(SlotClaim.starts_at, SlotClaim.expires_at).where(
                SlotClaim.appointment_id == appointment_id
            )
        ).all()
        return row.status, row.starts_at, list(claims)


@PG_ONLY
@pytest.mark.parametrize("second", ["reschedule", "cancel"])
def test_two_changes_of_one_appointment_leave_no_claim_behind(
    runtime: Runtime, second: str
) -> None:
    bw = build_booking_world(runtime, build_world(runtime))
    day = (utcnow() + dt.timedelta(days=3)).date()
    s0, s1, s2 = next_slot(day, 9), next_slot(day, 10), next_slot(day, 11)
    patient = bw.world.patients["tomorrow"]
    glucose = [bw.exams["glucose"]]
    with transaction(bw.world.sessions) as session:
        service = bw.service(session, SETUP, utcnow)
        appointment = service.hold(patient, bw.main, glucose, s0).id
        service.confirm(appointment)

    def move(to: dt.datetime) -> Callable[[Any], Any]:
        return lambda session: bw.service(session, SETUP, utcnow).reschedule(appointment, to)

    def cancel(session: Any) -> Any:
        return bw.service(session, SETUP, utcnow).cancel(appointment)

    errors = _race(bw, move(s1), move(s2) if second == "reschedule" else cancel)
    assert errors == []
    status, starts, claims = _claims(bw, appointment)
    if second == "reschedule":
        assert status == AppointmentStatus.BOOKED.value
        assert starts == s2
        assert [(at, expires) for at, expires in claims] == [(s2, None)]
    else:
        assert status == AppointmentStatus.CANCELLED.value
        assert claims == []
    # Every slot is free again but the one the appointment holds.
    with transaction(bw.world.sessions) as session:
        held = session.scalars(
            select(SlotClaim.starts_at).where(SlotClaim.starts_at.in_([s0, s1, s2]))
        ).all()
    assert held == ([s2] if second == "reschedule" else [])


@PG_ONLY
def test_bookings_of_one_account_at_once_keep_to_the_limit(runtime: Runtime) -> None:
    bw = build_booking_world(runtime, build_world(runtime))
    day = (utcnow() + dt.timedelta(days=3)).date()
    patient = bw.world.patients["no_appointment"]
    glucose = [bw.exams["glucose"]]

    def as_patient(session: Any) -> BookingService:
        return bw.for_patient(session, "no_appointment", utcnow)

    for index in range(MAX_LIVE_PER_RECORD - 1):
        with transaction(bw.world.sessions) as session:
            as_patient(session).hold(patient, bw.annex, glucose, next_slot(day, 9, 15 * index))

    def book(at: dt.datetime) -> Callable[[Any], Any]:
        return lambda session: as_patient(session).hold(patient, bw.annex, glucose, at)

    errors = _race(bw, book(next_slot(day, 10)), book(next_slot(day, 11)))
    assert len(errors) == 1
    assert isinstance(errors[0], BookingError)
    assert errors[0].code == "too_many_appointments"
    with transaction(bw.world.sessions) as session:
        live = session.scalars(
            select(Appointment.id).where(
                Appointment.patient_id == patient,
                Appointment.status == AppointmentStatus.HELD.value,
            )
        ).all()
    assert len(live) == MAX_LIVE_PER_RECORD
