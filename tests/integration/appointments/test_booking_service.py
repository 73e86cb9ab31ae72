"""BookingService against a real database: slots, hold then confirm, expiry, capacity,
reschedule atomicity, deadlines, home visits, authorization, and nothing written on refusal."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from booking_world import BookingWorld, build_booking_world, next_slot
from sqlalchemy import func, select

from access_world import NOW, build_world
from labvault.appointments.models import (
    Appointment,
    AppointmentStatus,
    PatientDocument,
    SlotClaim,
)
from labvault.appointments.services import (
    AppointmentNotFoundError,
    BookingError,
    BookingService,
    SlotTakenError,
    UnknownSiteError,
)
from labvault.appointments.views import HomeAddress
from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import audited_transaction
from labvault.core.audit.models import AuditEvent
from labvault.core.db import transaction
from labvault.core.runtime import Runtime

TOMORROW = (NOW + dt.timedelta(days=1)).date()
"""NOW is Wednesday 2026-11-25 11:00 in Paris; tomorrow is a Thursday."""
NINE = next_slot(TOMORROW, 9)
ADDRESS = HomeAddress("12 rue des Lilas", "75011", "Paris", "Code 1234, 2e étage")


class Clock:
    def __init__(self, now: dt.datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def bw(runtime: Runtime) -> BookingWorld:
    return build_booking_world(runtime, build_world(runtime))


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _run(bw: BookingWorld, action: Callable[[Any], Any]) -> Any:
    with audited_transaction(bw.world.sessions) as session:
        return action(session)


def _as(
    bw: BookingWorld, clock: Clock, name: str, action: Callable[[BookingService], Any], *extra: str
) -> Any:
    return _run(bw, lambda session: action(bw.for_patient(session, name, clock, *extra)))


def _staff(
    bw: BookingWorld, clock: Clock, role: str, action: Callable[[BookingService], Any]
) -> Any:
    return _run(bw, lambda session: action(bw.service(session, bw.world.principals[role], clock)))


def _counts(bw: BookingWorld) -> tuple[int, int]:
    with transaction(bw.world.sessions) as session:
        appointments = session.scalar(
            select(func.count()).select_from(Appointment).where(Appointment.exams.is_not(None))
        )
        claims = session.scalar(select(func.count()).select_from(SlotClaim))
        return appointments or 0, claims or 0


def _claims(bw: BookingWorld, appointment_id: uuid.UUID) -> list[SlotClaim]:
    with transaction(bw.world.sessions) as session:
        return list(
            session.scalars(
                select(SlotClaim)
                .where(SlotClaim.appointment_id == appointment_id)
                .order_by(SlotClaim.starts_at)
            )
        )


def _events(bw: BookingWorld, action: AuditAction) -> list[AuditEvent]:
    with transaction(bw.runtime.audit_sessions) as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action.value)))


def test_slot_search_follows_exams_rules_and_capacity(bw: BookingWorld, clock: Clock) -> None:
    ex = bw.exams

    def search(*exams: str, site: uuid.UUID | None = None) -> list[dt.datetime]:
        slots = _as(
            bw,
            clock,
            "today",
            lambda s: s.search_slots(site or bw.main, [ex[e] for e in exams], TOMORROW, TOMORROW),
        )
        return [slot.starts_at.astimezone(dt.UTC) for slot in slots]

    glucose = search("glucose")
    assert len(glucose) == 20 + 16  # 07:00-12:00 and 14:00-18:00 by 15 minutes
    cortisol = search("cortisol")
    assert cortisol[0] == next_slot(TOMORROW, 7)
    assert cortisol[-1] == next_slot(TOMORROW, 9, 45)  # the visit ends by 10:00
    long = search("long")  # 40 minutes: three consecutive slots of the same interval
    assert next_slot(TOMORROW, 11, 15) in long
    assert next_slot(TOMORROW, 11, 30) not in long
    assert len(long) == 18 + 14

    _as(
        bw,
        clock,
        "today",
        lambda s: s.hold(bw.world.patients["today"], bw.main, [ex["blood"]], NINE),
    )
    after = search("glucose")
    assert NINE not in after
    assert len(after) == len(glucose) - 1
    assert len(search("glucose", site=bw.annex)) == len(glucose)  # another site, capacity 3

    with pytest.raises(BookingError) as only_walk_in:
        search("urine")
    assert only_walk_in.value.code == "not_bookable"
    with pytest.raises(BookingError, match="au plus 31 jours"):
        _as(
            bw,
            clock,
            "today",
            lambda s: s.search_slots(
                bw.main, [ex["glucose"]], TOMORROW, TOMORROW + dt.timedelta(days=40)
            ),
        )
    for site in (bw.foreign_site, bw.bare_site, uuid.uuid4()):
        with pytest.raises(UnknownSiteError):
            search("glucose", site=site)
    for exams in ([bw.foreign_exam], [ex["retired"]], [uuid.uuid4()], []):
        with pytest.raises(BookingError):
            _as(
                bw,
                clock,
                "today",
                lambda s, e=exams: s.search_slots(bw.main, e, TOMORROW, TOMORROW),
            )


def test_hold_then_confirm_claims_boxes_and_audits(bw: BookingWorld, clock: Clock) -> None:
    patient = bw.world.patients["today"]
    held = _as(bw, clock, "today", lambda s: s.hold(patient, bw.main, [bw.exams["long"]], NINE))
    assert held.status is AppointmentStatus.HELD
    assert held.hold_expires_at == NOW + dt.timedelta(minutes=10)
    assert held.ends_at == NINE + dt.timedelta(minutes=45)
    claims = _claims(bw, held.id)
    assert [c.starts_at for c in claims] == [NINE + dt.timedelta(minutes=15 * i) for i in range(3)]
    assert {c.box for c in claims} == {0}
    assert {c.expires_at for c in claims} == {held.hold_expires_at}

    booked = _as(bw, clock, "today", lambda s: s.confirm(held.id))
    assert booked.status is AppointmentStatus.BOOKED
    assert booked.hold_expires_at is None
    assert booked.exam_ids == (bw.exams["long"],)
    assert {c.expires_at for c in _claims(bw, held.id)} == {None}
    again = _as(bw, clock, "today", lambda s: s.confirm(held.id))  # idempotent
    assert again.status is AppointmentStatus.BOOKED

    (hold_event,) = _events(bw, AuditAction.APPOINTMENT_SLOT_HOLD)
    assert (hold_event.target_type, hold_event.target_id) == ("appointment", held.id)
    assert len(_events(bw, AuditAction.APPOINTMENT_BOOKING_CONFIRM)) == 1

    with transaction(bw.world.sessions) as session:
        row = session.get(Appointment, held.id)
        assert row is not None
        assert row.exams is not None
        assert str(bw.exams["long"]).encode() not in row.exams  # sealed (I1)
        assert row.booked_by_account_id == uuid.UUID(bw.patient_principal("today").id)


def test_capacity_is_never_exceeded_and_refusals_write_nothing(
    bw: BookingWorld, clock: Clock
) -> None:
    ex, patients = bw.exams, bw.world.patients
    _as(bw, clock, "today", lambda s: s.hold(patients["today"], bw.main, [ex["glucose"]], NINE))
    before = _counts(bw)
    with pytest.raises(SlotTakenError, match="vient d'être pris"):
        _as(
            bw,
            clock,
            "tomorrow",
            lambda s: s.hold(patients["tomorrow"], bw.main, [ex["glucose"]], NINE),
        )
    # A longer visit overlapping the taken slot fails on its second slot: nothing is left.
    with pytest.raises(SlotTakenError):
        _as(
            bw,
            clock,
            "tomorrow",
            lambda s: s.hold(
                patients["tomorrow"], bw.main, [ex["long"]], NINE - dt.timedelta(minutes=15)
            ),
        )
    assert _counts(bw) == before

    names = ["tomorrow", "in_20_days", "29_days_ago"]
    for name in names:
        _as(bw, clock, name, lambda s, n=name: s.hold(patients[n], bw.annex, [ex["glucose"]], NINE))
    with pytest.raises(SlotTakenError):
        _as(
            bw,
            clock,
            "no_appointment",
            lambda s: s.hold(patients["no_appointment"], bw.annex, [ex["glucose"]], NINE),
        )
    with transaction(bw.world.sessions) as session:
        boxes = session.scalars(select(SlotClaim.box).where(SlotClaim.site_id == bw.annex))
        assert sorted(boxes) == [0, 1, 2]  # box 3 is the walk-in box: never booked


@pytest.mark.parametrize(
    ("starts_at", "message"),
    [
        (NOW - dt.timedelta(hours=1), "déjà passé"),
        (NOW, "déjà passé"),
        (next_slot(TOMORROW, 9, 7), "pas proposé"),
        (next_slot(TOMORROW, 12, 30), "pas proposé"),
        (next_slot(TOMORROW, 9).replace(tzinfo=None), "fuseau horaire"),
        (NOW + dt.timedelta(days=120), "90 jours"),
        (dt.datetime(1970, 1, 1, tzinfo=dt.UTC), "déjà passé"),
    ],
)
def test_bad_start_times_are_refused_with_nothing_written(
    bw: BookingWorld, clock: Clock, starts_at: dt.datetime, message: str
) -> None:
    before = _counts(bw)
    with pytest.raises(BookingError, match=message) as refused:
        _as(
            bw,
            clock,
            "today",
            lambda s: s.hold(bw.world.patients["today"], bw.main, [bw.exams["glucose"]], starts_at),
        )
    assert refused.value.code == "invalid"
    assert _counts(bw) == before
    assert _events(bw, AuditAction.APPOINTMENT_SLOT_HOLD) == []


def test_bad_sites_and_exams_are_refused(bw: BookingWorld, clock: Clock) -> None:
    patient, ex = bw.world.patients["today"], bw.exams
    cases: list[tuple[uuid.UUID, list[uuid.UUID], str]] = [
        (bw.foreign_site, [ex["glucose"]], "Site introuvable"),
        (bw.bare_site, [ex["glucose"]], "Site introuvable"),
        (uuid.uuid4(), [ex["glucose"]], "Site introuvable"),
        (bw.main, [bw.foreign_exam], "Examen introuvable"),
        (bw.main, [ex["retired"]], "Examen introuvable"),
        (bw.main, [], "au moins un examen"),
        (bw.main, [ex["urine"]], "sans rendez-vous"),
        (bw.main, [ex["cortisol"]], "pas proposé"),  # 09:00 is fine, but see below
    ]
    for site, exams, message in cases[:-1]:
        with pytest.raises(BookingError, match=message):
            _as(bw, clock, "today", lambda s, a=site, e=exams: s.hold(patient, a, e, NINE))
    late = next_slot(TOMORROW, 9, 55 - 10)  # 09:45 + 10 min ends at 09:55: allowed
    _as(bw, clock, "today", lambda s: s.hold(patient, bw.main, [ex["cortisol"]], late))
    with pytest.raises(BookingError, match="pas proposé"):
        _as(
            bw,
            clock,
            "today",
            lambda s: s.hold(patient, bw.main, [ex["cortisol"]], next_slot(TOMORROW, 10)),
        )
    assert _counts(bw) == (1, 1)


def test_an_expired_hold_gives_the_box_to_the_next_claimant(bw: BookingWorld, clock: Clock) -> None:
    patients, glucose = bw.world.patients, [bw.exams["glucose"]]
    first = _as(bw, clock, "today", lambda s: s.hold(patients["today"], bw.main, glucose, NINE))
    clock.now = NOW + dt.timedelta(minutes=11)
    search = _as(
        bw, clock, "tomorrow", lambda s: s.search_slots(bw.main, glucose, TOMORROW, TOMORROW)
    )
    assert NINE in [slot.starts_at.astimezone(dt.UTC) for slot in search]
    second = _as(
        bw, clock, "tomorrow", lambda s: s.hold(patients["tomorrow"], bw.main, glucose, NINE)
    )
    with pytest.raises(BookingError) as late:
        _as(bw, clock, "today", lambda s: s.confirm(first.id))
    assert late.value.code == "hold_expired"
    assert (
        _as(bw, clock, "tomorrow", lambda s: s.confirm(second.id)).status
        is AppointmentStatus.BOOKED
    )
    assert [c.appointment_id for c in _claims(bw, second.id)] == [second.id]
    assert _claims(bw, first.id) == []
    # The expired hold is no one's plan any more.
    listed = _as(bw, clock, "today", lambda s: s.list_for_patients([patients["today"]]))
    assert first.id not in {view.id for view in listed}


def test_an_expired_hold_nobody_took_can_still_be_confirmed(bw: BookingWorld, clock: Clock) -> None:
    held = _as(
        bw,
        clock,
        "today",
        lambda s: s.hold(bw.world.patients["today"], bw.main, [bw.exams["glucose"]], NINE),
    )
    clock.now = NOW + dt.timedelta(minutes=30)
    assert _as(bw, clock, "today", lambda s: s.confirm(held.id)).status is AppointmentStatus.BOOKED


def test_reschedule_is_all_or_nothing(bw: BookingWorld, clock: Clock) -> None:
    patients, long = bw.world.patients, [bw.exams["long"]]
    mine = _as(
        bw, clock, "today", lambda s: s.confirm(s.hold(patients["today"], bw.main, long, NINE).id)
    )
    ten = next_slot(TOMORROW, 10)
    _as(
        bw,
        clock,
        "tomorrow",
        lambda s: s.hold(patients["tomorrow"], bw.main, [bw.exams["glucose"]], ten),
    )
    with pytest.raises(SlotTakenError):  # 09:30-10:15 would need the 10:00 slot
        _as(bw, clock, "today", lambda s: s.reschedule(mine.id, ten - dt.timedelta(minutes=30)))
    assert [c.starts_at for c in _claims(bw, mine.id)] == [
        NINE + dt.timedelta(minutes=15 * i) for i in range(3)
    ]
    # Overlapping its own slots is fine: 09:15-10:00.
    moved = _as(
        bw, clock, "today", lambda s: s.reschedule(mine.id, NINE + dt.timedelta(minutes=15))
    )
    assert moved.starts_at == NINE + dt.timedelta(minutes=15)
    assert moved.status is AppointmentStatus.BOOKED
    claims = _claims(bw, mine.id)
    assert [c.starts_at for c in claims] == [NINE + dt.timedelta(minutes=15 * i) for i in (1, 2, 3)]
    assert {c.expires_at for c in claims} == {None}
    assert len(_events(bw, AuditAction.APPOINTMENT_BOOKING_RESCHEDULE)) == 1
    with pytest.raises(BookingError, match="déjà passé"):
        _as(bw, clock, "today", lambda s: s.reschedule(mine.id, NOW - dt.timedelta(days=1)))


def test_cancel_frees_the_slot_and_patients_keep_to_the_deadline(
    bw: BookingWorld, clock: Clock
) -> None:
    patients, glucose = bw.world.patients, [bw.exams["glucose"]]
    mine = _as(
        bw,
        clock,
        "today",
        lambda s: s.confirm(s.hold(patients["today"], bw.main, glucose, NINE).id),
    )
    assert mine.changeable
    clock.now = NINE - dt.timedelta(hours=1)
    view = _as(bw, clock, "today", lambda s: s.get(mine.id))
    assert view is not None
    assert not view.changeable
    for action in (
        lambda s: s.cancel(mine.id),
        lambda s: s.reschedule(mine.id, NINE + dt.timedelta(minutes=15)),
    ):
        with pytest.raises(BookingError) as late:
            _as(bw, clock, "today", action)
        assert late.value.code == "deadline_passed"
    # The desk is not bound by the deadline.
    cancelled = _staff(bw, clock, "receptionist", lambda s: s.cancel(mine.id))
    assert cancelled.status is AppointmentStatus.CANCELLED
    assert _claims(bw, mine.id) == []
    with pytest.raises(BookingError, match="ne peut plus être annulé"):
        _staff(bw, clock, "receptionist", lambda s: s.cancel(mine.id))
    _as(bw, clock, "tomorrow", lambda s: s.hold(patients["tomorrow"], bw.main, glucose, NINE))
    assert len(_events(bw, AuditAction.APPOINTMENT_BOOKING_CANCEL)) == 1


def test_only_patients_in_scope_are_booked_for(bw: BookingWorld, clock: Clock) -> None:
    patients, glucose = bw.world.patients, [bw.exams["glucose"]]
    # A patient account for someone else's record: the same "not found" as an unknown one.
    for target in (patients["tomorrow"], bw.world.foreign_patient, uuid.uuid4()):
        with pytest.raises(AppointmentNotFoundError):
            _as(bw, clock, "today", lambda s, t=target: s.hold(t, bw.main, glucose, NINE))
    assert _counts(bw) == (0, 0)
    refused = _events(bw, AuditAction.APPOINTMENT_BOOKING_REFUSED)
    assert len(refused) == 3
    assert {e.outcome for e in refused} == {"denied"}
    # A guardian books for a dependent it acts for.
    child = _as(
        bw,
        clock,
        "today",
        lambda s: s.hold(patients["no_appointment"], bw.main, glucose, NINE),
        "no_appointment",
    )
    assert child.patient_id == patients["no_appointment"]
    # The desk books for patients of its sites; a sampler cannot book at all.
    ten = next_slot(TOMORROW, 10)
    _staff(bw, clock, "receptionist", lambda s: s.hold(patients["tomorrow"], bw.main, glucose, ten))
    with pytest.raises(AppointmentNotFoundError):
        _staff(
            bw,
            clock,
            "receptionist",
            lambda s: s.hold(
                patients["45_days_ago"], bw.main, glucose, ten + dt.timedelta(minutes=15)
            ),
        )
    with pytest.raises(AppointmentNotFoundError):
        _staff(bw, clock, "sampler", lambda s: s.hold(patients["today"], bw.main, glucose, ten))
    # Reading and changing someone else's appointment: None / not found.
    assert _as(bw, clock, "tomorrow", lambda s: s.get(child.id)) is None
    with pytest.raises(AppointmentNotFoundError):
        _as(bw, clock, "tomorrow", lambda s: s.cancel(child.id))
    with pytest.raises(AppointmentNotFoundError):
        _as(bw, clock, "tomorrow", lambda s: s.confirm(uuid.uuid4()))
    listed = _as(
        bw,
        clock,
        "today",
        lambda s: s.list_for_patients([patients["no_appointment"], patients["tomorrow"]]),
        "no_appointment",
    )
    assert [v.id for v in listed] == [child.id]
    assert listed[0].exam_ids == tuple(glucose)


def test_home_visit_requests(bw: BookingWorld, clock: Clock) -> None:
    patient, ex = bw.world.patients["today"], bw.exams

    def request(
        exams: list[str],
        day: dt.date = TOMORROW,
        address: HomeAddress = ADDRESS,
        window: Any = "morning",
    ) -> Any:
        return _as(
            bw,
            clock,
            "today",
            lambda s: s.request_home_visit(
                patient, bw.main, [ex[e] for e in exams], day, window, address
            ),
        )

    hostile = HomeAddress("<script>alert(1)</script> 3 rue Haute", "69001", "Lyon", "<b>sonner</b>")
    visit = request(["glucose", "blood"], address=hostile)
    assert visit.kind.value == "home"
    assert visit.status is AppointmentStatus.BOOKED
    assert visit.starts_at == next_slot(TOMORROW, 7)
    assert visit.ends_at == next_slot(TOMORROW, 12)
    seen = _as(bw, clock, "today", lambda s: s.get(visit.id))
    assert seen.home_address == hostile
    assert seen.exam_ids == (ex["glucose"], ex["blood"])
    with transaction(bw.world.sessions) as session:
        row = session.get(Appointment, visit.id)
        assert row is not None
        assert row.home_address is not None
        assert b"script" not in row.home_address
    assert len(_events(bw, AuditAction.APPOINTMENT_HOME_REQUEST)) == 1

    before = _counts(bw)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"exams": ["cortisol"]}, "à domicile"),
        ({"exams": ["glucose"], "day": NOW.date()}, "la veille"),
        ({"exams": ["glucose"], "day": dt.date(1970, 1, 1)}, "la veille"),
        ({"exams": ["glucose"], "day": NOW.date() + dt.timedelta(days=200)}, "90 jours"),
        ({"exams": ["glucose"], "address": HomeAddress("", "75011", "Paris")}, "Adresse"),
        ({"exams": ["glucose"], "address": HomeAddress("1 rue", "7501", "Paris")}, "5 chiffres"),
        ({"exams": ["glucose"], "address": HomeAddress("1 rue", "2A004", "Ajaccio")}, "5 chiffres"),
        (
            {"exams": ["glucose"], "address": HomeAddress("1 rue\x00", "75011", "Paris")},
            "caractère",
        ),
        ({"exams": ["glucose"], "address": HomeAddress("1 rue", "75011", "P" * 101)}, "au plus"),
        ({"exams": ["glucose"], "window": "night"}, "matin ou après-midi"),
    ]
    for arguments, message in bad:
        with pytest.raises(BookingError, match=message):
            request(**arguments)
    assert _counts(bw) == before


def test_a_system_job_books_for_anyone(bw: BookingWorld, clock: Clock) -> None:
    view = _run(
        bw,
        lambda session: bw.service(session, SystemPrincipal("test:booking-job"), clock).hold(
            bw.world.patients["45_days_ago"], bw.main, [bw.exams["glucose"]], NINE
        ),
    )
    assert view.status is AppointmentStatus.HELD


def test_a_patient_account_cannot_squat_slots(bw: BookingWorld, clock: Clock) -> None:
    """At most MAX_LIVE_PER_RECORD appointments to come per record and MAX_LIVE_PER_ACCOUNT
    across the account's records: holds not expired and bookings, at a site or at home;
    confirming each hold or letting holds lapse does not get round it. Staff are not
    limited."""
    glucose = [bw.exams["glucose"]]
    mine, second, third = (bw.world.patients[n] for n in ("no_appointment", "29_days_ago",
                                                          "45_days_ago"))  # fmt: skip
    family = ("29_days_ago", "45_days_ago")

    def as_family(action: Callable[[BookingService], Any]) -> Any:
        return _as(bw, clock, "no_appointment", action, *family)

    def at(minutes: int) -> dt.datetime:
        return NINE + dt.timedelta(minutes=minutes)

    holds = [as_family(lambda s, m=m: s.hold(mine, bw.annex, glucose, at(m))) for m in (0, 15, 30)]
    as_family(lambda s: s.confirm(holds[0].id))
    before = _counts(bw)
    with pytest.raises(BookingError, match="Cette personne a déjà 3 rendez-vous") as refused:
        as_family(lambda s: s.hold(mine, bw.annex, glucose, at(60)))
    assert refused.value.code == "too_many_appointments"
    with pytest.raises(BookingError, match="déjà 3 rendez-vous"):
        as_family(
            lambda s: s.request_home_visit(mine, bw.annex, glucose, TOMORROW, "morning", ADDRESS)
        )
    assert _counts(bw) == before

    # Lapsed holds no longer count; confirming one later counts again.
    clock.now += dt.timedelta(minutes=bw.runtime.settings.booking_hold_minutes + 1)
    later = [as_family(lambda s, m=m: s.hold(mine, bw.annex, glucose, at(m))) for m in (60, 75)]
    with pytest.raises(BookingError, match="déjà 3 rendez-vous"):
        as_family(lambda s: s.confirm(holds[1].id))
    as_family(lambda s: s.cancel(later[0].id))
    assert as_family(lambda s: s.confirm(holds[1].id)).status is AppointmentStatus.BOOKED

    # The account's other records: 6 in all.
    for minutes in (90, 105):
        as_family(lambda s, m=minutes: s.hold(second, bw.annex, glucose, at(m)))
    as_family(
        lambda s: s.request_home_visit(second, bw.annex, glucose, TOMORROW, "morning", ADDRESS)
    )
    with pytest.raises(BookingError, match="Votre compte a déjà 6 rendez-vous") as account:
        as_family(lambda s: s.hold(third, bw.annex, glucose, at(120)))
    assert account.value.code == "too_many_appointments"

    # The desk is not limited.
    patient = bw.world.patients["tomorrow"]
    for minutes in (0, 15, 30, 45):
        _staff(
            bw, clock, "receptionist", lambda s, m=minutes: s.hold(patient, bw.main, glucose, at(m))
        )


def test_reschedule_moves_the_documents_retention(bw: BookingWorld, clock: Clock) -> None:
    """A prescription is kept until the visit's end plus the retention period: moving the
    visit moves that date, in the same transaction."""
    patient = bw.world.patients["today"]
    held = _as(bw, clock, "today", lambda s: s.hold(patient, bw.main, [bw.exams["glucose"]], NINE))
    _as(bw, clock, "today", lambda s: s.confirm(held.id))
    retention = dt.timedelta(days=bw.runtime.settings.prescription_retention_days)
    document_id = uuid.uuid4()
    with transaction(bw.world.sessions) as session:
        session.add(
            PatientDocument(
                id=document_id,
                tenant_id=bw.world.tenant,
                patient_id=patient,
                appointment_id=held.id,
                media_type="application/pdf",
                size_bytes=3,
                content=b"pdf",
                consent_at=clock.now,
                delete_after=held.ends_at + retention,
            )
        )
    later = NINE + dt.timedelta(days=3)
    moved = _as(bw, clock, "today", lambda s: s.reschedule(held.id, later))
    assert moved.ends_at is not None
    with transaction(bw.world.sessions) as session:
        document = session.get(PatientDocument, document_id)
        assert document is not None
        assert document.delete_after == moved.ends_at + retention


def test_a_hold_whose_slot_has_started_cannot_be_confirmed(bw: BookingWorld, clock: Clock) -> None:
    patient = bw.world.patients["today"]
    held = _as(bw, clock, "today", lambda s: s.hold(patient, bw.main, [bw.exams["glucose"]], NINE))
    clock.now = NINE + dt.timedelta(minutes=1)
    with pytest.raises(BookingError, match="déjà passé") as late:
        _as(bw, clock, "today", lambda s: s.confirm(held.id))
    assert late.value.code == "hold_expired"
