"""Staff members, stored sealed like patients (their names and emails are personal data)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from labvault.core.audit.actions import AuditAction
from labvault.core.contact import parse_email
from labvault.core.crypto.errors import DecryptionError
from labvault.core.crypto.keyring import Keyring
from labvault.core.crypto.models import DataKeyRecord
from labvault.organizations.models import Site
from labvault.staff.models import ENCRYPTED_FIELDS, StaffMember, StaffRole, StaffSite

TABLE = StaffMember.__tablename__


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
        (key,), key_rows = self._keyring.new_data_keys(SUBJECT_TYPE, [staff_id])
        plain = {"first_name": first_name, "last_name": last_name, "email": email}
        row: dict[str, object] = dict(
            key.seal_row(TABLE, staff_id, {c: v.encode() for c, v in plain.items()})
        )
        row.update(
            id=staff_id,
            tenant_id=tenant_id,
            data_key_id=key.id,
            email_index=self._keyring.indexer.staff_email(email),
            role=role.value,
        )
        self._session.execute(insert(DataKeyRecord), key_rows)
        self._session.execute(insert(StaffMember), [row])
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
