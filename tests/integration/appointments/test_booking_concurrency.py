"""No double booking under concurrency, on PostgreSQL: 200 clients released together behind
a barrier, each in its own session and transaction, hold then confirm the same slot.

Capacity 1: exactly one succeeds, the 199 others get :class:`SlotTakenError` ("Ce créneau
vient d'être pris..."), one claim row and one booked appointment remain. Capacity 3: exactly
three. The pool is smaller than the crowd (the server is shared with other test runs), so
clients also queue for connections, as application workers do.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from booking_world import BookingWorld, build_booking_world, next_slot
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from access_world import build_world
from labvault.appointments.models import Appointment, AppointmentStatus, SlotClaim
from labvault.appointments.services import BookingService, SlotTakenError
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.events import audited_transaction
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import make_session_factory, transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.core.tenancy import session_info
from labvault.patients.scope import SYSTEM_ACCESS

pytestmark = pytest.mark.pg

CLIENTS = 200
POOL = 30
"""Connections for the crowd: the server's max_connections (100) is shared with other runs."""
JOB = SystemPrincipal("test:booking-crowd")


@pytest.fixture
def backend() -> str:
    """Concurrent writers need a server: SQLite serialises writers by locking the file."""
    return "postgresql"


@pytest.fixture
def bw(runtime: Runtime) -> BookingWorld:
    return build_booking_world(runtime, build_world(runtime))


@pytest.fixture
def crowd_sessions(runtime: Runtime, bw: BookingWorld) -> Iterator[sessionmaker[Session]]:
    engine: Engine = create_engine(
        runtime.settings.sqlalchemy_url, pool_size=POOL, max_overflow=0, pool_timeout=120
    )
    yield make_session_factory(engine, session_info(bw.world.tenant))
    engine.dispose()


def _starts() -> dt.datetime:
    """09:00 Paris, three days from now: a slot whatever the day the suite runs."""
    return next_slot((utcnow() + dt.timedelta(days=3)).date(), 9)


def _crowd(
    bw: BookingWorld, sessions: sessionmaker[Session], site: uuid.UUID, starts: dt.datetime
) -> Counter[str]:
    patients = sorted(bw.world.patients.values())
    barrier = threading.Barrier(CLIENTS)
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def attempt(number: int) -> None:
        barrier.wait()
        outcome = "booked"
        try:
            with audited_transaction(sessions) as session:
                keyring = TenantKeyring(session, bw.runtime.key_provider, bw.world.tenant, JOB)
                service = BookingService(session, keyring, SYSTEM_ACCESS, bw.runtime.settings)
                held = service.hold(
                    patients[number % len(patients)], site, [bw.exams["glucose"]], starts
                )
                service.confirm(held.id)
        except SlotTakenError:
            outcome = "slot_taken"
        except Exception as error:  # anything else is a failure of the guarantee
            outcome = f"error:{type(error).__name__}"
        with lock:
            outcomes[outcome] += 1

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


def _state(bw: BookingWorld, site: uuid.UUID, starts: dt.datetime) -> tuple[int, int]:
    with transaction(bw.world.sessions) as session:
        claims = session.scalar(
            select(func.count())
            .select_from(SlotClaim)
            .where(SlotClaim.site_id == site, SlotClaim.starts_at == starts)
        )
        booked = session.scalar(
            select(func.count())
            .select_from(Appointment)
            .where(
                Appointment.site_id == site,
                Appointment.starts_at == starts,
                Appointment.status == AppointmentStatus.BOOKED.value,
            )
        )
        return claims or 0, booked or 0


@pytest.mark.parametrize(("site_name", "capacity"), [("main", 1), ("annex", 3)])
def test_a_crowd_books_exactly_the_slot_s_capacity(
    bw: BookingWorld, crowd_sessions: sessionmaker[Session], site_name: str, capacity: int
) -> None:
    site = bw.world.sites[site_name]
    starts = _starts()
    outcomes = _crowd(bw, crowd_sessions, site, starts)
    assert outcomes == Counter({"booked": capacity, "slot_taken": CLIENTS - capacity})
    assert _state(bw, site, starts) == (capacity, capacity)
    with transaction(bw.world.sessions) as session:
        boxes = sorted(
            session.scalars(
                select(SlotClaim.box).where(
                    SlotClaim.site_id == site, SlotClaim.starts_at == starts
                )
            )
        )
    assert boxes == list(range(capacity))  # never the walk-in box
