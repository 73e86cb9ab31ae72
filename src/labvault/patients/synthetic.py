"""Synthetic patients for demos, tests and benchmarks (Faker fr_FR, valid NIR keys, test OID).

Faker is slow per call, so names and addresses are drawn once into pools and then combined
at random: a million patients take seconds to generate, not minutes.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from faker import Faker

from labvault.core.contact import parse_phone
from labvault.patients.ins import IdentityStatus, InsOid, Sex
from labvault.patients.nir import synthetic_nir
from labvault.patients.schemas import PatientInput

_POOL_SIZE = 400
_OLDEST = dt.date(1930, 1, 1).toordinal()
_YOUNGEST = dt.date(2024, 12, 31).toordinal()


def _ascii_slug(value: str) -> str:
    decomposed = unicodedata.normalize("NFKD", value)
    kept = "".join(ch for ch in decomposed if ch.isascii() and (ch.isalnum() or ch in " -"))
    return "-".join(kept.lower().split())


def _phone(rng: random.Random) -> str:
    """A mobile number that passes validation (drawn again on the rare unassigned block)."""
    while True:
        digits = f"0{rng.choice('67')}{rng.randrange(10**8):08d}"
        try:
            parse_phone(digits)
        except ValueError:
            continue
        return " ".join(digits[i : i + 2] for i in range(0, 10, 2))


@dataclass(frozen=True, slots=True)
class _Pools:
    last_names: tuple[str, ...]
    male_first_names: tuple[str, ...]
    female_first_names: tuple[str, ...]
    streets: tuple[str, ...]
    places: tuple[tuple[str, str], ...]  # postal code, city


@functools.lru_cache(maxsize=8)  # drawing them costs ~60 ms; tests and demos reuse a few seeds
def _pools(seed: int) -> _Pools:
    fake = Faker("fr_FR")
    fake.seed_instance(seed)
    return _Pools(
        last_names=tuple(sorted({fake.last_name() for _ in range(_POOL_SIZE)})),
        male_first_names=tuple(sorted({fake.first_name_male() for _ in range(_POOL_SIZE)})),
        female_first_names=tuple(sorted({fake.first_name_female() for _ in range(_POOL_SIZE)})),
        streets=tuple(fake.street_address() for _ in range(_POOL_SIZE)),
        places=tuple((fake.postcode(), fake.city()) for _ in range(_POOL_SIZE)),
    )


def synthetic_patient_rows(count: int, *, seed: int = 0) -> Iterator[dict[str, str]]:
    """``count`` synthetic patients as CSV-shaped rows (the columns of the import format)."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not secrets
    pools = _pools(seed)
    for number in range(count):
        sex = Sex.MALE if rng.random() < 0.5 else Sex.FEMALE
        first_pool = pools.male_first_names if sex is Sex.MALE else pools.female_first_names
        first = rng.choice(first_pool)
        second = rng.choice(first_pool) if rng.random() < 0.4 else ""
        birth_name = rng.choice(pools.last_names)
        used_name = rng.choice(pools.last_names) if sex is Sex.FEMALE and rng.random() < 0.3 else ""
        birth_date = dt.date.fromordinal(rng.randint(_OLDEST, _YOUNGEST))
        nir = synthetic_nir(rng, sex=1 if sex is Sex.MALE else 2, birth_date=birth_date)
        postal_code, city = rng.choice(pools.places)
        local = f"{_ascii_slug(first)}.{_ascii_slug(birth_name)}.{seed}-{number}"
        yield {
            "birth_name": birth_name,
            "used_name": used_name,
            "first_names": f"{first} {second}".strip(),
            "birth_date": birth_date.isoformat(),
            "sex": sex.value,
            "birth_place_code": nir.compact[5:10],
            "nir": nir.formatted() if rng.random() < 0.3 else nir.compact,
            "email": f"{local}@example.org" if rng.random() < 0.9 else "",
            "phone": _phone(rng) if rng.random() < 0.8 else "",
            "address": rng.choice(pools.streets),
            "postal_code": postal_code,
            "city": city,
        }


def synthetic_patients(count: int, *, seed: int = 0) -> Iterator[PatientInput]:
    """Validated synthetic patients, with the test INS OID (they are nobody's identity)."""
    for row in synthetic_patient_rows(count, seed=seed):
        data: dict[str, object] = dict(row)
        data["address_line"] = data.pop("address")
        data["ins_oid"] = InsOid.TEST
        data["identity_status"] = IdentityStatus.PROV
        yield PatientInput.model_validate(data)
