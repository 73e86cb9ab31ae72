"""Exports as a service: the desk's day schedule of a site as CSV, with fingerprint rows.

The rule
    - A recent step-up (``require_step_up``, checked by the caller before anything is read).
    - The rows come from :meth:`DeskService.schedule`, the same read as the planning page: in
      the staff member's scope, honey records left out before decryption, every patient
      opened through the keyring, so the read budgets count the export like any other read
      (a budget it would exceed refuses it whole, and nothing is recorded).
    - ``k`` fingerprint rows (``labvault.exports.fingerprints``) are mixed in, next to the
      slot whose time they copy.
    - The export is recorded (``export_records``: kind, staff member, recipient account,
      time, row count, the fingerprint rows' digests, never the rows) and audited as
      ``export:csv:create`` in the same transaction as the reads.

The file: ``;``-separated UTF-8 with a BOM (what a French spreadsheet opens), French
headers, times in the site's zone, a neutral name (``planning-<date>.csv``: no site, no
person). Cells that a spreadsheet would run as a formula are prefixed with ``'``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from sqlalchemy.orm import Session

from labvault.core.audit.actions import AuditAction
from labvault.core.crypto.keyring import Keyring
from labvault.desk.services import STATUS_LABELS, DeskInputError, DeskService, SiteChoice
from labvault.exports.fingerprints import FingerprintIdentity, FingerprintKeys, fingerprint_count
from labvault.exports.models import ExportRecord

__all__ = ["CSV_HEADER", "SCHEDULE_KIND", "CsvExport", "NothingToExportError", "ScheduleExporter"]

SCHEDULE_KIND: Final = "desk-schedule"
EXPORT_PURPOSE: Final = "desk-schedule-export"
CSV_HEADER: Final = (
    "Heure",
    "Nom de naissance",
    "Nom d'usage",
    "Prénoms",
    "Date de naissance",
    "Identité",
    "Statut",
    "Type",
    "Pré-enregistrement",
    "Ordonnance",
)
IDENTITY_LABELS: Final = {
    "PROV": "Provisoire",
    "RECUP": "Récupérée",
    "VALI": "Validée",
    "QUAL": "Qualifiée",
}
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


class NothingToExportError(DeskInputError):
    """The day has no visit to list: an export would hold only fingerprint rows."""

    def __init__(self) -> None:
        super().__init__("Aucun rendez-vous ce jour sur ce site : il n'y a rien à exporter.")


@dataclass(frozen=True, slots=True, repr=False)
class CsvExport:
    """The file and its record's id (the repr shows no content)."""

    export_id: uuid.UUID
    filename: str
    content: bytes
    row_count: int
    fingerprint_count: int

    def __repr__(self) -> str:
        return f"CsvExport(id={self.export_id}, rows={self.row_count})"


def _cell(value: str) -> str:
    """A cell a spreadsheet shows as text, never runs (CSV injection)."""
    return f"'{value}" if value.startswith(_FORMULA_START) else value


class ScheduleExporter:
    """Exports of the desk's day schedule for one staff member, in the caller's transaction
    (``desk``: their desk; ``keyring``: theirs, for the audit trail)."""

    def __init__(
        self,
        session: Session,
        keyring: Keyring,
        desk: DeskService,
        fingerprints: FingerprintKeys,
        *,
        staff_id: uuid.UUID | None,
        account_id: uuid.UUID,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self._session = session
        self._keyring = keyring
        self._desk = desk
        self._fingerprints = fingerprints
        self._staff_id = staff_id
        self._account_id = account_id
        self._clock = clock

    def schedule_csv(self, site: SiteChoice, day: dt.date) -> CsvExport:
        """The site's day as CSV with its fingerprint rows, recorded and audited."""
        rows = self._desk.schedule(site.id, day)
        if not rows:
            raise NothingToExportError
        zone = site.zone
        lines: list[tuple[dt.datetime, list[str]]] = [
            (
                row.starts_at,
                [
                    row.starts_at.astimezone(zone).strftime("%H:%M"),
                    row.birth_name,
                    row.used_name or "",
                    row.first_names,
                    row.birth_date.strftime("%d/%m/%Y") if row.birth_date else "",
                    IDENTITY_LABELS.get(row.identity_status.value, "")
                    if row.identity_status
                    else "",
                    row.status_label,
                    "Sans rendez-vous" if row.walk_in else "Rendez-vous",
                    "Fait" if row.preregistered else "Non",
                    "Déposée" if row.prescription else "Non",
                ],
            )
            for row in rows
        ]
        export_id = uuid.uuid4()
        tenant_id = self._keyring.tenant_id
        count = fingerprint_count(len(lines))
        rng, people = self._fingerprints.identities(tenant_id, export_id, count)
        for person in people:
            position, line = self._fingerprint_line(rng, person, lines, day, site)
            lines.insert(position, line)
        digests = b"".join(self._fingerprints.digest(tenant_id, p) for p in people)
        now = self._clock()
        self._session.add(
            ExportRecord(
                id=export_id,
                tenant_id=tenant_id,
                kind=SCHEDULE_KIND,
                staff_id=self._staff_id,
                recipient_account_id=self._account_id,
                created_at=now,
                row_count=len(rows),
                fingerprint_count=len(people),
                fingerprint_digests=digests,
            )
        )
        self._session.flush()
        self._keyring.audit.record(
            AuditAction.EXPORT_CSV_CREATE,
            tenant_id=tenant_id,
            target_type="export",
            target_id=export_id,
            purpose=SCHEDULE_KIND,
        )
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=";", lineterminator="\r\n")
        writer.writerow(CSV_HEADER)
        for _, cells in lines:
            writer.writerow([_cell(c) for c in cells])
        return CsvExport(
            export_id=export_id,
            filename=f"planning-{day.isoformat()}.csv",
            content=("\ufeff" + buffer.getvalue()).encode(),
            row_count=len(rows),
            fingerprint_count=len(people),
        )

    @staticmethod
    def _fingerprint_line(
        rng: random.Random,
        person: FingerprintIdentity,
        lines: Sequence[tuple[dt.datetime, list[str]]],
        day: dt.date,
        site: SiteChoice,
    ) -> tuple[int, tuple[dt.datetime, list[str]]]:
        """A plausible line for ``person``: the time of a slot of the day (a real row's, or
        a morning slot when the day is empty), placed next to it."""
        zone = site.zone
        status = STATUS_LABELS["booked"]
        if lines:
            position = rng.randrange(len(lines))
            starts, neighbour = lines[position]
            status = neighbour[6]
            position += rng.randrange(2)
        else:
            minutes = 7 * 60 + 30 + 10 * rng.randrange(28)
            starts = dt.datetime.combine(day, dt.time(minutes // 60, minutes % 60), zone)
            position = 0
        identity = rng.choice(("PROV", "PROV", "VALI", "QUAL"))
        cells = [
            starts.astimezone(zone).strftime("%H:%M"),
            person.birth_name,
            person.used_name,
            person.first_names,
            person.birth_date.strftime("%d/%m/%Y"),
            IDENTITY_LABELS[identity],
            status,
            "Rendez-vous",
            rng.choice(("Fait", "Non")),
            rng.choice(("Déposée", "Non", "Non")),
        ]
        return position, (starts, cells)
