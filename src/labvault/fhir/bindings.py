"""Required value-set bindings that fhir.resources does not check.

fhir.resources (R4B) validates structure, cardinality and primitive formats, but a ``code``
bound to a required value set accepts any string (``Patient.gender = "femme"`` passes). The
FHIR specification makes these bindings part of conformance, so every resource the API
returns is checked here in the tests (``tests/integration/fhir``).

:func:`binding_problems` walks a resource as JSON (bundles and contained entries included)
and names each element whose code is outside its required value set. Paths use ``[]`` for
"every item of the list".
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

__all__ = ["REQUIRED", "binding_problems"]


def _codes(text: str) -> frozenset[str]:
    return frozenset(text.split())


_IDENTIFIER_USE = frozenset({"usual", "official", "temp", "secondary", "old"})
_NAME_USE = frozenset({"usual", "official", "temp", "nickname", "anonymous", "old", "maiden"})
_ADDRESS_USE = frozenset({"home", "work", "temp", "old", "billing"})
_ADDRESS_TYPE = frozenset({"postal", "physical", "both"})
_CONTACT_SYSTEM = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})
_CONTACT_USE = frozenset({"home", "work", "temp", "old", "mobile"})
_COMPARATOR = frozenset({"<", "<=", ">=", ">"})
_NARRATIVE = frozenset({"generated", "extensions", "additional", "empty"})
_ISSUE_TYPE = _codes(
    "invalid structure required value invariant security login unknown "
    "expired forbidden suppressed processing not-supported duplicate "
    "multiple-matches not-found deleted too-long code-invalid extension "
    "too-costly business-rule conflict transient lock-error no-store "
    "exception timeout incomplete throttled informational"
)

# Data types found at several places: their required bindings, relative to the element.
_IDENTIFIER = {"use": _IDENTIFIER_USE}
_NAME = {"use": _NAME_USE}
_ADDRESS = {"use": _ADDRESS_USE, "type": _ADDRESS_TYPE}
_TELECOM = {"system": _CONTACT_SYSTEM, "use": _CONTACT_USE}
_QUANTITY = {"comparator": _COMPARATOR}

REQUIRED: Final[Mapping[str, Mapping[str, frozenset[str]]]] = {
    "*": {
        "text.status": _NARRATIVE,
        **{f"identifier[].{k}": v for k, v in _IDENTIFIER.items()},
    },
    "Patient": {
        "gender": frozenset({"male", "female", "other", "unknown"}),
        **{f"name[].{k}": v for k, v in _NAME.items()},
        **{f"address[].{k}": v for k, v in _ADDRESS.items()},
        **{f"telecom[].{k}": v for k, v in _TELECOM.items()},
        "link[].type": frozenset({"replaced-by", "replaces", "refer", "seealso"}),
    },
    "Location": {
        "status": frozenset({"active", "suspended", "inactive"}),
        "mode": frozenset({"instance", "kind"}),
        **{f"address.{k}": v for k, v in _ADDRESS.items()},
        **{f"telecom[].{k}": v for k, v in _TELECOM.items()},
        "hoursOfOperation[].daysOfWeek[]": frozenset(
            {"mon", "tue", "wed", "thu", "fri", "sat", "sun"}
        ),
    },
    "Schedule": {},
    "Slot": {
        "status": frozenset(
            {"busy", "free", "busy-unavailable", "busy-tentative", "entered-in-error"}
        )
    },
    "Appointment": {
        "status": _codes(
            "proposed pending booked arrived fulfilled cancelled noshow entered-in- "
            "error checked-in waitlist"
        ),
        "participant[].required": frozenset({"required", "optional", "information-only"}),
        "participant[].status": frozenset({"accepted", "declined", "tentative", "needs-action"}),
    },
    "ServiceRequest": {
        "status": frozenset(
            {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
        ),
        "intent": _codes(
            "proposal plan directive order original-order reflex-order filler-order "
            "instance-order option"
        ),
        "priority": frozenset({"routine", "urgent", "asap", "stat"}),
    },
    "DiagnosticReport": {
        "status": _codes(
            "registered partial preliminary final amended corrected appended "
            "cancelled entered-in-error unknown"
        ),
    },
    "Observation": {
        "status": _codes(
            "registered preliminary final amended corrected cancelled entered-in- error unknown"
        ),
        **{f"valueQuantity.{k}": v for k, v in _QUANTITY.items()},
        **{f"referenceRange[].low.{k}": v for k, v in _QUANTITY.items()},
        **{f"referenceRange[].high.{k}": v for k, v in _QUANTITY.items()},
    },
    "DocumentReference": {
        "status": frozenset({"current", "superseded", "entered-in-error"}),
        "docStatus": frozenset({"preliminary", "final", "amended", "entered-in-error"}),
        "relatesTo[].code": frozenset({"replaces", "transforms", "signs", "appends"}),
    },
    "Bundle": {
        "type": _codes(
            "document message transaction transaction-response batch batch-response "
            "history searchset collection"
        ),
        "entry[].search.mode": frozenset({"match", "include", "outcome"}),
        "entry[].request.method": frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"}),
    },
    "OperationOutcome": {
        "issue[].severity": frozenset({"fatal", "error", "warning", "information"}),
        "issue[].code": _ISSUE_TYPE,
    },
    "CapabilityStatement": {
        "status": frozenset({"draft", "active", "retired", "unknown"}),
        "kind": frozenset({"instance", "capability", "requirements"}),
        "fhirVersion": frozenset({"4.0.0", "4.0.1", "4.1.0", "4.3.0"}),
        "rest[].mode": frozenset({"client", "server"}),
        "rest[].resource[].interaction[].code": _codes(
            "read vread update patch delete history-instance history-type create search-type"
        ),
        "rest[].interaction[].code": frozenset(
            {"transaction", "batch", "search-system", "history-system"}
        ),
        "rest[].resource[].searchParam[].type": _codes(
            "number date string token reference composite quantity uri special"
        ),
        "rest[].resource[].versioning": frozenset({"no-version", "versioned", "versioned-update"}),
    },
}
"""Resource type (``*``: every type) -> element path -> the codes its binding allows."""

_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*(?:;.*)?", re.I)
_KNOWN = frozenset(REQUIRED) - {"*"}


def _values(node: Any, path: Sequence[str]) -> Iterator[tuple[str, Any]]:
    if not path:
        yield "", node
        return
    head, rest = path[0], path[1:]
    many = head.endswith("[]")
    key = head.removesuffix("[]")
    if not isinstance(node, Mapping) or key not in node:
        return
    value = node[key]
    items = value if many and isinstance(value, list) else [value]
    for index, item in enumerate(items):
        label = f"{key}[{index}]" if many else key
        for where, found in _values(item, rest):
            yield f"{label}.{where}" if where else label, found


def _attachments(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    """Every ``contentType`` of an Attachment (bound to the MIME types, required)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            place = f"{where}.{key}" if where else str(key)
            if key == "contentType" and isinstance(value, str):
                yield place, value
            elif key != "resource":
                yield from _attachments(value, place)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _attachments(item, f"{where}[{index}]")


def binding_problems(resource: Mapping[str, Any], *, where: str = "") -> list[str]:
    """Elements of ``resource`` (and of the resources it holds) outside a required binding.

    An unknown ``resourceType`` is itself a problem: a resource this checker does not know
    has not been checked."""
    kind = resource.get("resourceType")
    label = where or str(kind)
    if kind not in _KNOWN:
        return [f"{label}: no binding table for resourceType {kind!r}"]
    problems: list[str] = []
    rules = {**REQUIRED["*"], **REQUIRED[str(kind)]}
    for path, allowed in rules.items():
        for place, value in _values(resource, path.split(".")):
            if not isinstance(value, str) or value not in allowed:
                problems.append(f"{label}.{place}: {value!r} is not in its required value set")
    for place, value in _attachments(resource, ""):
        if not _MIME.fullmatch(value):
            problems.append(f"{label}.{place}: {value!r} is not a MIME type")
    if kind == "Bundle":
        for index, entry in enumerate(resource.get("entry") or []):
            if not isinstance(entry, Mapping):
                continue
            inner = entry.get("resource")
            if isinstance(inner, Mapping):
                problems += binding_problems(inner, where=f"{label}.entry[{index}].resource")
            response = entry.get("response")
            response_outcome = response.get("outcome") if isinstance(response, Mapping) else None
            if isinstance(response_outcome, Mapping):
                problems += binding_problems(
                    response_outcome, where=f"{label}.entry[{index}].response.outcome"
                )
    for index, inner in enumerate(resource.get("contained") or []):
        if isinstance(inner, Mapping):
            problems += binding_problems(inner, where=f"{label}.contained[{index}]")
    return problems
