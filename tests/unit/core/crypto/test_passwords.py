"""Password hashing (Argon2id) and the policy for new passwords.

Argon2id at 19 MiB costs ~25-60 ms a run: hashes are made once per module where possible.
"""

from __future__ import annotations

import statistics
import time
import unicodedata
from collections.abc import Callable

import argon2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labvault.core.crypto import passwords
from labvault.core.crypto.passwords import (
    COMMON_PASSWORDS_COUNT,
    DEFAULT_HASHER,
    DEFAULT_PARAMETERS,
    Argon2Parameters,
    PasswordHasher,
    PasswordHashError,
    PasswordPolicy,
    PasswordRejected,
    check_new_password,
    common_passwords,
    is_common_password,
    normalize_password,
    verify_dummy,
)
from labvault.core.crypto.secret import Secret

RIGHT = "cheval agrafe pile correcte"
WRONG = "cheval agrafe pile correctE"


@pytest.fixture(scope="module")
def stored() -> str:
    return DEFAULT_HASHER.hash(Secret(RIGHT))


MESSAGES = {
    "too_short": "Le mot de passe doit contenir au moins 8 caractères.",
    "too_long": "Le mot de passe ne doit pas dépasser 128 caractères.",
    "repetitive": (
        "Le mot de passe ne doit pas être un même caractère répété ni une suite évidente "
        "(comme aaaaaaaa, 12345678, abcdefgh ou azertyui)."
    ),
    "contains_context": (
        "Le mot de passe ne doit pas contenir votre nom ni votre adresse électronique."
    ),
    "common": (
        "Ce mot de passe fait partie des mots de passe les plus courants ou déjà divulgués. "
        "Choisissez-en un autre, par exemple une phrase de plusieurs mots."
    ),
}


def rejection(password: str, context: tuple[str, ...] = ()) -> str:
    """The code of the refusal; its message is the fixed sentence, nothing of the value."""
    with pytest.raises(PasswordRejected) as caught:
        check_new_password(Secret(password), context=context)
    assert caught.value.message == MESSAGES[caught.value.code]
    assert str(caught.value) == caught.value.message
    return caught.value.code


# ----------------------------------------------------------------------------- hashing


def test_parameters_are_argon2id_19_mib_t2_p1_or_stronger(stored: str) -> None:
    found = argon2.extract_parameters(stored)
    assert found.type is argon2.Type.ID
    assert found.memory_cost >= 19_456
    assert found.time_cost >= 2
    assert found.parallelism == 1
    assert (found.salt_len, found.hash_len) == (16, 32)
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert DEFAULT_PARAMETERS.meets_owasp_minimum()


def test_round_trip(stored: str) -> None:
    assert DEFAULT_HASHER.verify(stored, Secret(RIGHT)) is True
    assert not DEFAULT_HASHER.needs_rehash(stored)


def test_wrong_password_is_false_not_an_exception(stored: str) -> None:
    assert DEFAULT_HASHER.verify(stored, Secret(WRONG)) is False
    assert DEFAULT_HASHER.verify(stored, Secret("")) is False


def test_each_hash_has_its_own_salt(stored: str) -> None:
    again = DEFAULT_HASHER.hash(Secret(RIGHT))
    assert again != stored
    assert DEFAULT_HASHER.verify(again, Secret(RIGHT))


def test_a_hash_made_with_weaker_parameters_verifies_and_needs_rehash() -> None:
    # What an older release (or a weaker configuration) left in the database.
    old = argon2.PasswordHasher(time_cost=1, memory_cost=8_192, parallelism=1).hash(RIGHT)
    assert DEFAULT_HASHER.verify(old, Secret(RIGHT))
    assert DEFAULT_HASHER.needs_rehash(old)
    # Another variant, or merely other parameters, are a change too.
    argon2i = argon2.PasswordHasher(
        time_cost=2, memory_cost=19_456, parallelism=1, type=argon2.Type.I
    ).hash(RIGHT)
    assert DEFAULT_HASHER.needs_rehash(argon2i)
    assert DEFAULT_HASHER.verify(argon2i, Secret(RIGHT))


def test_changing_parameters_asks_for_a_rehash(stored: str) -> None:
    stronger = PasswordHasher(Argon2Parameters(time_cost=1, memory_cost=47_104))
    assert stronger.needs_rehash(stored)
    assert stronger.verify(stored, Secret(RIGHT))  # old hashes keep working meanwhile


@pytest.mark.parametrize(
    "parameters",
    [
        Argon2Parameters(time_cost=1, memory_cost=19_456),
        Argon2Parameters(time_cost=2, memory_cost=16_384),
        Argon2Parameters(time_cost=5, memory_cost=4_096),
        Argon2Parameters(parallelism=0),
    ],
)
def test_parameters_below_every_owasp_configuration_are_refused(
    parameters: Argon2Parameters,
) -> None:
    with pytest.raises(ValueError, match="weaker than every OWASP"):
        PasswordHasher(parameters)


@pytest.mark.parametrize(
    "corrupt",
    [
        "",
        "not a hash",
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",  # bcrypt
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$",
        "$argon2id$v=19$m=19456,t=2,p=1$!!!!$!!!!",
        "$argon2id$v=19$m=99999999,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$"
        "qfuQGOsNQvrdN4I5Hs2Mdtl7QS/8kPRs5OZPvOJiVJo",
    ],
)
def test_a_corrupt_stored_hash_raises_a_clear_error(corrupt: str) -> None:
    with pytest.raises(PasswordHashError, match="stored password hash") as caught:
        DEFAULT_HASHER.verify(corrupt, Secret(RIGHT))
    assert RIGHT not in str(caught.value)
    with pytest.raises(PasswordHashError, match="stored password hash"):
        DEFAULT_HASHER.needs_rehash(corrupt)


def test_a_damaged_hash_is_corrupt_not_a_wrong_password(stored: str) -> None:
    for damaged in (stored[:-8] + "!!!!!!!!", stored[:-40], stored.replace("$v=19", "$v=99")):
        with pytest.raises(PasswordHashError, match="stored password hash"):
            DEFAULT_HASHER.verify(damaged, Secret(RIGHT))


def test_raw_strings_are_refused() -> None:
    with pytest.raises(TypeError, match="Secret"):
        DEFAULT_HASHER.hash(RIGHT)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        DEFAULT_HASHER.hash(Secret(b"bytes"))  # type: ignore[arg-type]


def test_nfkc_equivalent_spellings_verify_the_same_hash() -> None:
    composed = "Mot de passe: été à l'ﬁn"  # precomposed accents and the U+FB01 ligature
    decomposed = unicodedata.normalize("NFD", composed.replace("ﬁ", "fi"))
    assert composed != decomposed
    stored = DEFAULT_HASHER.hash(Secret(composed))
    assert DEFAULT_HASHER.verify(stored, Secret(decomposed))
    full_width = "ＰＡＳＳ ｗｏｒｄ"  # noqa: RUF001 (the point of the test)
    assert DEFAULT_HASHER.verify(DEFAULT_HASHER.hash(Secret("PASS word")), Secret(full_width))
    # NFKC is not case folding: the case of a password still matters.
    assert not DEFAULT_HASHER.verify(stored, Secret(composed.upper()))


@given(st.text(max_size=40))
def test_normalization_is_nfkc_and_idempotent(text: str) -> None:
    once = normalize_password(Secret(text)).reveal()
    assert once == unicodedata.normalize("NFKC", text)
    assert normalize_password(Secret(once)).reveal() == once
    for form in ("NFC", "NFD", "NFKD"):
        assert normalize_password(Secret(unicodedata.normalize(form, text))).reveal() == once


def test_lone_surrogates_do_not_crash() -> None:
    stored = DEFAULT_HASHER.hash(Secret("abc\ud800def"))
    assert DEFAULT_HASHER.verify(stored, Secret("abc\ud800def"))
    assert not DEFAULT_HASHER.verify(stored, Secret("abc\ud801def"))


def test_reprs_never_show_a_password(stored: str) -> None:
    secret = Secret(RIGHT)
    assert RIGHT not in repr(secret)
    assert RIGHT not in str(secret)
    assert RIGHT not in repr(normalize_password(secret))
    assert "19456" in repr(DEFAULT_HASHER)
    assert RIGHT not in repr(DEFAULT_HASHER)


# ------------------------------------------------------------- unknown accounts, timing


def test_dummy_hash_is_a_real_hash_made_once() -> None:
    dummy = passwords.DUMMY_HASH
    assert dummy is passwords.DUMMY_HASH
    assert dummy is DEFAULT_HASHER.dummy_hash
    assert not DEFAULT_HASHER.needs_rehash(dummy)
    assert verify_dummy(Secret(RIGHT)) is False
    assert verify_dummy(Secret("")) is False
    with pytest.raises(AttributeError):
        _ = passwords.NOT_THERE  # type: ignore[attr-defined]


def test_dummy_hash_follows_the_hasher_parameters() -> None:
    other = PasswordHasher(Argon2Parameters(time_cost=3, memory_cost=12_288))
    assert argon2.extract_parameters(other.dummy_hash).time_cost == 3
    assert other.verify_dummy(Secret(RIGHT)) is False


def _interleaved_medians(*calls: Callable[[], object], runs: int = 5) -> list[float]:
    """Median seconds of each call, the calls alternating so that noise hits them alike."""
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(runs):
        for call, times in zip(calls, samples, strict=True):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    return [statistics.median(times) for times in samples]


def test_unknown_account_costs_what_a_known_one_costs(stored: str) -> None:
    _ = DEFAULT_HASHER.dummy_hash  # made once, outside the timing
    known_wrong, known_right, unknown = _interleaved_medians(
        lambda: DEFAULT_HASHER.verify(stored, Secret(WRONG)),
        lambda: DEFAULT_HASHER.verify(stored, Secret(RIGHT)),
        lambda: verify_dummy(Secret(WRONG)),
    )
    assert 0.5 <= unknown / known_wrong <= 2.0, (known_wrong, unknown)
    # A wrong password takes a full run too (Argon2 cannot stop early).
    assert 0.5 <= known_right / known_wrong <= 2.0, (known_wrong, known_right)


# ------------------------------------------------------------------------------ policy


@pytest.mark.parametrize(
    "password",
    [
        "Tr0ub4dor&3",
        "cheval agrafe pile correcte",
        "soleil de juin sur la Loire",
        "L1ke-a-Pr0!",
        "été à Besançon 2019",
        "パスワードは長い",  # 8 code points
        "a8Kq2mZ7",
    ],
)
def test_acceptable_passwords_pass(password: str) -> None:
    check_new_password(Secret(password))


def test_64_and_128_characters_are_accepted() -> None:
    base = "Les sanglots longs des violons de l'automne blessent mon coeur. "
    sixty_four = base[:64]
    hundred_twenty_eight = (base * 2)[:128]
    assert (len(sixty_four), len(hundred_twenty_eight)) == (64, 128)
    check_new_password(Secret(sixty_four))
    check_new_password(Secret(hundred_twenty_eight))


def test_too_short() -> None:
    assert rejection("k2#vQ9z") == "too_short"
    assert rejection("") == "too_short"
    with pytest.raises(PasswordRejected, match="au moins 8 caractères"):
        check_new_password(Secret("a1b2c3"))


def test_length_counts_code_points_after_nfkc() -> None:
    # 8 code points composed, 12 decomposed: the same password, and long enough.
    composed = "éèàçùêîô"
    check_new_password(Secret(unicodedata.normalize("NFD", composed)))
    check_new_password(Secret(composed))
    # 7 characters typed in full-width still count as 7.
    assert rejection("ｋ２＃ｖＱ９ｚ") == "too_short"  # noqa: RUF001


def test_too_long() -> None:
    assert rejection("Le vent se lève, il faut tenter de vivre! " * 4) == "too_long"
    with pytest.raises(PasswordRejected, match="dépasser 128 caractères"):
        check_new_password(Secret("z" * 100 + "y" * 29))


@pytest.mark.parametrize(
    "password", ["password", "motdepasse", "MotDePasse", "PASSWORD", "iloveyou", "marseille"]
)
def test_common(password: str) -> None:
    assert rejection(password) == "common"


def test_common_message_is_french() -> None:
    with pytest.raises(PasswordRejected) as caught:
        check_new_password(Secret("motdepasse"))
    assert caught.value.code == "common"
    assert "mots de passe les plus courants" in caught.value.message
    assert str(caught.value) == caught.value.message


@pytest.mark.parametrize(
    "password",
    ["123456", "password", "azerty", "motdepasse", "soleil", "doudou", "loulou", "marseille"],
)
def test_list_membership(password: str) -> None:
    assert is_common_password(Secret(password))
    assert is_common_password(Secret(password.upper()))
    assert is_common_password(Secret(unicodedata.normalize("NFKC", password)))


def test_list_membership_is_after_nfkc() -> None:
    assert is_common_password(Secret("ｐａｓｓｗｏｒｄ"))  # noqa: RUF001
    assert not is_common_password(Secret("cheval agrafe pile correcte"))


def test_shipped_list_count() -> None:
    shipped = common_passwords()
    assert len(shipped) == COMMON_PASSWORDS_COUNT == 100_000
    assert shipped is common_passwords()  # loaded once
    assert all(word == unicodedata.normalize("NFKC", word).casefold() for word in shipped)
    assert "" not in shipped


@pytest.mark.parametrize(
    "password",
    [
        "aaaaaaaa",
        "ZZZZZZZZZZZZ",
        "12345678",
        "87654321",
        "abcdefgh",
        "hgfedcba",
        "azertyui",
        "AZERTYUIOP",
        "qsdfghjklm",
        "qwertyuiop",
        "qwertzuiop",
        "wxcvbn123",
        "&é\"'(-è_",  # the AZERTY digit row typed without Shift
        "abababab",
        "xyzxyzxyz",
        "abcd1234",
        "aaaa1111",
        "azerty123",
        "9876543210",
    ],
)
def test_repetitive(password: str) -> None:
    assert rejection(password) == "repetitive"


@pytest.mark.parametrize(
    ("password", "context"),
    [
        ("jean.dupont1980", ("jean.dupont@example.fr",)),
        ("MonNomEstDupont!", ("Jean Dupont",)),
        ("elodie-est-la!", ("Élodie Martin",)),
        ("ÉLODIE-EST-LA!", ("elodie@example.fr",)),
        ("martin-pêcheur", ("Élodie", "Martin")),
        ("jean-pierre.le.grand", ("Jean-Pierre Grand",)),
    ],
)
def test_contains_context(password: str, context: tuple[str, ...]) -> None:
    assert rejection(password, context) == "contains_context"


def test_short_context_items_are_ignored() -> None:
    # "Mia" and "Li" are under 4 characters: too many passwords would contain them.
    check_new_password(Secret("Miaou sur le toit"), context=("Mia Li", "li@example.fr"))


def test_context_must_be_a_sequence_of_strings() -> None:
    with pytest.raises(TypeError, match="sequence"):
        check_new_password(Secret("cheval agrafe pile"), context="jean dupont")


def test_order_of_rules_gives_the_most_useful_message() -> None:
    assert rejection("1234567") == "too_short"  # short before repetitive
    assert rejection("12345678") == "repetitive"  # on the list too; repetitive says more
    assert rejection("dupont123", ("Dupont",)) == "contains_context"


def test_policy_bounds_follow_sp_800_63b() -> None:
    with pytest.raises(ValueError, match="8"):
        PasswordPolicy(min_length=6)
    with pytest.raises(ValueError, match="64"):
        PasswordPolicy(max_length=32)
    single_factor = PasswordPolicy(min_length=15)
    with pytest.raises(PasswordRejected) as caught:
        single_factor.check(Secret("Tr0ub4dor&3"))
    assert caught.value.code == "too_short"
    assert "15 caractères" in caught.value.message


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=140))
def test_policy_only_ever_raises_password_rejected(text: str) -> None:
    try:
        check_new_password(Secret(text), context=("Jean Dupont", "jean.dupont@example.fr"))
    except PasswordRejected as exc:
        # Fixed French sentences per code: nothing of the password can be in them.
        assert exc.message == MESSAGES[exc.code]  # noqa: PT017
    else:
        assert 8 <= len(unicodedata.normalize("NFKC", text)) <= 128


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=8))
def test_no_composition_rules(text: str) -> None:
    """Whatever is refused is refused for one of the listed reasons, never for missing a
    digit, a capital or a symbol: a long lower-case-only passphrase passes."""
    check_new_password(Secret("le chat dort sur le radiateur"))
    try:
        check_new_password(Secret(text[:128]))
    except PasswordRejected as exc:
        assert exc.code in {"common", "repetitive"}  # noqa: PT017
