"""Site schedules and closures, read and written with the tenant's session.

Writes are for organization admins and system jobs (see
:func:`labvault.catalog.services.require_admin`); bad input raises :class:`ScheduleError`
(French) before anything is written; a site of another organization is "Site introuvable."
like an absent one.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from labvault.catalog.schemas import CatalogError
from labvault.catalog.services import require_admin
from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail
from labvault.core.db import utcnow
from labvault.organizations.models import Site
from labvault.schedules.hours import OpeningHours, OpeningHoursError
from labvault.schedules.models import (
    MAX_BOXES,
    MAX_SLOT_MINUTES,
    MIN_SLOT_MINUTES,
    SiteClosure,
    SiteSchedule,
)
from labvault.schedules.slots import Closure, Schedule, Slot, generate_slots

MAX_CLOSURE_DAYS = 366
REASON_MAX = 200
ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class ScheduleError(CatalogError):
    """Bad schedule input, or a site or closure this organization does not have."""


def _integer(label: str, value: object, low: int, high: int) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,4}\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ScheduleError(f"{label} : un nombre entier entre {low} et {high} est attendu.")
    return value


def _date(label: str, value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        raise ScheduleError(f"{label} : une date sans heure est attendue.")
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and ISO_DATE.fullmatch(value.strip()):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ScheduleError(f"{label} : date invalide (AAAA-MM-JJ attendu).")


def _reason(value: object) -> str:
    if not isinstance(value, str):
        raise ScheduleError("Motif de fermeture : obligatoire.")
    reason = unicodedata.normalize("NFC", " ".join(value.split()))
    if not reason:
        raise ScheduleError("Motif de fermeture : obligatoire.")
    if len(reason) > REASON_MAX:
        raise ScheduleError(f"Motif de fermeture : au plus {REASON_MAX} caractères.")
    if any(unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Cn"} for char in reason):
        raise ScheduleError("Motif de fermeture : caractère non autorisé.")
    return reason


class SiteScheduleService:
    def __init__(
        self,
        session: Session,
        audit: AuditTrail,
        tenant_id: uuid.UUID,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._session = session
        self._audit = audit
        self._tenant_id = tenant_id
        self._clock = clock

    # -- reads ---------------------------------------------------------------------------

    def schedule(self, site_id: uuid.UUID) -> Schedule | None:
        """The site's schedule for slot generation; None while it has none."""
        site = self._site(site_id)
        row = self._row(site.id)
        if row is None:
            return None
        try:
            hours = OpeningHours.parse(site.opening_hours or {})
        except OpeningHoursError as exc:
            raise ScheduleError(str(exc)) from None
        return Schedule(
            timezone=site.timezone,
            opening_hours=hours,
            slot_minutes=row.slot_minutes,
            sampling_boxes=row.sampling_boxes,
            walk_in_boxes=row.walk_in_boxes,
        )

    def closures(
        self, site_id: uuid.UUID, from_date: dt.date | None = None, to_date: dt.date | None = None
    ) -> list[SiteClosure]:
        """The site's closures (overlapping the range, when one is given), by start date."""
        site = self._site(site_id)
        query = select(SiteClosure).where(
            SiteClosure.tenant_id == self._tenant_id, SiteClosure.site_id == site.id
        )
        if from_date is not None:
            query = query.where(SiteClosure.ends_on >= from_date)
        if to_date is not None:
            query = query.where(SiteClosure.starts_on <= to_date)
        return list(self._session.scalars(query.order_by(SiteClosure.starts_on)))

    def slots(
        self,
        site_id: uuid.UUID,
        from_date: dt.date,
        to_date: dt.date,
        taken: Mapping[dt.datetime, int] | None = None,
    ) -> list[Slot]:
        """Bookable slots of the site, from the service's clock on (none without schedule)."""
        schedule = self.schedule(site_id)
        if schedule is None:
            return []
        closures = [
            Closure(row.starts_on, row.ends_on)
            for row in self.closures(site_id, from_date, to_date)
        ]
        return generate_slots(schedule, closures, from_date, to_date, self._clock(), taken)

    # -- writes --------------------------------------------------------------------------

    def set_schedule(
        self,
        site_id: uuid.UUID,
        *,
        opening_hours: object,
        slot_minutes: object,
        sampling_boxes: object,
        walk_in_boxes: object = 0,
    ) -> SiteSchedule:
        """Set opening hours, slot length, boxes and walk-in boxes, all or nothing."""
        require_admin(self._audit, self._tenant_id, "site", site_id)
        site = self._site(site_id)
        try:
            hours = OpeningHours.parse(opening_hours)
        except OpeningHoursError as exc:
            raise ScheduleError(str(exc)) from None
        minutes = _integer(
            "Durée d'un créneau (minutes)", slot_minutes, MIN_SLOT_MINUTES, MAX_SLOT_MINUTES
        )
        boxes = _integer("Nombre de box de prélèvement", sampling_boxes, 1, MAX_BOXES)
        walk_in = _integer("Box réservés au sans rendez-vous", walk_in_boxes, 0, MAX_BOXES)
        if walk_in > boxes:
            raise ScheduleError(
                "Box réservés au sans rendez-vous : pas plus que le nombre de box de prélèvement."
            )
        now = self._clock()
        site.opening_hours = hours.to_json()
        row = self._row(site.id)
        if row is None:
            row = SiteSchedule(id=uuid.uuid4(), tenant_id=self._tenant_id, site_id=site.id)
            self._session.add(row)
        row.slot_minutes, row.sampling_boxes, row.walk_in_boxes = minutes, boxes, walk_in
        row.updated_at = now
        self._session.flush()
        self._audit.record(
            AuditAction.SCHEDULE_SITE_UPDATE,
            tenant_id=self._tenant_id,
            target_type="site",
            target_id=site.id,
        )
        return row

    def add_closure(
        self, site_id: uuid.UUID, *, starts_on: object, ends_on: object, reason: object
    ) -> SiteClosure:
        """Close the site whole local days, ``starts_on`` to ``ends_on`` inclusive."""
        require_admin(self._audit, self._tenant_id, "site", site_id)
        site = self._site(site_id)
        first = _date("Début de la fermeture", starts_on)
        last = _date("Fin de la fermeture", ends_on)
        text = _reason(reason)
        if last < first:
            raise ScheduleError("Fermeture : la fin ne peut pas précéder le début.")
        if (last - first).days >= MAX_CLOSURE_DAYS:
            raise ScheduleError(f"Fermeture : au plus {MAX_CLOSURE_DAYS} jours d'affilée.")
        today = self._clock().astimezone(ZoneInfo(site.timezone)).date()
        if last < today:
            raise ScheduleError("Fermeture : la période est déjà passée.")
        closure = SiteClosure(
            id=uuid.uuid4(),
            tenant_id=self._tenant_id,
            site_id=site.id,
            starts_on=first,
            ends_on=last,
            reason=text,
            created_at=self._clock(),
        )
        self._session.add(closure)
        self._session.flush()
        self._audit.record(
            AuditAction.SCHEDULE_CLOSURE_ADD,
            tenant_id=self._tenant_id,
            target_type="closure",
            target_id=closure.id,
        )
        return closure

    def remove_closure(self, closure_id: uuid.UUID) -> None:
        require_admin(self._audit, self._tenant_id, "closure", closure_id)
        closure = self._session.scalar(
            select(SiteClosure).where(
                SiteClosure.tenant_id == self._tenant_id, SiteClosure.id == closure_id
            )
        )
        if closure is None:
            raise ScheduleError("Fermeture introuvable.")
        self._session.delete(closure)
        self._session.flush()
        self._audit.record(
            AuditAction.SCHEDULE_CLOSURE_REMOVE,
            tenant_id=self._tenant_id,
            target_type="closure",
            target_id=closure_id,
        )

    # -- helpers -------------------------------------------------------------------------

    def _site(self, site_id: uuid.UUID) -> Site:
        site = self._session.scalar(
            select(Site).where(Site.tenant_id == self._tenant_id, Site.id == site_id)
        )
        if site is None:
            raise ScheduleError("Site introuvable.")
        return site

    def _row(self, site_id: uuid.UUID) -> SiteSchedule | None:
        return self._session.scalar(
            select(SiteSchedule).where(
                SiteSchedule.tenant_id == self._tenant_id, SiteSchedule.site_id == site_id
            )
        )
