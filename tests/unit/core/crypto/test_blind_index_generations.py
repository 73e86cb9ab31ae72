"""Index-key generations: writes use the newest key, lookups try every generation held."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import pickle

import pytest

from labvault.core.crypto.blind_index import INDEX_KEY_BYTES, BlindIndexer, IndexKind
from labvault.core.crypto.secret import Secret

BIRTH = dt.date(1987, 3, 14)
NIR = "295109912611193"
Keys = dict[IndexKind, Secret[bytes]]


def random_keys() -> Keys:
    return {kind: Secret(os.urandom(INDEX_KEY_BYTES)) for kind in IndexKind}


def digest(keys: Keys, kind: IndexKind, canonical: str) -> bytes:
    return hmac.new(keys[kind].reveal(), canonical.encode(), hashlib.sha256).digest()


@pytest.fixture
def old() -> Keys:
    return random_keys()


@pytest.fixture
def new() -> Keys:
    return random_keys()


@pytest.fixture
def rotating(old: Keys, new: Keys) -> BlindIndexer:
    return BlindIndexer.from_generations({1: old, 2: new})


def test_a_single_generation_is_generation_one_with_one_candidate(old: Keys) -> None:
    indexer = BlindIndexer(old)
    assert indexer.generation == 1
    assert indexer.generations == (1,)
    assert not indexer.rotating
    assert indexer.nir_candidates(NIR) == (indexer.nir(NIR),)
    assert indexer.nir(NIR) == digest(old, IndexKind.NIR, NIR)


def test_writes_use_the_newest_generation_whatever_the_mapping_order(old: Keys, new: Keys) -> None:
    for generations in ({1: old, 2: new}, {2: new, 1: old}):
        indexer = BlindIndexer.from_generations(generations)
        assert indexer.generation == 2
        assert indexer.generations == (2, 1)
        assert indexer.rotating
        assert indexer.nir(NIR) == digest(new, IndexKind.NIR, NIR)
        assert indexer.email("A@B.FR") == digest(new, IndexKind.EMAIL, "a@b.fr")
        assert indexer.staff_email("A@B.FR") == digest(new, IndexKind.STAFF_EMAIL, "a@b.fr")
        assert indexer.phone("06 12 34 56 78") == digest(new, IndexKind.PHONE, "+33612345678")
        assert indexer.name_birth_date("Dupont", "Élodie", BIRTH) == digest(
            new, IndexKind.NAME_BIRTH_DATE, "dupont\x1felodie\x1f1987-03-14"
        )


def test_candidates_are_every_generation_newest_first(
    rotating: BlindIndexer, old: Keys, new: Keys
) -> None:
    cases = [
        (rotating.nir_candidates(NIR.lower()), IndexKind.NIR, NIR),
        (rotating.email_candidates(" A@B.fr"), IndexKind.EMAIL, "a@b.fr"),
        (rotating.staff_email_candidates("a@b.FR"), IndexKind.STAFF_EMAIL, "a@b.fr"),
        (rotating.phone_candidates("+33 6 12 34 56 78"), IndexKind.PHONE, "+33612345678"),
        (
            rotating.name_birth_date_candidates("DUPONT", "Elodie Marie", BIRTH),
            IndexKind.NAME_BIRTH_DATE,
            "dupont\x1felodie\x1f1987-03-14",
        ),
    ]
    for candidates, kind, canonical in cases:
        assert candidates == (digest(new, kind, canonical), digest(old, kind, canonical))


def test_an_old_generation_digest_is_found_among_the_candidates_only(
    old: Keys, rotating: BlindIndexer
) -> None:
    stored_before = BlindIndexer(old).email("someone@example.fr")
    assert stored_before in rotating.email_candidates("someone@example.fr")
    assert stored_before != rotating.email("someone@example.fr")
    assert stored_before not in rotating.email_candidates("someone.else@example.fr")


def test_a_single_generation_can_be_any_number(new: Keys) -> None:
    indexer = BlindIndexer(new, generation=7)
    assert indexer.generation == 7
    assert indexer.email_candidates("a@b.fr") == (digest(new, IndexKind.EMAIL, "a@b.fr"),)


def test_every_generation_needs_every_kind(old: Keys, new: Keys) -> None:
    partial = {k: v for k, v in old.items() if k is not IndexKind.PHONE}
    with pytest.raises(ValueError, match="missing index keys"):
        BlindIndexer.from_generations({1: partial, 2: new})


@pytest.mark.parametrize(
    "generations",
    [{}, {0: "old"}, {1: "old", 2: "new", 3: "newer"}],
    ids=["none", "zero", "three"],
)
def test_generations_are_checked(generations: dict[int, str], old: Keys, new: Keys) -> None:
    keys = {"old": old, "new": new, "newer": random_keys()}
    with pytest.raises(ValueError, match="generation"):
        BlindIndexer.from_generations({g: keys[name] for g, name in generations.items()})


def test_a_rotating_indexer_hides_and_keeps_its_keys(rotating: BlindIndexer) -> None:
    assert repr(rotating) == "BlindIndexer('**********')"
    with pytest.raises(TypeError, match="pickle"):
        pickle.dumps(rotating)
