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
