"""load_mailer: LABVAULT_MAILER picks the mailer; mistakes get an error without secrets."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest

from labvault.core.config import Settings
from labvault.core.mail import FileMailer, Mailer, SmtpMailer, load_mailer
from labvault.core.runtime import Runtime

SENDER = "labvault <no-reply@labvault.localhost>"
PASSWORD = "pw-0d93c2a7e51b"


def test_file_default_is_the_mail_directory_under_the_data_dir(tmp_path: Path) -> None:
    mailer = load_mailer("file:", tmp_path, SENDER)
    assert isinstance(mailer, FileMailer)
    assert mailer.directory == tmp_path / "mail"


@pytest.mark.parametrize("prefix", ["file:", "file://"])
def test_file_with_a_directory(tmp_path: Path, prefix: str) -> None:
    mailer = load_mailer(f"{prefix}{tmp_path}/outbox", tmp_path / "data", SENDER)
    assert isinstance(mailer, FileMailer)
    assert mailer.directory == tmp_path / "outbox"


def test_smtp_url() -> None:
    mailer = load_mailer(f"smtp://alerts:{PASSWORD}@mail.example.org:2525", Path("var"), SENDER)
    assert isinstance(mailer, SmtpMailer)
    assert str(mailer.server) == "smtp://mail.example.org:2525?tls=starttls"
    assert PASSWORD not in repr(mailer)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("", "must be 'file:'"),
        ("file", "must be 'file:'"),
        ("memory:", "must be 'file:'"),
        (f"smtps://alerts:{PASSWORD}@mail.example.org", "must be 'file:'"),
        (f"SMTP://alerts:{PASSWORD}@mail.example.org", "must be 'file:'"),
        ("file://mailhost/share", "local directory"),
        (f"smtp://alerts:{PASSWORD}@mail.example.org?tls=none", "LABVAULT_MAILER: SMTP tls=none"),
        (f"smtp://alerts:{PASSWORD}@mail.example.org:99999", "LABVAULT_MAILER: SMTP URL: the port"),
        (f"smtp://alerts:{PASSWORD}@", "LABVAULT_MAILER: SMTP URL has no host"),
    ],
)
def test_bad_settings_name_the_variable_and_hide_the_password(setting: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        load_mailer(setting, Path("var"), SENDER)
    assert PASSWORD not in "".join(traceback.format_exception(caught.value))


def test_bad_sender_names_its_own_variable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^LABVAULT_MAIL_FROM"):
        load_mailer("file:", tmp_path, "no-reply")


def test_runtime_builds_the_configured_mailer_once(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "var", database_url=f"sqlite:///{tmp_path / 'var' / 'db.sqlite3'}"
    )
    runtime = Runtime(settings)
    try:
        mailer: Mailer = runtime.mailer
        assert isinstance(mailer, FileMailer)
        assert mailer.directory == (tmp_path / "var").resolve() / "mail"
        assert runtime.mailer is mailer
    finally:
        runtime.close()
