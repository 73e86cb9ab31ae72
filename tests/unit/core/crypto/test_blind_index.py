"""Blind indexes and the canonical forms they hash: same person, same index."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labvault.core.crypto.blind_index import INDEX_KEY_BYTES, BlindIndexer, IndexKind
from labvault.core.crypto.normalize import (
    NormalizationError,
    normalize_email,
    normalize_name,
    normalize_phone,
)
from labvault.core.crypto.secret import Secret

BIRTH = dt.date(1987, 3, 14)


def random_keys() -> dict[IndexKind, Secret[bytes]]:
    return {kind: Secret(os.urandom(INDEX_KEY_BYTES)) for kind in IndexKind}


@pytest.fixture
def keys() -> dict[IndexKind, Secret[bytes]]:
    return random_keys()


@pytest.fixture
def indexer(keys: dict[IndexKind, Secret[bytes]]) -> BlindIndexer:
    return BlindIndexer(keys)


def reference_digest(keys: dict[IndexKind, Secret[bytes]], kind: IndexKind, text: str) -> bytes:
    return hmac.new(keys[kind].reveal(), text.encode(), hashlib.sha256).digest()


# --- normalize_name -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spellings", "canonical"),
    [
        (["Élodie", "ELODIE", "elodie", "E\u0301lodie", " élodie ", "ÉLODIE"], "elodie"),
        (
            [
                "Dupont-Martin",
                "DUPONT MARTIN",
                "dupont  martin",
                "Dupont - Martin",
                "dupont_martin",
            ],
            "dupont martin",
        ),
        (["Dupont\u2010Martin", "Dupont\u2013Martin", "Dupont\u2014Martin"], "dupont martin"),
        (["Dupont\u00a0Martin", "Dupont\tMartin", "Dupont\u2009Martin"], "dupont martin"),
        (["O'Brien", "O\u2019Brien", "o`brien", "O BRIEN"], "o brien"),
        (["d\u2019Artagnan", "D'ARTAGNAN", "d artagnan"], "d artagnan"),
        (["Lætitia", "LAETITIA", "LÆTITIA"], "laetitia"),
        (["Cœur", "COEUR", "CŒUR"], "coeur"),
        (["Straße", "STRASSE", "strasse"], "strasse"),
        (["Ñúñez", "NUNEZ", "Nuñez"], "nunez"),
        (["Zoë", "ZOE", "Zoe\u0308"], "zoe"),
        (["Saint-Étienne", "SAINT ETIENNE", "saint\u2011etienne"], "saint etienne"),
        (["ﬁona", "FIONA"], "fiona"),
    ],
)
def test_spellings_of_one_name_share_a_canonical_form(spellings: list[str], canonical: str) -> None:
    assert {normalize_name(s) for s in spellings} == {canonical}


@pytest.mark.parametrize(
    ("left", "right"),
    [("Jean-Pierre", "Jean"), ("Dupont", "Dupond"), ("Marie", "Maria"), ("Lea", "Leo")],
)
def test_different_names_stay_different(left: str, right: str) -> None:
    assert normalize_name(left) != normalize_name(right)


def test_normalize_name_of_separators_only_is_empty() -> None:
    assert normalize_name(" - ' ") == ""
    assert normalize_name("") == ""


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_normalize_name_is_idempotent(value: str) -> None:
    once = normalize_name(value)
    assert normalize_name(once) == once


_NAME_ALPHABET = st.sampled_from(
    list(
        "abcdeEÉéèêëïîôöüçÇñÑæÆœŒßẞ -'\u2019\u2010\u2013\u2014.,_\t\u00a0\u0301\u0308"
        "\u0130\u0131\u017f\ufb01\ufb02"
    )
)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=_NAME_ALPHABET, max_size=30))
def test_normalize_name_is_idempotent_on_name_like_text(value: str) -> None:
    once = normalize_name(value)
    assert normalize_name(once) == once
    assert once == once.strip()
    assert "  " not in once
    assert not any(unicodedata.combining(ch) for ch in once)
    assert once == once.casefold()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="ascii", categories=["L"]), min_size=1))
def test_case_never_matters(value: str) -> None:
    assert normalize_name(value.upper()) == normalize_name(value.lower()) == normalize_name(value)


# --- normalize_email / normalize_phone ----------------------------------------------------------


def test_emails_are_case_insensitive_and_trimmed() -> None:
    forms = ["Jean.Dupont@Example.FR", " jean.dupont@example.fr ", "JEAN.DUPONT@EXAMPLE.FR"]
    assert {normalize_email(f) for f in forms} == {"jean.dupont@example.fr"}


def test_emails_are_nfkc_normalised() -> None:
    assert normalize_email("\uff4a\uff45\uff41\uff4e@example.fr") == "jean@example.fr"


@pytest.mark.parametrize(
    "spelling",
    [
        "0612345678",
        "06 12 34 56 78",
        "06.12.34.56.78",
        "06-12-34-56-78",
        "+33612345678",
        "+33 6 12 34 56 78",
        "+33 (0)6 12 34 56 78",
        "0033 6 12 34 56 78",
        " 06 12 34 56 78 ",
        "".join(chr(0xFF10 + int(d)) for d in "0612345678"),  # full-width digits
    ],
)
def test_phone_spellings_share_the_e164_form(spelling: str) -> None:
    assert normalize_phone(spelling) == "+33612345678"


@pytest.mark.parametrize("bad", ["", "12", "not a phone", "0012", "06 12 34 56", "0000000000"])
def test_invalid_phones_raise_normalization_error_without_the_value(bad: str) -> None:
    with pytest.raises(NormalizationError) as caught:
        normalize_phone(bad)
    assert isinstance(caught.value, ValueError)
    if bad.strip():
        assert bad not in str(caught.value)


@pytest.mark.parametrize(
    "spelling",
    [
        "+330612345678",
        "+3\u0663612345678",
        "+33\u0666\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668",
    ],
    ids=["trunk-zero-after-country-code", "arabic-indic-digit", "arabic-indic-digits"],
)
def test_compact_e164_lookalikes_get_the_same_canonical_form(spelling: str) -> None:
    # Compact "+" spellings go through full phone parsing like any other: a trunk 0 kept
    # after the country code ("+330612345678", as "+33 0612345678") is dropped and non-ASCII
    # digits are read as digits, so one phone has one canonical form and one blind index. A
    # shortcut passing "+" and digits through unvalidated would give it several.
    assert normalize_phone(spelling) == "+33612345678"


# --- BlindIndexer ---------------------------------------------------------------------------


def test_indexer_requires_every_kind(keys: dict[IndexKind, Secret[bytes]]) -> None:
    for kind in IndexKind:
        partial = {k: v for k, v in keys.items() if k is not kind}
        with pytest.raises(ValueError, match="missing index keys") as caught:
            BlindIndexer(partial)
        assert kind.value in str(caught.value) or kind.name in str(caught.value)
    with pytest.raises(ValueError, match="missing index keys"):
        BlindIndexer({})


def test_index_kinds() -> None:
    assert {k.value for k in IndexKind} == {
        "nir",
        "email",
        "phone",
        "name_birth_date",
        "staff_email",
    }


def test_digests_are_hmac_sha256_under_the_kinds_key(
    indexer: BlindIndexer, keys: dict[IndexKind, Secret[bytes]]
) -> None:
    assert indexer.nir("295109912611193") == reference_digest(
        keys, IndexKind.NIR, "295109912611193"
    )
    assert indexer.email("A@B.FR") == reference_digest(keys, IndexKind.EMAIL, "a@b.fr")
    assert indexer.phone("06 12 34 56 78") == reference_digest(
        keys, IndexKind.PHONE, "+33612345678"
    )
    assert indexer.name_birth_date("Dupont", "Élodie", BIRTH) == reference_digest(
        keys, IndexKind.NAME_BIRTH_DATE, "dupont\x1felodie\x1f1987-03-14"
    )
    assert len(indexer.nir("295109912611193")) == 32


def test_nir_index_is_case_insensitive_for_corsica(indexer: BlindIndexer) -> None:
    assert indexer.nir("185072A12345678") == indexer.nir("185072a12345678")


def test_same_person_different_spellings_same_index(indexer: BlindIndexer) -> None:
    assert indexer.name_birth_date("Dupont-Martin", "Élodie", BIRTH) == indexer.name_birth_date(
        "DUPONT  MARTIN", "ELODIE", BIRTH
    )
    assert indexer.name_birth_date("N\u2019Diaye", "Zoë", BIRTH) == indexer.name_birth_date(
        "n'diaye", "ZOE", BIRTH
    )
    assert indexer.email("Elodie.Dupont@Example.FR") == indexer.email("elodie.dupont@example.fr")
    national, e164, spaced = "0612345678", "+33612345678", "+33 6 12 34 56 78"
    assert indexer.phone(national) == indexer.phone(e164) == indexer.phone(spaced)


@pytest.mark.parametrize(
    "first_names",
    [
        "Jean-Pierre Marc",
        "jean-pierre",
        "JEAN\u2010PIERRE, Marc",
        "Jean-Pierre,Marc",
        "Jean\u2013Pierre",
    ],
)
def test_first_given_name_is_used(indexer: BlindIndexer, first_names: str) -> None:
    assert indexer.name_birth_date("Dupont", first_names, BIRTH) == indexer.name_birth_date(
        "Dupont", "Jean-Pierre", BIRTH
    )


def test_compound_first_name_differs_from_its_first_part(indexer: BlindIndexer) -> None:
    assert indexer.name_birth_date("Dupont", "Jean-Pierre", BIRTH) != indexer.name_birth_date(
        "Dupont", "Jean", BIRTH
    )
    assert indexer.name_birth_date("Dupont", "Jean-Pierre Marc", BIRTH) != indexer.name_birth_date(
        "Dupont", "Jean Marc", BIRTH
    )


def test_spaces_separate_given_names(indexer: BlindIndexer) -> None:
    """INS convention: a space separates given names, so "jean pierre" is Jean + Pierre."""
    assert indexer.name_birth_date("Dupont", "jean pierre", BIRTH) == indexer.name_birth_date(
        "Dupont", "Jean", BIRTH
    )


def test_other_fields_change_the_name_index(indexer: BlindIndexer) -> None:
    base = indexer.name_birth_date("Dupont", "Élodie", BIRTH)
    assert indexer.name_birth_date("Dupond", "Élodie", BIRTH) != base
    assert indexer.name_birth_date("Dupont", "Éloise", BIRTH) != base
    assert indexer.name_birth_date("Dupont", "Élodie", BIRTH + dt.timedelta(days=1)) != base
    # The separator keeps the fields apart: moving a word across fields changes the index.
    assert indexer.name_birth_date("Dupont Elodie", "X", BIRTH) != indexer.name_birth_date(
        "Dupont", "Elodie X", BIRTH
    )


def test_per_kind_keys_give_different_digests_for_the_same_canonical_input(
    indexer: BlindIndexer,
) -> None:
    same = "+33612345678"  # canonical as a NIR (upper-cased), an email and a phone
    digests = {indexer.nir(same), indexer.email(same), indexer.phone(same)}
    assert len(digests) == 3


def test_one_key_for_all_kinds_would_collide() -> None:
    """Control for the test above: the difference comes from the keys, not the encoding."""
    shared = Secret(os.urandom(32))
    indexer = BlindIndexer(dict.fromkeys(IndexKind, shared))
    same = "+33612345678"
    assert indexer.nir(same) == indexer.email(same) == indexer.phone(same)


def test_different_tenants_give_different_digests() -> None:
    tenant_a, tenant_b = BlindIndexer(random_keys()), BlindIndexer(random_keys())
    assert tenant_a.nir("295109912611193") != tenant_b.nir("295109912611193")
    assert tenant_a.email("a@b.fr") != tenant_b.email("a@b.fr")
    assert tenant_a.phone("0612345678") != tenant_b.phone("0612345678")
    assert tenant_a.name_birth_date("Dupont", "Léa", BIRTH) != tenant_b.name_birth_date(
        "Dupont", "Léa", BIRTH
    )


def test_indexer_is_deterministic(keys: dict[IndexKind, Secret[bytes]]) -> None:
    one, two = BlindIndexer(keys), BlindIndexer(keys)
    assert one.email("a@b.fr") == two.email("a@b.fr")
    assert one.nir("295109912611193") == two.nir("295109912611193")


def test_invalid_phone_raises(indexer: BlindIndexer) -> None:
    with pytest.raises(NormalizationError):
        indexer.phone("12")


def test_indexer_repr_is_masked(keys: dict[IndexKind, Secret[bytes]]) -> None:
    indexer = BlindIndexer(keys)
    assert repr(indexer) == "BlindIndexer('**********')"
    for secret in keys.values():
        assert secret.reveal().hex() not in repr(indexer)
        assert repr(secret.reveal()) not in repr(indexer)
    assert not hasattr(indexer, "__dict__")
