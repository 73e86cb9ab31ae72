"""The access policy document: defaults as the issue states them, ceilings, strict parsing."""

from __future__ import annotations

import contextlib
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labvault.core.access.policies import (
    FIELD_CLASSES,
    PATIENT_DATA,
    Interaction,
    PolicyError,
    RecordScope,
    compile_policy,
    default_policy,
    parse_policy,
    subject_of,
)
from labvault.core.access.principals import ANONYMOUS, Principal, PrincipalKind, SystemPrincipal

IDENTITY = set(FIELD_CLASSES["patient"]["identity"])
INS = set(FIELD_CLASSES["patient"]["ins"])
CONTACT = set(FIELD_CLASSES["patient"]["contact"])


def staff(role: str) -> Principal:
    return Principal(PrincipalKind.STAFF, str(uuid.uuid4()), role=role, site_id=uuid.uuid4())


def patient() -> Principal:
    return Principal(PrincipalKind.PATIENT, str(uuid.uuid4()))


def test_receptionist_sees_identity_contact_appointments_never_results() -> None:
    policy = compile_policy(default_policy(), staff("receptionist"))
    assert policy.fields("patient", Interaction.READ) == IDENTITY | INS | CONTACT
    assert policy.allows("appointment", Interaction.CREATE)
    assert not policy.allows("result", Interaction.READ)
    grant = policy.grant_for("patient", Interaction.SEARCH)
    assert grant is not None
    assert grant.records is RecordScope.SITE_RELATIONSHIP


def test_sampler_sees_identity_of_the_days_appointments_only() -> None:
    policy = compile_policy(default_policy(), staff("sampler"))
    assert policy.fields("patient", Interaction.READ) == IDENTITY
    grant = policy.grant_for("appointment", Interaction.READ)
    assert grant is not None
    assert grant.records is RecordScope.SITE_TODAY
    assert not policy.allows("patient", Interaction.SEARCH)
    assert not policy.allows("result", Interaction.READ)


def test_biologist_reads_results_of_its_sites() -> None:
    policy = compile_policy(default_policy(), staff("biologist"))
    grant = policy.grant_for("result", Interaction.READ)
    assert grant is not None
    assert grant.records is RecordScope.SITE_RELATIONSHIP
    assert CONTACT.isdisjoint(policy.fields("patient", Interaction.READ))


@pytest.mark.parametrize("role", ["security_officer", "organization_admin"])
def test_admin_and_security_roles_have_no_patient_data(role: str) -> None:
    policy = compile_policy(default_policy(), staff(role))
    assert policy.resources
    assert policy.resources.isdisjoint(PATIENT_DATA)


def test_patient_acts_on_own_records_only() -> None:
    policy = compile_policy(default_policy(), patient())
    for resource in policy.resources:
        for interaction in Interaction:
            grant = policy.grant_for(resource, interaction)
            assert grant is None or grant.records is RecordScope.OWN
    assert not policy.allows("patient", Interaction.SEARCH)
    assert not policy.allows("audit", Interaction.READ)


def test_unknown_role_and_service_kind_get_nothing() -> None:
    with pytest.raises(PolicyError):
        subject_of(staff("janitor"))
    service = Principal(PrincipalKind.SERVICE, "client", role="printer")
    assert compile_policy(default_policy(), service).resources == frozenset()


@pytest.mark.parametrize("kind", ["lis", "fhir"])
def test_services_read_identity_appointments_and_results_of_their_sites(kind: str) -> None:
    service = Principal(PrincipalKind.SERVICE, f"service:{uuid.uuid4()}", role=kind)
    policy = compile_policy(default_policy(), service)
    assert policy.fields("patient", Interaction.READ) == IDENTITY | INS
    assert policy.fields("patient", Interaction.SEARCH) == IDENTITY | INS
    assert policy.allows("appointment", Interaction.READ)
    assert not policy.allows("appointment", Interaction.CREATE)
    assert policy.allows("result", Interaction.READ)
    assert policy.allows("result", Interaction.CREATE)
    assert not policy.allows("result", Interaction.UPDATE)
    assert not policy.allows("patient", Interaction.UPDATE)
    assert policy.resources <= PATIENT_DATA
    for resource in policy.resources:
        for interaction in Interaction:
            found = policy.grant_for(resource, interaction)
            assert found is None or found.records is RecordScope.SITE_RELATIONSHIP


@pytest.mark.parametrize("principal", [ANONYMOUS, SystemPrincipal("cli:test")])
def test_system_and_anonymous_have_no_policy(principal: Principal) -> None:
    with pytest.raises(PolicyError):
        compile_policy(default_policy(), principal)


def test_compiled_once_per_policy_and_subject() -> None:
    first = compile_policy(default_policy(), staff("biologist"))
    assert compile_policy(default_policy(), staff("biologist")) is first
    assert first.policy_digest == default_policy().digest


HEADER = 'version = 1\nname = "org"\n'


def grant(subject: str, resource: str, records: str, fields: str = "") -> str:
    extra = f"\nfields = [{fields}]" if fields else ""
    return (
        f"[[subjects.{subject}.grants]]\nresource = {resource!r}\n"
        f'interactions = ["read"]\nrecords = {records!r}{extra}\n'
    )


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (
            grant("organization_admin", "patient", "site-relationship", '"identity"'),
            "never see patient data",
        ),
        (grant("security_officer", "result", "site-relationship"), "never see patient data"),
        (grant("patient", "result", "site-relationship"), "own and its dependents"),
        (grant("patient", "audit", "own"), "own and its dependents"),
        (grant("receptionist", "result", "own"), "through their sites"),
        (grant("biologist", "result", "all"), "never granted on all records"),
        (grant("biologist", "patient", "site-relationship"), "name the field classes"),
        (grant("biologist", "patient", "site-relationship", '"medical"'), "unknown field classes"),
        (grant("biologist", "result", "site-relationship", '"identity"'), "no field classes"),
        (grant("biologist", "salary", "all"), "unknown resource"),
        (grant("janitor", "staff", "all"), "unknown subject"),
        (grant('"service:printer"', "result", "site-relationship"), "unknown subject"),
        (
            grant('"service:lis"', "patient", "site-relationship", '"identity", "contact"'),
            "never their contact",
        ),
        (grant('"service:fhir"', "result", "all"), "never granted on all records"),
        (grant('"service:fhir"', "audit", "all"), "never their contact"),
        (grant('"service:fhir"', "configuration", "all"), "never their contact"),
        (grant('"service:lis"', "result", "own"), "never their contact"),
        (grant('"service:lis"', "appointment", "site-today"), "never their contact"),
        (grant("biologist", "result", "site-relationship") * 2, "twice"),
    ],
)
def test_documents_that_overreach_are_refused(document: str, reason: str) -> None:
    with pytest.raises(PolicyError, match=reason):
        parse_policy(HEADER + document)


@pytest.mark.parametrize(
    "document",
    [
        "version = 1\n",
        'version = 0\nname = "x"\n[subjects]\n',
        'version = 1\nname = "x"\nowner = "me"\n[subjects]\n',
        'version = 1\nname = "x"\n[subjects.biologist]\ncolour = "red"\n',
        'version = 1\nname = "x"\n[[subjects.biologist.grants]]\nresource = "result"\n'
        'interactions = ["delete"]\nrecords = "site-relationship"\n',
        'version = 1\nname = "x"\n[[subjects.biologist.grants]]\nresource = "result"\n'
        'interactions = []\nrecords = "site-relationship"\n',
        "version = = 1",
    ],
)
def test_malformed_documents_are_refused_with_where(document: str) -> None:
    with pytest.raises(PolicyError, match=r"^policy: "):
        parse_policy(document)


def test_digest_names_the_content_not_the_layout() -> None:
    text = HEADER + "[subjects]\n" + grant("biologist", "result", "site-relationship")
    spaced = "# a comment\n" + text.replace(" = ", "   =   ")
    assert parse_policy(text).digest == parse_policy(spaced).digest
    changed = text.replace('["read"]', '["read", "update"]')
    assert parse_policy(changed).digest != parse_policy(text).digest


@given(st.text(max_size=400))
def test_any_text_is_a_policy_or_a_policy_error(text: str) -> None:
    with contextlib.suppress(PolicyError):
        parse_policy(text)


@given(
    subject=st.sampled_from(
        [
            "patient",
            "receptionist",
            "organization_admin",
            "security_officer",
            '"service:lis"',
            '"service:fhir"',
        ]
    ),
    resource=st.sampled_from(sorted(PATIENT_DATA | {"staff", "audit"})),
    records=st.sampled_from([scope.value for scope in RecordScope]),
)
def test_no_document_gives_admin_roles_patient_data(
    subject: str, resource: str, records: str
) -> None:
    fields = '"identity", "contact"' if resource == "patient" else ""
    try:
        policy = parse_policy(HEADER + grant(subject, resource, records, fields))
    except PolicyError:
        return
    subject = subject.strip('"')
    granted = {g.resource for g in policy.subjects[subject].grants}
    if subject in {"organization_admin", "security_officer"}:
        assert granted.isdisjoint(PATIENT_DATA)
    if subject == "patient":
        assert all(g.records is RecordScope.OWN for g in policy.subjects[subject].grants)
    if subject.startswith("service:"):
        for found in policy.subjects[subject].grants:
            assert found.resource in PATIENT_DATA
            assert found.records is RecordScope.SITE_RELATIONSHIP
            assert CONTACT.isdisjoint(found.fields or ())


def test_the_tag_names_the_policy_and_fits_an_audit_event() -> None:
    from labvault.core.audit.events import TOKEN_PATTERN

    policy = default_policy()
    assert policy.tag == f"policy:labvault-default:v{policy.version}:{policy.digest[:16]}"
    assert TOKEN_PATTERN.fullmatch(policy.tag)
