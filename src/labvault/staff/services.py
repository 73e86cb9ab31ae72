"""Staff members, stored sealed like patients (their names and emails are personal data)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from labvault.core.audit.actions import AuditAction
from labvault.core.contact import parse_email
from labvault.core.crypto.errors import DecryptionError
from labvault.core.crypto.keyring import Keyring, require_index_generations
from labvault.core.crypto.models import DataKeyRecord
from labvault.core.crypto.reindex import (
    REINDEX_PURPOSE,
    Reindex,
    apply_reindexes,
    count_pending,
    pending_ids,
)
from labvault.organizations.models import Site
from labvault.staff.models import ENCRYPTED_FIELDS, StaffMember, StaffRole, StaffSite

TABLE = StaffMember.__tablename__
STAFF_TABLE = cast(Table, StaffMember.__table__)


class UnknownSiteError(LookupError):
    pass


SUBJECT_TYPE = "staff"


@dataclass(frozen=True, slots=True, repr=False)
class StaffRecord:
    id: uuid.UUID
    first_name: str
    last_name: str
    email: str
    role: StaffRole
    site_ids: tuple[uuid.UUID, ...]

    def __repr__(self) -> str:
        return f"StaffRecord(id={self.id}, role={self.role.value})"


class StaffRepository:
    def __init__(self, session: Session, keyring: Keyring) -> None:
        self._session = session
        self._keyring = keyring

    def add(
        self,
        *,
        first_name: str,
        last_name: str,
        email: str,
        role: StaffRole,
        site_ids: Sequence[uuid.UUID],
    ) -> uuid.UUID:
        tenant_id = self._keyring.tenant_id
        email = parse_email(email)
        tenant_sites = set(
            self._session.scalars(
                select(Site.id).where(
                    Site.tenant_id == self._keyring.tenant_id, Site.id.in_(site_ids)
                )
            )
        )
        if tenant_sites != set(site_ids):
            raise UnknownSiteError("a site is not one of this organization's")
        staff_id = uuid.uuid4()
        indexer = self._keyring.indexer
        (key,), key_rows = self._keyring.new_data_keys(SUBJECT_TYPE, [staff_id])
        plain = {"first_name": first_name, "last_name": last_name, "email": email}
        row: dict[str, object] = dict(
            key.seal_row(TABLE, staff_id, {c: v.encode() for c, v in plain.items()})
        )
        row.update(
            id=staff_id,
            tenant_id=tenant_id,
            data_key_id=key.id,
            email_index=indexer.staff_email(email),
            index_generation=indexer.generation,
            role=role.value,
        )
        self._session.execute(insert(DataKeyRecord), key_rows)
        self._session.execute(insert(StaffMember), [row])
        require_index_generations(self._session, tenant_id, indexer.generations)
        if site_ids:
            self._session.execute(
                insert(StaffSite),
                [{"staff_id": staff_id, "site_id": s, "tenant_id": tenant_id} for s in site_ids],
            )
        self._keyring.audit.record(
            AuditAction.STAFF_RECORD_CREATE,
            tenant_id=tenant_id,
            target_type=SUBJECT_TYPE,
            target_id=staff_id,
            purpose="staff-administration",
        )
        return staff_id

    def list(self, *, purpose: str) -> list[StaffRecord]:
        tenant_id = self._keyring.tenant_id
        members = list(
            self._session.scalars(select(StaffMember).where(StaffMember.tenant_id == tenant_id))
        )
        sites: dict[uuid.UUID, list[uuid.UUID]] = {}
        for staff_id, site_id in self._session.execute(
            select(StaffSite.staff_id, StaffSite.site_id).where(StaffSite.tenant_id == tenant_id)
        ):
            sites.setdefault(staff_id, []).append(site_id)
        keys = self._keyring.open_data_keys(SUBJECT_TYPE, [m.id for m in members], purpose)
        records = []
        for member in members:
            key = keys[member.id]
            if key.id != member.data_key_id:
                raise DecryptionError(f"{TABLE} row {member.id}: names a data key not its own")
            opened = key.open_row(
                TABLE, member.id, {c: getattr(member, c) for c in ENCRYPTED_FIELDS}
            )
            values = {c: (v or b"").decode() for c, v in opened.items()}
            records.append(
                StaffRecord(
                    id=member.id,
                    role=StaffRole(member.role),
                    site_ids=tuple(sites.get(member.id, ())),
                    **values,
                )
            )
        return records

    # -- blind-index rotation (``labvault keys rotate-index``) ------------------------------

    def pending_reindex(self, *, after: uuid.UUID | None, limit: int) -> Sequence[uuid.UUID]:
        """Staff members whose email index predates the newest index generation."""
        generation = self._keyring.indexer.generation
        return pending_ids(
            self._session,
            STAFF_TABLE,
            self._keyring.tenant_id,
            generation,
            after=after,
            limit=limit,
        )

    def count_pending_reindex(self) -> int:
        generation = self._keyring.indexer.generation
        return count_pending(self._session, STAFF_TABLE, self._keyring.tenant_id, generation)

    def plan_reindex(self, staff_ids: Sequence[uuid.UUID]) -> Sequence[Reindex]:
        """Each member's email index recomputed under the newest generation (keys opened and
        audited with purpose ``keys:rotate-index``); members already there are skipped."""
        indexer = self._keyring.indexer
        members = list(
            self._session.scalars(
                select(StaffMember).where(
                    StaffMember.tenant_id == self._keyring.tenant_id,
                    StaffMember.id.in_(staff_ids),
                    StaffMember.index_generation < indexer.generation,
                )
            )
        )
        keys = self._keyring.open_data_keys(SUBJECT_TYPE, [m.id for m in members], REINDEX_PURPOSE)
        plans = []
        for member in members:
            key = keys[member.id]
            if key.id != member.data_key_id:
                raise DecryptionError(f"{TABLE} row {member.id}: names a data key not its own")
            email = key.open_row(TABLE, member.id, {"email": member.email})["email"]
            if email is None:
                raise DecryptionError(f"{TABLE} row {member.id}: no email to index")
            plans.append(
                Reindex(
                    row_id=member.id,
                    old_generation=member.index_generation,
                    old={"email_index": member.email_index},
                    new={
                        "email_index": indexer.staff_email(email.decode()),
                        "index_generation": indexer.generation,
                    },
                )
            )
        return plans

    def apply_reindex(self, plans: Sequence[Reindex]) -> int:
        """Write plans back unless the row changed since it was read; rows moved."""
        return apply_reindexes(self._session, STAFF_TABLE, self._keyring.tenant_id, plans)
