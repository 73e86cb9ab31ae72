"""Fingerprint rows: synthetic lines unique to one export, so a leaked copy names its export.

Each export gets ``k`` rows (:func:`fingerprint_count`) that exist in no table. They are
derived from a per-export secret, HMAC-SHA256(tenant key, export id), where the tenant key
comes from the key provider (``labvault/v1|exports|fingerprint``): without the provider
nobody can tell them from real rows or forge another export's. Identities come from the
same Faker fr_FR pools as the honey records (valid-key NIRs, reserved e-mail domains), the
times from the day's own slots, the positions next to the slot they copy.

Only digests are stored: HMAC(tenant key, normalised birth name | first names | birth
date), 16 bytes each. :func:`find_digests` reads any text (a CSV with its rows shuffled,
some deleted, another delimiter, columns moved) and computes the same digests for every
pair of name-like cells and each date of a line.
"""

from __future__ import annotations

import csv
import datetime as dt
import hmac
import random
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from labvault.core.crypto.derived import DerivedKeys
from labvault.core.crypto.normalize import normalize_name
from labvault.patients.synthetic import synthetic_patient_rows

__all__ = [
    "DIGEST_BYTES",
    "KEY_LABEL",
    "FingerprintIdentity",
    "FingerprintKeys",
    "find_digests",
    "fingerprint_count",
    "identity_digest",
    "split_digests",
]

KEY_LABEL: Final = "labvault/v1|exports|fingerprint"
DIGEST_BYTES: Final = 16
MAX_CELLS: Final = 40
"""Lines with more cells than this are read by their first cells only (bounded work)."""
_DATE_PATTERNS: Final = (
    re.compile(r"^(\d{2})/(\d{2})/(\d{4})$"),
    re.compile(r"^(\d{4})-(\d{2})-(\d{2})$"),
)


@dataclass(frozen=True, slots=True, repr=False)
class FingerprintIdentity:
    """A synthetic person of one export. Its repr names nothing."""

    birth_name: str
    used_name: str
    first_names: str
    birth_date: dt.date
    sex: str
    nir: str

    def __repr__(self) -> str:
        return "FingerprintIdentity(…)"


def fingerprint_count(rows: int) -> int:
    """How many fingerprint rows an export of ``rows`` real rows carries: enough that a
    partial copy still holds one, few enough not to disturb the list."""
    if rows < 50:
        return 2
    if rows < 300:
        return 3
    return 4


class FingerprintKeys:
    """The per-tenant fingerprint key, derived once per process from the key provider."""

    def __init__(self, derived: DerivedKeys) -> None:
        self._derived = derived

    def tenant_key(self, tenant_id: uuid.UUID) -> bytes:
        root = self._derived.get(KEY_LABEL).reveal()
        return hmac.digest(root, b"tenant|" + tenant_id.bytes, "sha256")

    def export_seed(self, tenant_id: uuid.UUID, export_id: uuid.UUID) -> int:
        """The export's secret, as a seed for the synthetic rows."""
        secret = hmac.digest(self.tenant_key(tenant_id), b"export|" + export_id.bytes, "sha256")
        return int.from_bytes(secret[:8], "big")

    def identities(
        self, tenant_id: uuid.UUID, export_id: uuid.UUID, count: int
    ) -> tuple[random.Random, list[FingerprintIdentity]]:
        """The export's ``count`` synthetic identities and a generator for the rest of its
        choices (times, positions), both fixed by the export's secret."""
        seed = self.export_seed(tenant_id, export_id)
        people = [
            FingerprintIdentity(
                birth_name=row["birth_name"],
                used_name=row["used_name"],
                first_names=row["first_names"],
                birth_date=dt.date.fromisoformat(row["birth_date"]),
                sex=row["sex"],
                nir=row["nir"].replace(" ", ""),
            )
            for row in synthetic_patient_rows(count, seed=seed)
        ]
        return random.Random(seed ^ 0x5A5A5A5A), people  # noqa: S311 - seeded by a secret

    def digest(self, tenant_id: uuid.UUID, person: FingerprintIdentity) -> bytes:
        return identity_digest(
            self.tenant_key(tenant_id), person.birth_name, person.first_names, person.birth_date
        )


def identity_digest(key: bytes, birth_name: str, first_names: str, birth_date: dt.date) -> bytes:
    """HMAC of the normalised identity (case, accents, hyphens, spacing do not matter)."""
    text = f"{normalize_name(birth_name)}|{normalize_name(first_names)}|{birth_date.isoformat()}"
    return hmac.digest(key, text.encode(), "sha256")[:DIGEST_BYTES]


def split_digests(blob: bytes) -> list[bytes]:
    return [blob[i : i + DIGEST_BYTES] for i in range(0, len(blob), DIGEST_BYTES)]


def _date(cell: str) -> dt.date | None:
    for pattern in _DATE_PATTERNS:
        match = pattern.match(cell)
        if match is None:
            continue
        a, b, c = match.groups()
        year, month, day = (c, b, a) if len(a) == 2 else (a, b, c)
        try:
            return dt.date(int(year), int(month), int(day))
        except ValueError:
            return None
    return None


def _cells(line: str) -> list[str]:
    """Every cell of ``line`` under each common delimiter (a copy may have changed it)."""
    found: list[str] = []
    for delimiter in (";", ",", "\t", "|"):
        if delimiter not in line:
            continue
        try:
            row = next(csv.reader([line], delimiter=delimiter))
        except (csv.Error, StopIteration):
            continue
        found += [cell.strip().lstrip("'") for cell in row]
    if not found:
        found = [line.strip()]
    unique = list(dict.fromkeys(cell for cell in found if cell))
    return unique[:MAX_CELLS]


def _line_candidates(line: str) -> Iterator[tuple[str, str, dt.date]]:
    cells = _cells(line)
    dates = {d for d in (_date(cell) for cell in cells) if d is not None}
    if not dates:
        return
    names = [
        cell
        for cell in cells
        if any(ch.isalpha() for ch in cell) and not any(ch.isdigit() for ch in cell)
    ]
    for i, birth_name in enumerate(names):
        for j, first_names in enumerate(names):
            if i == j:
                continue
            for born in dates:
                yield birth_name, first_names, born


def find_digests(lines: Iterable[str], keys: Sequence[bytes]) -> dict[bytes, set[bytes]]:
    """For each tenant key, the digests of every candidate identity in ``lines``."""
    found: dict[bytes, set[bytes]] = {key: set() for key in keys}
    for line in lines:
        for birth_name, first_names, born in _line_candidates(line):
            for key in keys:
                found[key].add(identity_digest(key, birth_name, first_names, born))
    return found
