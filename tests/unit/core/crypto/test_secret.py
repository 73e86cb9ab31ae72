"""Secret: a wrapper whose every textual form is masked."""

from __future__ import annotations

import copy
import logging
import pickle
import traceback

import pytest

from labvault.core.crypto.secret import Secret

MASK = "**********"
RAW_BYTES = b"\x13\x37super-secret-root-key-material"
RAW_TEXT = "hunter2-totp-seed"


@pytest.mark.parametrize("value", [RAW_BYTES, RAW_TEXT, 1234567890123, ["nested", "list"]])
def test_every_textual_form_is_masked(value: object) -> None:
    secret = Secret(value)
    forms = [
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        f"{secret!s}",
        format(secret),
        format(secret, ""),
        "%s" % secret,  # noqa: UP031
        "%r" % secret,  # noqa: UP031
        "{}".format(secret),  # noqa: UP032
        repr([secret]),
        repr({"key": secret}),
        str((secret,)),
    ]
    for form in forms:
        assert str(value) not in form
        assert repr(value) not in form
        assert MASK in form
    assert repr(secret) == f"Secret('{MASK}')"
    assert str(secret) == MASK


def test_bytes_never_appear_in_any_encoding() -> None:
    secret = Secret(RAW_BYTES)
    text = repr(secret) + str(secret) + f"{secret}"
    assert RAW_BYTES.hex() not in text
    assert "super-secret" not in text


def test_subclass_repr_uses_its_name() -> None:
    class RootKey(Secret[bytes]):
        pass

    assert repr(RootKey(RAW_BYTES)) == f"RootKey('{MASK}')"


@pytest.mark.parametrize("spec", [">40", "s", "x", "!r"])
def test_format_specs_are_refused_without_revealing(spec: str) -> None:
    with pytest.raises(TypeError) as caught:
        format(Secret(RAW_TEXT), spec)
    assert RAW_TEXT not in str(caught.value)


def test_reveal_returns_the_value_itself() -> None:
    value = bytearray(RAW_BYTES)
    secret = Secret(value)
    assert secret.reveal() is value
    assert Secret(RAW_TEXT).reveal() == RAW_TEXT
    assert Secret(None).reveal() is None


def test_equality_compares_values() -> None:
    assert Secret(RAW_BYTES) == Secret(RAW_BYTES)
    assert Secret(RAW_BYTES) != Secret(RAW_BYTES + b"!")
    assert Secret(RAW_TEXT) == Secret(RAW_TEXT)
    assert Secret(RAW_TEXT) != Secret(RAW_TEXT.upper())
    assert Secret("é") == Secret("é")
    assert Secret(3) == Secret(3)
    assert Secret(3) != Secret(4)
    # bytes and str of the same characters are different secrets
    assert Secret(b"abc") != Secret("abc")


def test_a_secret_never_equals_its_raw_value() -> None:
    secret = Secret(RAW_TEXT)
    assert secret != RAW_TEXT
    assert RAW_TEXT != secret  # noqa: SIM300 (the reflected comparison)
    assert secret.__eq__(RAW_TEXT) is NotImplemented


def test_equal_secrets_hash_alike() -> None:
    assert hash(Secret(RAW_BYTES)) == hash(Secret(RAW_BYTES))
    assert len({Secret(RAW_TEXT), Secret(RAW_TEXT), Secret("other")}) == 2


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickling_is_refused(protocol: int) -> None:
    with pytest.raises(TypeError, match="cannot be pickled") as caught:
        pickle.dumps(Secret(RAW_BYTES), protocol=protocol)
    assert "super-secret" not in "".join(traceback.format_exception(caught.value))


def test_pickling_a_container_holding_a_secret_is_refused() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps({"key": Secret(RAW_TEXT)})


def test_copying_is_refused() -> None:
    with pytest.raises(TypeError):
        copy.deepcopy(Secret(RAW_TEXT))


def test_no_instance_dict_and_no_extra_attributes() -> None:
    secret = Secret(RAW_TEXT)
    assert not hasattr(secret, "__dict__")
    with pytest.raises(AttributeError):
        secret.other = 1  # type: ignore[attr-defined]


def test_logging_a_secret_is_masked(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("labvault.test.secret")
    with caplog.at_level(logging.INFO, logger="labvault.test.secret"):
        logger.info("loaded %s and %r", Secret(RAW_TEXT), Secret(RAW_BYTES))
    assert RAW_TEXT not in caplog.text
    assert "super-secret" not in caplog.text
    assert MASK in caplog.text


def test_exceptions_mentioning_a_secret_are_masked() -> None:
    try:
        raise ValueError(f"bad key {Secret(RAW_TEXT)!r}")
    except ValueError as exc:
        text = "".join(traceback.format_exception(exc))
    assert RAW_TEXT not in text
