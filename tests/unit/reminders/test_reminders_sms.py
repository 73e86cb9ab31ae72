"""The SmsSender seam: checked messages, the file outbox (private, one JSON line per SMS,
safe under concurrency), the memory twin, and the LABVAULT_SMS_SENDER setting."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from labvault.core.config import ConfigurationError, load_settings
from labvault.reminders.sms import (
    MASK,
    FileSmsSender,
    MemorySmsSender,
    OutgoingSms,
    SmsError,
    load_sms_sender,
)

PHONE = "+33612345678"


def _sms(text: str = "Rappel : rendez-vous demain à 8 h 30.") -> OutgoingSms:
    return OutgoingSms(to=PHONE, text=text, category="appointment:reminder")


@pytest.mark.parametrize(
    ("to", "text", "category"),
    [
        ("0612345678", "x", "appointment:reminder"),  # national form: not E.164
        ("+33 6 12 34 56 78", "x", "appointment:reminder"),
        ("+33612345678\n", "x", "appointment:reminder"),
        (PHONE, "", "appointment:reminder"),
        (PHONE, "   ", "appointment:reminder"),
        (PHONE, "a\x00b", "appointment:reminder"),
        (PHONE, "a\rb", "appointment:reminder"),
        (PHONE, "x" * 641, "appointment:reminder"),
        (PHONE, "x", "Appointment Reminder"),
    ],
)
def test_a_malformed_sms_is_refused_without_quoting_it(to: str, text: str, category: str) -> None:
    with pytest.raises(ValueError, match="SMS") as refused:
        OutgoingSms(to=to, text=text, category=category)
    assert "612345678" not in str(refused.value)


def test_the_repr_hides_number_and_text() -> None:
    shown = repr(_sms("Phrase de sécurité : « tournesol »"))
    assert PHONE not in shown
    assert "tournesol" not in shown


def test_the_file_outbox_is_private_and_holds_one_json_line_per_sms(tmp_path: Path) -> None:
    path = tmp_path / "sms" / "outbox.jsonl"
    sender = FileSmsSender(path)
    assert sender.messages() == []
    sender.send(_sms())
    sender.send(_sms("Deuxième\nligne"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    lines = path.read_text("utf-8").splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["to"] == PHONE
    assert first["category"] == "appointment:reminder"
    assert first["text"] == "Rappel : rendez-vous demain à 8 h 30."
    assert second["text"] == "Deuxième\nligne"
    assert first["at"].endswith("Z")
    assert sender.messages() == [first, second]


def test_concurrent_senders_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    senders = [FileSmsSender(path) for _ in range(4)]  # as separate jobs would

    def send_many(sender: FileSmsSender, number: int) -> None:
        for index in range(50):
            sender.send(_sms(f"message {number}-{index} " + "x" * 300))

    threads = [threading.Thread(target=send_many, args=(s, n)) for n, s in enumerate(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    texts = [message["text"].split()[1] for message in FileSmsSender(path).messages()]
    assert sorted(texts) == sorted(f"{n}-{i}" for n in range(4) for i in range(50))


def test_an_unwritable_outbox_raises_sms_error_without_the_number(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(SmsError) as failed:
        FileSmsSender(blocker / "outbox.jsonl").send(_sms())
    assert PHONE not in str(failed.value)


def test_the_memory_twin_keeps_messages_or_fails_on_demand() -> None:
    twin = MemorySmsSender()
    twin.send(_sms())
    assert [m.to for m in twin.sent] == [PHONE]
    with pytest.raises(SmsError):
        MemorySmsSender(fail=True).send(_sms())


def test_the_setting_picks_the_outbox(tmp_path: Path) -> None:
    default = load_sms_sender("file:", tmp_path)
    assert isinstance(default, FileSmsSender)
    assert default.path == tmp_path / "sms" / "outbox.jsonl"
    other = load_sms_sender(f"file:{tmp_path}/relay/out.jsonl", tmp_path)
    assert isinstance(other, FileSmsSender)
    assert other.path == tmp_path / "relay" / "out.jsonl"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("twilio://account:token@api", "no other SMS transport exists yet"),
        ("file", "no other SMS transport exists yet"),
        ("", "no other SMS transport exists yet"),
        ("file://relay.example.org/out.jsonl", "not a host"),
        ("file:/var/sms/", "not a directory"),
        ("none:/dev/null", "takes nothing after it"),
    ],
)
def test_a_wrong_setting_is_a_clear_configuration_error(
    value: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError) as wrong:
        load_settings(data_dir=tmp_path, sms_sender=value)
    assert "LABVAULT_SMS_SENDER: " in str(wrong.value)
    assert message in str(wrong.value)
    assert "token" not in str(wrong.value), "the value is never repeated"
    with pytest.raises(ValueError, match="LABVAULT_SMS_SENDER"):
        load_sms_sender(value, tmp_path)


PHRASE = "tournesol du matin"


def _with_phrase() -> OutgoingSms:
    return OutgoingSms(
        to=PHONE,
        text=f"Rappel : rendez-vous demain. Phrase de sécurité : « {PHRASE} ».",
        category="appointment:reminder",
        masked=(PHRASE,),
    )


def test_the_file_outbox_never_keeps_the_security_phrase(tmp_path: Path) -> None:
    path = tmp_path / "sms" / "outbox.jsonl"
    FileSmsSender(path).send(_with_phrase())
    kept = path.read_text("utf-8")
    assert PHRASE not in kept
    assert "tournesol" not in kept
    (line,) = FileSmsSender(path).messages()
    assert line["text"] == f"Rappel : rendez-vous demain. Phrase de sécurité : « {MASK} »."
    # A gateway (here its memory twin) is handed the whole text: the patient needs it.
    twin = MemorySmsSender()
    twin.send(_with_phrase())
    assert PHRASE in twin.sent[0].text


def test_a_phrase_containing_another_masked_value_is_masked_whole() -> None:
    message = OutgoingSms(
        to=PHONE, text="« mer calme du soir »", category="c", masked=("mer", "mer calme du soir")
    )
    assert message.kept_text() == f"« {MASK} »"


@pytest.mark.parametrize("masked", [("",), ("  ",), ["x"]])
def test_masked_values_must_be_non_empty_texts(masked: object) -> None:
    with pytest.raises(ValueError, match="masked"):
        OutgoingSms(to=PHONE, text="x", category="c", masked=masked)  # type: ignore[arg-type]


def test_none_sends_no_sms(tmp_path: Path) -> None:
    assert load_sms_sender("none:", tmp_path) is None
    assert load_sms_sender("none:", tmp_path, environment="production") is None
    assert load_settings(data_dir=tmp_path, sms_sender="none:").sms_transport == "none:"
    assert not (tmp_path / "sms").exists()


PRODUCTION_SMS_MESSAGE = (
    "LABVAULT_SMS_SENDER: in production SMS may not be written to a file (the outbox would "
    "keep phone numbers and appointments in clear, next to the data, for ever); "
    "set LABVAULT_SMS_SENDER=none: (no SMS, reminders go by email) until an SMS gateway exists"
)


@pytest.mark.parametrize("value", ["file:", "file:/srv/sms/outbox.jsonl"])
def test_production_refuses_the_file_outbox_with_a_clear_error(value: str, tmp_path: Path) -> None:
    key = f"file:{tmp_path / 'secrets' / 'root.key'}"  # outside the data dir: not the issue
    with pytest.raises(ConfigurationError) as refused:
        load_settings(
            data_dir=tmp_path / "data", key_provider=key, environment="production", sms_sender=value
        )
    assert str(refused.value) == "Invalid configuration:\n  " + PRODUCTION_SMS_MESSAGE
    with pytest.raises(ValueError, match="in production SMS may not be written to a file"):
        load_sms_sender(value, tmp_path, environment="production")


def test_the_default_transport_depends_on_the_environment(tmp_path: Path) -> None:
    key = f"file:{tmp_path / 'secrets' / 'root.key'}"
    production = load_settings(
        data_dir=tmp_path / "data", key_provider=key, environment="production"
    )
    assert production.sms_transport == "none:"
    for environment in ("development", "test"):
        settings = load_settings(data_dir=tmp_path, environment=environment)
        assert settings.sms_transport == "file:"
        assert isinstance(load_sms_sender(settings.sms_transport, tmp_path), FileSmsSender)
