"""A small tenant for the result intake tests: a site, a registered laboratory system, a
sensitive exam, and synthetic patients (with and without NIR, and two records sharing the
same traits); plus an ORU^R01 builder for them."""

from __future__ import annotations

import base64
import datetime as dt
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from labvault.appointments.models import Appointment
from labvault.core.access.principals import Principal, PrincipalKind, SystemPrincipal
from labvault.core.audit.events import audited_transaction
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.organizations.services import add_site, create_organization
from labvault.patients.nir import synthetic_nir
from labvault.patients.schemas import PatientInput
from labvault.patients.scope import staff_scope
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patients
from labvault.results.clients import ServiceClientRegistry
from labvault.results.delivery import FileResultDelivery
from labvault.results.hl7 import parse_oru
from labvault.results.intake import StoredResultIntake
from labvault.results.models import SensitiveExamCode
from labvault.results.review import ReviewService
from labvault.staff.models import StaffRole
from labvault.staff.services import StaffRepository

T = TypeVar("T")

LIS_APPLICATION = "SIL-ALPHA"
LIS_FACILITY = "ALPHA-CENTRE"
HIV_CODE = "56888-1"
GLUCOSE = "5.42"
HEMOGLOBIN = "13.7"
COMMENT = "Prélèvement à jeun"
PDF = b"%PDF-1.4\n% synthetic report\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


@dataclass
class IntakeWorld:
    runtime: Runtime
    tenant: uuid.UUID
    site: uuid.UUID
    client: uuid.UUID
    people: dict[str, PatientInput]
    patients: dict[str, uuid.UUID]
    appointment: uuid.UUID

    def keyring(self, session: object, job: str = "test:results") -> TenantKeyring:
        return TenantKeyring(
            session,  # type: ignore[arg-type]
            self.runtime.key_provider,
            self.tenant,
            SystemPrincipal(job),
        )


def build_intake_world(runtime: Runtime) -> IntakeWorld:
    people = list(synthetic_patients(4, seed=808))
    ins_person, traits_person, twin_a, _ = people
    # Two records with the same traits, different NIRs: several candidates by traits.
    twin_b = twin_a.model_copy(
        update={
            "nir": synthetic_nir(
                random.Random(9),
                sex=1 if twin_a.sex.value == "M" else 2,
                birth_date=twin_a.birth_date,
            )
        }
    )
    traits_person = traits_person.model_copy(update={"nir": None, "ins_oid": None})
    with transaction(runtime.sessions) as session:
        organization = create_organization(session, runtime.key_provider, "Labo Alpha")
        site = add_site(
            session,
            organization,
            name="Alpha Centre",
            address_line="1 rue de la Paix",
            postal_code="75002",
            city="Paris",
            opening_hours={},
            sampling_capacity_per_hour=12,
        )
        keyring = TenantKeyring(
            session, runtime.key_provider, organization.id, SystemPrincipal("test:world")
        )
        created = PatientRepository(session, keyring).register_many(
            [ins_person, traits_person, twin_a, twin_b]
        )
        assert len(created.created) == 4, "the twins must be two records"
        patients = {
            name: created.created[i] for i, name in enumerate(["ins", "traits", "twin_a", "twin_b"])
        }
        appointment = Appointment(
            id=uuid.uuid4(),
            tenant_id=organization.id,
            patient_id=patients["ins"],
            site_id=site.id,
            starts_at=utcnow().replace(microsecond=0),
            status="booked",
        )
        session.add(appointment)
        session.add(
            SensitiveExamCode(
                tenant_id=organization.id,
                system="http://loinc.org",
                code=HIV_CODE,
                label="Sérologie VIH",
            )
        )
        client, _ = ServiceClientRegistry(session, organization.id, keyring.audit).add(
            "SIL Alpha",
            kind="lis",
            hl7_application=LIS_APPLICATION,
            hl7_facility=LIS_FACILITY,
            sites=["Alpha Centre"],
        )
        return IntakeWorld(
            runtime=runtime,
            tenant=organization.id,
            site=site.id,
            client=client.id,
            people={"ins": ins_person, "traits": traits_person, "twin_a": twin_a, "twin_b": twin_b},
            patients=patients,
            appointment=appointment.id,
        )


def oru(
    person: PatientInput,
    *,
    control_id: str = "MSG0001",
    order: str = "DOS456",
    status: str = "F",
    ins: bool = True,
    oid: str = "1.2.250.1.213.1.4.8",
    sending: tuple[str, str] = (LIS_APPLICATION, LIS_FACILITY),
    glucose: str = GLUCOSE,
    hiv: bool = False,
    pdf: bytes | None = None,
    collected: dt.datetime | None = None,
    birth_name: str | None = None,
) -> str:
    """An ORU^R01 for ``person`` (INS in PID-3 when it has a NIR and ``ins``)."""
    identifiers = [f"IPP{abs(hash(person.birth_name)) % 10**6:06d}^^^LABO&1.2.250.1.999.1&ISO^PI"]
    if ins and person.nir is not None:
        identifiers.insert(0, f"{person.nir.compact}^^^ASIP-SANTE-INS-NIR&{oid}&ISO^INS")
    first = person.first_names.split()[0]
    when = (collected or utcnow()).astimezone(dt.UTC).strftime("%Y%m%d%H%M%S+0000")
    segments = [
        f"MSH|^~\\&|{sending[0]}|{sending[1]}|LABVAULT|LV|20260115093000+0100||"
        f"ORU^R01^ORU_R01|{control_id}|P|2.5|||AL|NE||UNICODE UTF-8",
        f"PID|1||{'~'.join(identifiers)}||"
        f"{birth_name or person.birth_name}^{first}^{person.first_names}^^^^L||"
        f"{person.birth_date:%Y%m%d}|{person.sex.value}",
        f"ORC|RE|CMD-{order}^SIL|{order}^LABO||CM",
        f"OBR|1|CMD-{order}^SIL|{order}^LABO|BIO-STD^Bilan standard^L|||{when}|||||||||"
        f"10003456789^Martin^Paul||||||20260115092500|||{status}",
        f"NTE|1|L|{COMMENT}",
        f"OBX|1|NM|2345-7^Glucose^LN||{glucose}|mmol/L|3.9-5.5|H|||{status}",
        f"OBX|2|NM|718-7^Hémoglobine^LN||{HEMOGLOBIN}|g/dL|12.0-16.0|N|||{status}",
    ]
    if hiv:
        segments.append(f"OBX|3|CWE|{HIV_CODE}^VIH 1+2 Ac^LN||NEG^Négatif^L||||||{status}")
    if pdf is not None:
        data = base64.b64encode(pdf).decode()
        segments.append(f"OBX|9|ED|PDF^Compte rendu^L||^application^pdf^Base64^{data}||||||F")
    return "\r".join(segments) + "\r"


def add_biologist(world: IntakeWorld) -> uuid.UUID:
    """A biologist of the site the laboratory system serves (no appointment needed: the
    order at the site is the relationship)."""
    with transaction(world.runtime.sessions) as session:
        keyring = TenantKeyring(
            session, world.runtime.key_provider, world.tenant, SystemPrincipal("test:staff")
        )
        return StaffRepository(session, keyring).add(
            first_name="Irène",
            last_name="Biologiste",
            email="irene.biologiste@alpha.example.org",
            role=StaffRole.BIOLOGIST,
            site_ids=[world.site],
        )


def receive(world: IntakeWorld, text: str) -> None:
    """One message through the listener's real intake, as from the registered system."""
    intake = StoredResultIntake(world.runtime.sessions, world.runtime.key_provider, world.tenant)
    intake.receive(parse_oru(text), peer="127.0.0.1:1")


def review(world: IntakeWorld, staff_id: uuid.UUID, action: Callable[[ReviewService], T]) -> T:
    """``action`` on the review service of biologist ``staff_id``, in one audited unit."""
    runtime = world.runtime
    with audited_transaction(runtime.sessions) as session:
        principal = Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role="biologist")
        keyring = TenantKeyring(session, runtime.key_provider, world.tenant, principal)
        service = ReviewService(
            session,
            keyring,
            staff_scope(session, principal, world.tenant, staff_id),
            provider=runtime.key_provider,
            staff_id=staff_id,
            require_step_up=lambda: None,
            delivery=FileResultDelivery(runtime.settings.resolved_result_drop_dir),
            notifier=None,
            organization="Labo Alpha",
        )
        return action(service)
