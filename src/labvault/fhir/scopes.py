"""SMART on FHIR scopes for system clients, parsed strictly.

Accepted forms (only the ``system/`` context: a service client acts for no user or patient):

- SMART v1: ``system/<Type>.read`` (read and search), ``system/<Type>.write`` (create,
  update, delete), ``system/<Type>.*`` (everything);
- SMART v2: ``system/<Type>.<cruds>``, a non-empty subset of ``c r u d s`` in that order,
  each letter once (``system/Observation.rs``);
- ``<Type>`` is a resource type this server knows, or ``*`` (every one of them).

Anything else (another context, an unknown type, a letter out of order, a stray character)
is an error, never a narrower or broader guess: a scope string is an authorization, and a
lenient parser is how one scope turns into another.

A set of scopes is kept as the permissions it grants, ``(type, letter)`` pairs, so requested
scopes meet registered ones by intersection and are written back canonically.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "PERMISSIONS",
    "RESOURCE_TYPES",
    "ScopeError",
    "ScopeSet",
    "parse_scope",
    "parse_scopes",
]

PERMISSIONS: Final = "cruds"
"""SMART v2 letters, in their canonical order: create, read, update, delete, search."""

RESOURCE_TYPES: Final = frozenset(
    {
        "Patient",
        "Location",
        "Schedule",
        "Slot",
        "Appointment",
        "ServiceRequest",
        "DiagnosticReport",
        "Observation",
        "DocumentReference",
    }
)
"""The resource types a scope may name (those this server serves)."""

MAX_SCOPES: Final = 64
MAX_LENGTH: Final = 2000

_V1: Final = {"read": "rs", "write": "cud", "*": PERMISSIONS}
_SCOPE: Final = re.compile(r"system/(?P<type>\*|[A-Z][A-Za-z]{1,63})\.(?P<access>[a-z*]{1,5})")


class ScopeError(ValueError):
    """A scope that is not one this server understands (the message names no secret)."""


def _letters(access: str) -> str:
    if access in _V1:
        return _V1[access]
    if access and all(letter in PERMISSIONS for letter in access):
        positions = [PERMISSIONS.index(letter) for letter in access]
        if positions == sorted(set(positions)):
            return access
    raise ScopeError("a scope's access is read, write, * or letters of 'cruds' in that order")


def parse_scope(text: str) -> frozenset[tuple[str, str]]:
    """The ``(type, letter)`` permissions of one scope; :class:`ScopeError` if malformed."""
    match = _SCOPE.fullmatch(text)
    if match is None:
        raise ScopeError("a scope looks like system/Observation.read")
    kind = match["type"]
    if kind != "*" and kind not in RESOURCE_TYPES:
        raise ScopeError("a scope names a resource type this server serves, or *")
    letters = _letters(match["access"])
    kinds = sorted(RESOURCE_TYPES) if kind == "*" else [kind]
    return frozenset((name, letter) for name in kinds for letter in letters)


@dataclass(frozen=True, slots=True)
class ScopeSet:
    """What a token (or a client registration) allows, as ``(type, letter)`` pairs."""

    permissions: frozenset[tuple[str, str]] = frozenset()

    def allows(self, resource_type: str, letter: str) -> bool:
        if letter not in PERMISSIONS or len(letter) != 1:
            raise ValueError(f"{letter!r} is not one of {PERMISSIONS!r}")
        return (resource_type, letter) in self.permissions

    def __and__(self, other: ScopeSet) -> ScopeSet:
        return ScopeSet(self.permissions & other.permissions)

    def __bool__(self) -> bool:
        return bool(self.permissions)

    def __str__(self) -> str:
        """Canonical form: one scope per type, v1 words when they say it exactly."""
        by_type: dict[str, str] = {}
        for kind, letter in self.permissions:
            by_type[kind] = by_type.get(kind, "") + letter
        words = {letters: word for word, letters in _V1.items()}
        scopes = []
        for kind in sorted(by_type):
            letters = "".join(sorted(by_type[kind], key=PERMISSIONS.index))
            scopes.append(f"system/{kind}.{words.get(letters, letters)}")
        return " ".join(scopes)


def parse_scopes(text: str | Iterable[str]) -> ScopeSet:
    """A space-separated scope string (RFC 6749 §3.3) or a list of scopes, all or nothing."""
    if isinstance(text, str):
        if len(text) > MAX_LENGTH:
            raise ScopeError("too many scopes")
        if text and (text != text.strip() or "  " in text):
            raise ScopeError("scopes are separated by single spaces")
        items = text.split(" ") if text else []
    else:
        items = list(text)
    if len(items) > MAX_SCOPES:
        raise ScopeError("too many scopes")
    permissions: set[tuple[str, str]] = set()
    for item in items:
        permissions |= parse_scope(item)
    return ScopeSet(frozenset(permissions))
