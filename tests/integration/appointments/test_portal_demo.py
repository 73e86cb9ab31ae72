"""``labvault demo`` seeds what the portal needs to book: a catalog, the sites' schedules,
and demo appointments that are real bookings (sealed exams, claims), idempotently."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import func, select
from typer.testing import CliRunner

from labvault.appointments.models import Appointment, SlotClaim
from labvault.appointments.services import BookingService
from labvault.catalog.models import Exam
from labvault.catalog.schemas import is_valid_loinc
from labvault.cli import app
from labvault.core.access.principals import SystemPrincipal
from labvault.core.config import Settings
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.demo import DEMO_EXAMS, DEMO_ORGANIZATION
from labvault.organizations.models import Site
from labvault.organizations.services import get_organization
from labvault.patients.scope import SYSTEM_ACCESS
from labvault.schedules.models import SiteSchedule

runner = CliRunner()


def test_the_demo_can_be_booked_and_its_appointments_are_real_bookings(
    cli_env: Settings, runtime: Runtime
) -> None:
    first = runner.invoke(app, ["demo", "--no-serve", "--patients", "12"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["demo", "--no-serve", "--patients", "12"])
    assert again.exit_code == 0, again.output
    with transaction(runtime.sessions) as session:
        organization_id = get_organization(session, DEMO_ORGANIZATION).id
        exams = {exam.code: exam for exam in session.scalars(select(Exam))}
        assert set(exams) == {str(raw["code"]) for raw in DEMO_EXAMS}, "seeded once"
        assert all(exam.loinc is None or is_valid_loinc(exam.loinc) for exam in exams.values())
        assert exams["GLY"].fasting_hours == 12
        assert (exams["CORT"].window_start, exams["CORT"].window_end) == (dt.time(7), dt.time(10))
        assert exams["ECBU"].no_appointment
        schedules = list(session.scalars(select(SiteSchedule)))
        assert len(schedules) == session.scalar(select(func.count()).select_from(Site)) == 2
        assert {(s.slot_minutes, s.sampling_boxes, s.walk_in_boxes) for s in schedules} == {
            (10, 3, 1)
        }
        appointments = list(session.scalars(select(Appointment)))
        assert len(appointments) == 12
        assert session.scalar(select(func.count()).select_from(SlotClaim)) == 12
        keyring = TenantKeyring(
            session, runtime.key_provider, organization_id, SystemPrincipal("test:demo")
        )
        booking = BookingService(session, keyring, SYSTEM_ACCESS, runtime.settings)
        views = booking.list_for_patients([a.patient_id for a in appointments])
        assert len(views) == 12
        assert {view.exam_ids for view in views} == {(exams["NFS"].id,)}
        assert all(view.ends_at is not None for view in views)
        # A fasting exam at the first site is bookable in the demo (weekday mornings).
        site_id = session.scalars(select(Site.id).order_by(Site.name)).first()
        assert isinstance(site_id, uuid.UUID)
        today = dt.date.today()
        slots = booking.search_slots(
            site_id, [exams["GLY"].id], today, today + dt.timedelta(days=7)
        )
        assert slots
        assert all(slot.starts_at.minute % 10 == 0 for slot in slots)
