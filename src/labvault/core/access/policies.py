"""Access policies as data: which interactions, on which records, with which fields.

A policy document (TOML, see ``data/policy.toml``) grants each *subject* (a patient
account, a staff role, a service client kind) interactions on resources, limited to a
record scope and, for resources with field classes, to some fields. Anything not granted
is refused. Documents are versioned and identified by the digest of their canonical form,
so the policy a login ran under is known exactly.

Some limits are not the document's to lift (:data:`CEILINGS`): an organization admin or a
security officer never gets patient data, a patient only its own records, whatever an
organization's policy file says. A document that tries is refused as a whole. A service
client (a laboratory system, a FHIR client) never gets contact details, staff,
configuration or audit, and reaches patients only through its sites' relationships.

A principal's policy is compiled once (:func:`compile_policy`, cached per digest and
subject) into a lookup table the repositories consult on every call.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from labvault.core.access.principals import Principal, PrincipalKind


class Interaction(enum.StrEnum):
    READ = "read"
    SEARCH = "search"
    CREATE = "create"
    UPDATE = "update"


class RecordScope(enum.StrEnum):
    OWN = "own"
    """A patient account's own record and its current dependents'."""
    SITE_RELATIONSHIP = "site-relationship"
    """Patients in care at one of the staff member's sites (or under a break-glass grant)."""
    SITE_TODAY = "site-today"
    """Patients with an appointment today at one of the staff member's sites."""
    ALL = "all"
    """Every record of the tenant: only for resources that hold no patient data."""


PATIENT_DATA: frozenset[str] = frozenset({"patient", "appointment", "prescription", "result"})
"""Resources that are a patient's personal or health data."""

FIELD_CLASSES: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "patient": {
        "identity": (
            "birth_name",
            "used_name",
            "first_names",
            "birth_date",
            "sex",
            "birth_place_code",
            "identity_status",
        ),
        "ins": ("ins_number", "ins_oid"),
        "contact": ("email", "phone", "address_line", "postal_code", "city"),
    },
}
"""For resources whose fields are granted by class: each class's field names."""

RESOURCES: frozenset[str] = PATIENT_DATA | {"staff", "configuration", "audit", "alert"}

STAFF_SUBJECTS: frozenset[str] = frozenset(
    {"receptionist", "sampler", "biologist", "organization_admin", "security_officer"}
)
PATIENT_SUBJECT = "patient"
SERVICE_PREFIX = "service:"
SERVICE_SUBJECTS: frozenset[str] = frozenset({f"{SERVICE_PREFIX}lis", f"{SERVICE_PREFIX}fhir"})
"""One per service client kind (``labvault.results.models.ServiceClientKind``)."""


@dataclass(frozen=True, slots=True)
class Ceiling:
    """A limit no policy document can lift."""

    subjects: frozenset[str]
    forbidden_resources: frozenset[str] = frozenset()
    allowed_scopes: frozenset[RecordScope] = frozenset(RecordScope)
    reason: str = ""
    subject_prefix: str = ""
    """Also applies to every subject starting with this (``service:``), when set."""
    forbidden_fields: frozenset[str] = frozenset()
    """Field classes never granted (``contact``)."""

    def applies_to(self, subject: str) -> bool:
        return subject in self.subjects or bool(
            self.subject_prefix and subject.startswith(self.subject_prefix)
        )


CEILINGS: tuple[Ceiling, ...] = (
    Ceiling(
        frozenset({"organization_admin", "security_officer"}),
        forbidden_resources=PATIENT_DATA,
        reason="administration and security roles never see patient data",
    ),
    Ceiling(
        frozenset({PATIENT_SUBJECT}),
        forbidden_resources=RESOURCES - PATIENT_DATA,
        allowed_scopes=frozenset({RecordScope.OWN}),
        reason="a patient account acts only on its own and its dependents' records",
    ),
    Ceiling(
        STAFF_SUBJECTS,
        allowed_scopes=frozenset(
            {RecordScope.SITE_RELATIONSHIP, RecordScope.SITE_TODAY, RecordScope.ALL}
        ),
        reason="staff reach patients through their sites, never as owners",
    ),
    Ceiling(
        frozenset(),
        subject_prefix=SERVICE_PREFIX,
        forbidden_resources=RESOURCES - PATIENT_DATA,
        allowed_scopes=frozenset({RecordScope.SITE_RELATIONSHIP}),
        forbidden_fields=frozenset({"contact"}),
        reason="a service client reaches patients through its sites, never their contact "
        "details, staff, configuration or audit",
    ),
)


class PolicyError(ValueError):
    """A policy document that cannot be used, with where and why."""


_Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_:-]{0,63}$")]


class _GrantDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    resource: _Name
    interactions: Annotated[list[Interaction], Field(min_length=1)]
    records: RecordScope
    fields: list[_Name] | None = None


class _SubjectDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    grants: list[_GrantDocument] = []


class _PolicyDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Annotated[int, Field(ge=1)]
    name: _Name
    subjects: dict[_Name, _SubjectDocument]


@dataclass(frozen=True, slots=True)
class Grant:
    resource: str
    interactions: frozenset[Interaction]
    records: RecordScope
    fields: frozenset[str] | None
    """Field names this grant reveals; ``None`` for resources not split into field classes."""


@dataclass(frozen=True, slots=True)
class SubjectPolicy:
    description: str
    grants: tuple[Grant, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    version: int
    digest: str
    """SHA-256 of the document's canonical JSON: names exactly what was in force."""
    subjects: Mapping[str, SubjectPolicy]

    @property
    def tag(self) -> str:
        """Names this exact policy in an audit event (recorded as every login's purpose)."""
        return f"policy:{self.name}:v{self.version}:{self.digest[:16]}"


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """One subject's grants as a lookup table. Absent entries are refusals."""

    subject: str
    policy_name: str
    policy_version: int
    policy_digest: str
    _table: Mapping[tuple[str, Interaction], Grant] = field(repr=False)

    def grant_for(self, resource: str, interaction: Interaction) -> Grant | None:
        return self._table.get((resource, interaction))

    def allows(self, resource: str, interaction: Interaction) -> bool:
        return (resource, interaction) in self._table

    def fields(self, resource: str, interaction: Interaction) -> frozenset[str]:
        """The fields this interaction may reveal (every field class's, if not split)."""
        grant = self._table.get((resource, interaction))
        if grant is None:
            return frozenset()
        if grant.fields is None:
            return frozenset(
                name for names in FIELD_CLASSES.get(resource, {}).values() for name in names
            )
        return grant.fields

    @property
    def resources(self) -> frozenset[str]:
        return frozenset(resource for resource, _ in self._table)


def _subject_known(name: str) -> bool:
    return name == PATIENT_SUBJECT or name in STAFF_SUBJECTS or name in SERVICE_SUBJECTS


def _check_grant(subject: str, index: int, grant: _GrantDocument) -> Grant:
    where = f"subjects.{subject}.grants[{index}]"
    if grant.resource not in RESOURCES:
        raise PolicyError(f"{where}: unknown resource {grant.resource!r}")
    classes = FIELD_CLASSES.get(grant.resource)
    fields: frozenset[str] | None = None
    if grant.fields is not None:
        if classes is None:
            raise PolicyError(f"{where}: resource {grant.resource!r} has no field classes")
        unknown = sorted(set(grant.fields) - set(classes))
        if unknown:
            raise PolicyError(f"{where}: unknown field classes {unknown} for {grant.resource!r}")
        fields = frozenset(name for cls in grant.fields for name in classes[cls])
    elif classes is not None:
        raise PolicyError(f"{where}: name the field classes granted on {grant.resource!r}")
    if grant.records is RecordScope.ALL and grant.resource in PATIENT_DATA:
        raise PolicyError(f"{where}: patient data is never granted on all records")
    for ceiling in CEILINGS:
        if not ceiling.applies_to(subject):
            continue
        if (
            grant.resource in ceiling.forbidden_resources
            or grant.records not in ceiling.allowed_scopes
            or not ceiling.forbidden_fields.isdisjoint(grant.fields or ())
        ):
            raise PolicyError(f"{where}: not allowed ({ceiling.reason})")
    return Grant(grant.resource, frozenset(grant.interactions), grant.records, fields)


def parse_policy(text: str, *, source: str = "policy") -> Policy:
    """Validate a policy document; any unknown key, name or over-broad grant is an error."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML ({exc})") from None
    try:
        document = _PolicyDocument.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise PolicyError(f"{source}: {problems}") from None
    subjects: dict[str, SubjectPolicy] = {}
    for name, subject in document.subjects.items():
        if not _subject_known(name):
            raise PolicyError(f"{source}: unknown subject {name!r}")
        grants = tuple(_check_grant(name, i, grant) for i, grant in enumerate(subject.grants))
        seen: set[tuple[str, Interaction]] = set()
        for grant in grants:
            for interaction in grant.interactions:
                if (grant.resource, interaction) in seen:
                    raise PolicyError(
                        f"{source}: subjects.{name} grants {interaction} on "
                        f"{grant.resource!r} twice"
                    )
                seen.add((grant.resource, interaction))
        subjects[name] = SubjectPolicy(subject.description, grants)
    canonical = json.dumps(document.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return Policy(document.name, document.version, digest, subjects)


@functools.cache
def default_policy() -> Policy:
    """The policy shipped with labvault (``core/access/data/policy.toml``)."""
    text = resources.files("labvault.core.access").joinpath("data/policy.toml").read_text("utf-8")
    return parse_policy(text, source="labvault default policy")


def subject_of(principal: Principal) -> str:
    """The policy subject a principal acts as. System principals have none: they are
    privileged by name, not by policy, and anonymous callers have nothing."""
    if principal.kind is PrincipalKind.PATIENT:
        return PATIENT_SUBJECT
    if principal.kind is PrincipalKind.STAFF and principal.role in STAFF_SUBJECTS:
        return principal.role
    if principal.kind is PrincipalKind.SERVICE and principal.role:
        return f"{SERVICE_PREFIX}{principal.role}"
    raise PolicyError(f"a {principal.kind} principal has no access policy")


def compile_policy(policy: Policy, principal: Principal) -> CompiledPolicy:
    """The principal's grants as a lookup table (cached: compiled once per policy/subject)."""
    return _compile(policy, subject_of(principal))


_COMPILED: dict[tuple[str, str], CompiledPolicy] = {}


def _compile(policy: Policy, subject: str) -> CompiledPolicy:
    key = (policy.digest, subject)
    compiled = _COMPILED.get(key)
    if compiled is None:
        table: dict[tuple[str, Interaction], Grant] = {}
        found = policy.subjects.get(subject)
        for grant in found.grants if found else ():
            for interaction in grant.interactions:
                table[(grant.resource, interaction)] = grant
        compiled = CompiledPolicy(subject, policy.name, policy.version, policy.digest, table)
        _COMPILED[key] = compiled
    return compiled
