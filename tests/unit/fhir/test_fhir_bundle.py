"""Pushed bundles: a well-formed one maps to an IncomingResult; anything else, however
mangled, is a BundleError naming a place, never a crash and never a value (I5, I6)."""

from __future__ import annotations

import copy
import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labvault.fhir.bundle import BundleError, incoming_from_bundle
from labvault.results.intake import _flagged, _system
from labvault.results.sensitive import DEFAULT_CODES

CLIENT = uuid.UUID(int=7)
NOW = dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)
NIR = "255081416802538"


def bundle() -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"value": "MSG-1"},
        "entry": [
            {
                "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001",
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": NIR}],
                    "name": [{"use": "official", "family": "MARTIN", "given": ["Jeanne", "Marie"]}],
                    "birthDate": "1955-08-14",
                    "gender": "female",
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000002",
                "resource": {
                    "resourceType": "DiagnosticReport",
                    "identifier": [{"value": "F-1"}],
                    "basedOn": [{"identifier": {"value": "P-1"}}],
                    "status": "corrected",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                    "effectiveDateTime": "2026-11-30T07:30:00+01:00",
                    "result": [{"reference": "urn:uuid:00000000-0000-4000-8000-000000000003"}],
                    "conclusion": "Glycémie élevée",
                },
                "request": {"method": "POST", "url": "DiagnosticReport"},
            },
            {
                "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000003",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {
                        "coding": [{"system": "http://loinc.org", "code": "2345-7"}],
                        "text": "Glucose",
                    },
                    "valueQuantity": {"value": Decimal("7.77"), "unit": "mmol/L"},
                    "referenceRange": [{"text": "4.1-5.9"}],
                    "interpretation": [{"coding": [{"code": "H"}]}],
                    "note": [{"text": "à jeun"}],
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }


def test_a_well_formed_bundle_maps_to_an_incoming_result() -> None:
    incoming = incoming_from_bundle(bundle(), CLIENT, received_at=NOW)
    assert incoming.client_id == CLIENT
    assert incoming.patient.ins[0].value == NIR
    assert incoming.patient.first_names == ("Jeanne", "Marie")
    assert incoming.patient.sex == "F"
    (order,) = incoming.orders
    assert (order.filler_order_number, order.placer_order_number) == ("F-1", "P-1")
    assert order.lis_status == "C"
    assert order.collected_at == dt.datetime(2026, 11, 30, 6, 30, tzinfo=dt.UTC)
    (observation,) = order.observations
    assert observation.number == Decimal("7.77")
    assert observation.code.display == "Glucose"
    assert observation.abnormal_flags == ("H",)
    assert NIR not in repr(incoming)
    again = incoming_from_bundle(bundle(), CLIENT, received_at=NOW)
    assert again.key.digest() == incoming.key.digest()


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("type",), "collection", "Bundle.type"),
        (("identifier",), None, "Bundle.identifier"),
        (("entry", 0, "request", "method"), "DELETE", "entry[0].request.method"),
        (("entry", 1, "resource", "status"), "cancelled", "entry[1].resource.status"),
        (("entry", 1, "resource", "identifier"), None, "entry[1].resource.identifier"),
        (("entry", 2, "resource", "status"), "done", "entry[2].resource"),
        (("entry", 2, "fullUrl"), "urn:uuid:other", "Bundle.entry"),
        (("entry", 0, "resource", "birthDate"), "1955", "entry[0].resource.birthDate"),
        (("entry", 1, "resource", "effectiveDateTime"), "2026-11-30T07:30:00", "effectiveDateTime"),
        (("entry", 2, "resource", "resourceType"), "Invoice", "entry[2].resource"),
    ],
)
def test_each_problem_is_named_by_place(path: tuple[Any, ...], value: object, where: str) -> None:
    document = bundle()
    node: Any = document
    for part in path[:-1]:
        node = node[part]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    with pytest.raises(BundleError) as refused:
        incoming_from_bundle(document, CLIENT, received_at=NOW)
    assert where in str(refused.value)
    assert NIR not in str(refused.value)
    assert "MARTIN" not in str(refused.value)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_mangled_bundle_is_mapped_or_refused_cleanly(data: st.DataObject) -> None:
    document = bundle()
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(document) if p]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        node: Any = document
        for part in path[:-1]:
            node = node[part]
        if data.draw(st.booleans()):
            node[path[-1]] = data.draw(JSON)
        elif isinstance(node, dict):
            del node[path[-1]]
        else:
            node.pop(path[-1])
    message = ""
    try:
        incoming_from_bundle(copy.deepcopy(document), CLIENT, received_at=NOW)
    except BundleError as refused:
        message = str(refused)
    assert NIR not in message


@given(JSON)
def test_any_json_is_refused_cleanly(document: object) -> None:
    if not isinstance(document, dict):
        return
    with pytest.raises(BundleError):
        incoming_from_bundle(document, CLIENT, received_at=NOW)


def test_a_made_up_key_is_not_repeated() -> None:
    document = bundle()
    document["entry"][0]["resource"][NIR] = 1
    with pytest.raises(BundleError) as refused:
        incoming_from_bundle(document, CLIENT, received_at=NOW)
    assert NIR not in str(refused.value)
    assert "entry[0].resource" in str(refused.value)


def test_every_coding_is_kept_and_a_sensitive_alternate_is_flagged() -> None:
    """A local code first and LOINC second: the sensitive-code check sees the LOINC one."""
    document = bundle()
    observation = document["entry"][2]["resource"]
    observation["code"] = {
        "coding": [
            {"system": "urn:oid:1.2.250.1.999.2", "code": "VIHDEP"},
            {"system": "urn:oid:2.16.840.1.113883.6.1", "code": "56888-1"},
        ]
    }
    (order,) = incoming_from_bundle(document, CLIENT, received_at=NOW).orders
    code = order.observations[0].code
    assert code.code == "VIHDEP"
    assert [(a.system, a.code) for a in code.alternates] == [("http://loinc.org", "56888-1")]
    sensitive = {(_system(c.system), c.code) for c in DEFAULT_CODES}
    assert [c.code for c in _flagged(order, sensitive)] == ["56888-1"]
    too_many = copy.deepcopy(document)
    too_many["entry"][2]["resource"]["code"]["coding"] *= 5
    with pytest.raises(BundleError):
        incoming_from_bundle(too_many, CLIENT, received_at=NOW)
