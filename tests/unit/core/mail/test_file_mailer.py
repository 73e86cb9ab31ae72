"""FileMailer: private, complete, time-ordered .eml files."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import cast

import pytest

from labvault.core.mail import FileMailer, MailerError, OutgoingMessage
from labvault.core.mail import file as file_module

SENDER = "labvault <no-reply@labvault.localhost>"
TO = "camille.martin@example.org"
NAME = re.compile(r"\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}\.eml")


def outgoing(subject: str = "Votre code de connexion", **changes: str) -> OutgoingMessage:
    return OutgoingMessage(
        to=changes.get("to", TO),
        subject=subject,
        text=changes.get("text", "Votre code : 482913.\n"),
        category="account:email-code",
    )


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("permissive_umask")
def test_directory_is_0700_and_files_0600_whatever_the_umask(tmp_path: Path) -> None:
    directory = tmp_path / "var" / "mail"
    FileMailer(directory, SENDER).send(outgoing())

    assert mode(directory) == 0o700
    [path] = directory.iterdir()
    assert NAME.fullmatch(path.name)
    assert mode(path) == 0o600


def test_an_existing_directory_is_used_as_it_is(tmp_path: Path) -> None:
    directory = tmp_path / "mail"
    directory.mkdir(mode=0o750)
    os.chmod(directory, 0o750)
    FileMailer(directory, SENDER).send(outgoing())
    assert mode(directory) == 0o750
    assert len(list(directory.glob("*.eml"))) == 1


def test_messages_read_back_oldest_first(tmp_path: Path) -> None:
    mailer = FileMailer(tmp_path / "mail", SENDER)
    assert mailer.messages() == []
    subjects = [f"Message {i:03d}" for i in range(60)]  # many within one clock tick
    for subject in subjects:
        mailer.send(outgoing(subject))

    read = mailer.messages()
    assert [m["Subject"] for m in read] == subjects
    assert all(m["To"] == TO and m["From"] == SENDER for m in read)
    assert read[0].get_content().replace("\r\n", "\n") == "Votre code : 482913.\n"
    names = sorted(p.name for p in (tmp_path / "mail").iterdir())
    assert len(names) == 60
    assert all(NAME.fullmatch(name) for name in names)


def test_order_holds_when_the_clock_stands_still_or_steps_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readings = iter(
        [datetime(2030, 1, 1, 12, tzinfo=UTC)] * 20 + [datetime(2029, 1, 1, tzinfo=UTC)] * 20
    )

    class Clock(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Clock:
            return cast(Clock, next(readings))

    monkeypatch.setattr(file_module, "datetime", Clock)
    monkeypatch.setattr(file_module, "_stamps", file_module._Stamps())  # leave no 2030 behind
    mailer = FileMailer(tmp_path / "mail", SENDER)
    subjects = [f"Message {i:03d}" for i in range(40)]
    for subject in subjects:
        mailer.send(outgoing(subject))
    assert [m["Subject"] for m in mailer.messages()] == subjects


def test_file_holds_the_rendered_message_with_crlf(tmp_path: Path) -> None:
    mailer = FileMailer(tmp_path / "mail", SENDER)
    mailer.send(outgoing(text="Bonjour,\nÀ bientôt.\n"))
    [path] = (tmp_path / "mail").iterdir()
    raw = path.read_bytes()
    assert raw.startswith(b"From: labvault <no-reply@labvault.localhost>\r\nTo: " + TO.encode())
    assert b"Auto-Submitted: auto-generated\r\n" in raw
    assert raw.endswith(b"\r\n\r\nBonjour,\r\n=C3=80 bient=C3=B4t.\r\n")


def test_partial_files_are_never_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "mail"
    mailer = FileMailer(directory, SENDER)
    mailer.send(outgoing("First"))

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(MailerError, match="No space left on device") as caught:
        mailer.send(outgoing("Second", text="Votre code : 771204.\n"))
    monkeypatch.undo()

    assert [m["Subject"] for m in mailer.messages()] == ["First"]
    assert len(list(directory.iterdir())) == 1  # no temporary file left behind
    text = str(caught.value) + repr(caught.value)
    assert TO not in text
    assert "771204" not in text
    assert caught.value.__suppress_context__


def test_a_temporary_file_of_a_crashed_writer_is_ignored(tmp_path: Path) -> None:
    directory = tmp_path / "mail"
    mailer = FileMailer(directory, SENDER)
    mailer.send(outgoing("Complete"))
    (directory / ".tmp-0123456789abcdef").write_bytes(b"From: half a mess")
    assert [m["Subject"] for m in mailer.messages()] == ["Complete"]


def test_unwritable_directory_raises_mailer_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    with pytest.raises(MailerError, match="file mailer: cannot write"):
        FileMailer(blocker / "mail", SENDER).send(outgoing())


def test_bad_sender_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LABVAULT_MAIL_FROM"):
        FileMailer(tmp_path, "not an address")
    assert not list(tmp_path.iterdir())


def test_repr_names_the_directory_only(tmp_path: Path) -> None:
    assert repr(FileMailer(tmp_path / "mail", SENDER)) == f"FileMailer({str(tmp_path / 'mail')!r})"
