"""A patient's access history: who opened their file, when, as what, where, and why.

It says which role at which site acted, never who the staff member is (their name and
email are staff personal data): each actor appears under a stable reference that the
laboratory's security officer can resolve, and the patient can quote when asking about it.
Reading the history is itself recorded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from labvault.core.audit.actions import ACTIONS, AuditAction, patient_visible_actions
from labvault.core.audit.models import AuditEvent, from_micros
from labvault.core.crypto.keyring import Keyring
from labvault.organizations.models import Site
from labvault.patients.services import SUBJECT_TYPE

ROLE_LABELS = {
    "receptionist": "Secrétariat",
    "sampler": "Préleveur",
    "biologist": "Biologiste",
    "organization_admin": "Administration du laboratoire",
    "security_officer": "Sécurité",
}
ACTOR_LABELS = {
    "patient": "Compte patient",
    "staff": "Professionnel du laboratoire",
    "service": "Logiciel connecté",
    "system": "Traitement automatique du laboratoire",
}
PURPOSE_LABELS = {
    "registration": "Enregistrement",
    "cli:patients-find": "Recherche par le laboratoire",
    "cli:import-patients": "Import de dossiers",
    "account-link": "Rattachement à un compte en ligne",
    "desk-link": "Rattachement à l'accueil du laboratoire",
    "guardian-check": "Vérification de l'âge pour un parent ou représentant légal",
    "account-patients": "Affichage dans un compte en ligne",
    "patient-record": "Consultation du dossier",
    "nir-display": "Affichage du numéro de sécurité sociale",
    "patient-search": "Recherche par le laboratoire",
    "contact-update": "Mise à jour des coordonnées",
    "access-history": "Consultation de l'historique des accès",
    "break-glass:emergency": "Accès exceptionnel : urgence",
    "break-glass:walk-in": "Accès exceptionnel : patient à l'accueil sans rendez-vous",
    "break-glass:continuity": "Accès exceptionnel : continuité des soins entre sites",
    "break-glass:patient-request": "Accès exceptionnel : à la demande du patient",
    "appointment-reminder": "Rappel de rendez-vous",
    "retention": "Fin de la durée de conservation",
    "booking": "Prise de rendez-vous",
    "appointments": "Affichage des rendez-vous",
    "desk-schedule": "Planning de l'accueil",
    "desk-identity-check": "Vérification d'identité à l'accueil",
    "desk-walk-in": "Passage sans rendez-vous à l'accueil",
    "desk-round": "Tournée de prélèvements à domicile",
    "results": "Affichage de vos résultats",
    "result-pdf": "Téléchargement d'un compte rendu",
    "result-share": "Consultation par le médecin à qui vous avez donné un lien de partage",
    "result-share-create": "Création d'un lien de partage",
    "result-shares": "Affichage de vos partages",
    "result-share-revoke": "Arrêt d'un lien de partage",
    "result-review": "Relecture de vos résultats par un biologiste",
    "result-validation": "Validation de vos résultats",
    "result-delivery": "Transmission de vos résultats à votre prescripteur",
    "result-notification": "Avis de mise à disposition de vos résultats",
    "legal-hold:lab-report-retention": "Conservation légale des comptes rendus (10 ans)",
}
MAX_ENTRIES = 1000


@dataclass(frozen=True, slots=True)
class AccessEntry:
    at: dt.datetime
    action: str
    label: str
    actor: str
    actor_reference: str
    role: str | None
    site: str | None
    purpose: str | None
    outcome: str


SHARE_ACTOR_PREFIX = "system:result-share:"
"""Views through a patient's share link run as ``SystemPrincipal("result-share:<id>")``."""


def _actor_label(kind: str, actor_id: str) -> str:
    if actor_id.startswith(SHARE_ACTOR_PREFIX):
        return "Médecin avec votre lien de partage"
    return ACTOR_LABELS.get(kind, kind)


def actor_reference(actor_id: str) -> str:
    """Short, stable, and meaningless without the log: enough to ask "who is AGT-3F2A9C?"."""
    return "AGT-" + hashlib.sha256(actor_id.encode()).hexdigest()[:8].upper()


def access_history(
    session: Session, keyring: Keyring, patient_id: uuid.UUID, *, limit: int = MAX_ENTRIES
) -> list[AccessEntry]:
    """The patient's history, newest first, recorded as a read of that history."""
    tenant_id = keyring.tenant_id
    keyring.audit.record(
        AuditAction.PATIENT_HISTORY_READ,
        tenant_id=tenant_id,
        target_type=SUBJECT_TYPE,
        target_id=patient_id,
        purpose="access-history",
    )
    visible = [action.value for action in patient_visible_actions()]
    rows = session.execute(
        select(AuditEvent, Site.name)
        .outerjoin(Site, (Site.id == AuditEvent.actor_site_id) & (Site.tenant_id == tenant_id))
        .where(
            AuditEvent.tenant_id == tenant_id,
            AuditEvent.target_type == SUBJECT_TYPE,
            AuditEvent.target_id == patient_id,
            AuditEvent.action.in_(visible),
        )
        .order_by(AuditEvent.occurred_us.desc(), AuditEvent.id)
        .limit(limit)
    ).all()
    entries = []
    for event, site_name in rows:
        info = ACTIONS[AuditAction(event.action)]
        entries.append(
            AccessEntry(
                at=from_micros(event.occurred_us),
                action=event.action,
                label=info.patient_label or info.description,
                actor=_actor_label(event.actor_kind, event.actor_id),
                actor_reference=actor_reference(event.actor_id),
                role=ROLE_LABELS.get(event.actor_role or "", event.actor_role),
                site=site_name,
                purpose=PURPOSE_LABELS.get(event.purpose or "", event.purpose),
                outcome=event.outcome,
            )
        )
    return entries
