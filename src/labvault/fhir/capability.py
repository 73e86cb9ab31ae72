"""The CapabilityStatement (``GET /fhir/R4/metadata``): what this server serves, and how a
client authenticates (SMART backend services: client credentials, ``system/`` scopes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from labvault import __version__

__all__ = ["SEARCH_PARAMS", "TYPES", "capability_statement"]

SEARCH_PARAMS: Final[Mapping[str, tuple[tuple[str, str, str], ...]]] = {
    "Patient": (
        (
            "identifier",
            "token",
            "INS: urn:oid:1.2.250.1.213.1.4.8|<NIR> (test: .4.10); POST _search only",
        ),
        ("_id", "token", "The logical id."),
    ),
    "Location": (("_id", "token", "The logical id."),),
    "Schedule": (
        ("_id", "token", "The logical id."),
        ("actor", "reference", "Location/<id>"),
    ),
    "Slot": (
        ("schedule", "reference", "Schedule/<id> (required)"),
        ("start", "date", "geAAAA-MM-JJ (a week from then) or leAAAA-MM-JJ; at most 31 days"),
    ),
    "Appointment": (("patient", "reference", "Patient/<id> (required)"),),
    "ServiceRequest": (("patient", "reference", "Patient/<id> (required)"),),
    "DiagnosticReport": (("patient", "reference", "Patient/<id> (required)"),),
    "Observation": (("patient", "reference", "Patient/<id> (required)"),),
    "DocumentReference": (("patient", "reference", "Patient/<id> (required)"),),
}
TYPES: Final = tuple(SEARCH_PARAMS)
CREATED_IN_BUNDLES: Final = frozenset({"DiagnosticReport", "Observation"})


def capability_statement(base_url: str, published: str) -> dict[str, Any]:
    resources = []
    for kind, params in SEARCH_PARAMS.items():
        interactions = [{"code": "read"}, {"code": "search-type"}]
        if kind in CREATED_IN_BUNDLES:
            interactions.append({"code": "create"})
        resources.append(
            {
                "type": kind,
                "versioning": "no-version",
                "interaction": interactions,
                "searchParam": [
                    {"name": name, "type": kind_, "documentation": text}
                    for name, kind_, text in params
                ]
                + [
                    {"name": "_count", "type": "number", "documentation": "At most 50."},
                    {"name": "_offset", "type": "number", "documentation": "At most 1000."},
                ],
            }
        )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": published,
        "publisher": "labvault",
        "kind": "instance",
        "software": {"name": "labvault", "version": __version__},
        "implementation": {"description": "labvault FHIR R4 API", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/"
                                    "restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "description": "OAuth2 client credentials at "
                    f"{base_url}/auth/token; SMART system scopes "
                    "(system/<Type>.read|write|*|<cruds>).",
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/"
                            "oauth-uris",
                            "extension": [{"url": "token", "valueUri": f"{base_url}/auth/token"}],
                        }
                    ],
                },
                "resource": resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
            }
        ],
    }
