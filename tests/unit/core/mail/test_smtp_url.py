"""parse_smtp_url and SmtpServer: clear errors, TLS by default, the password kept masked."""

from __future__ import annotations

import traceback
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labvault.core.crypto.secret import Secret
from labvault.core.mail import SmtpMailer, SmtpServer, parse_smtp_url

SENDER = "labvault <no-reply@labvault.localhost>"
PASSWORD = "pw-7c1e9b04d2a8"  # distinctive, so that a leak is found


def error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc)


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("smtp://mail.example.org", "mail.example.org", 587, "starttls"),
        ("smtp://mail.example.org/", "mail.example.org", 587, "starttls"),
        ("smtp://MAIL.Example.org:2525", "mail.example.org", 2525, "starttls"),
        ("smtp://mail.example.org?tls=ssl", "mail.example.org", 465, "ssl"),
        ("smtp://mail.example.org:1465?tls=ssl", "mail.example.org", 1465, "ssl"),
        ("smtp://127.0.0.1?tls=none", "127.0.0.1", 25, "none"),
        ("smtp://127.8.9.10:1025?tls=none", "127.8.9.10", 1025, "none"),
        ("smtp://localhost:1025?tls=none", "localhost", 1025, "none"),
        ("smtp://[::1]:1025?tls=none", "::1", 1025, "none"),
        ("smtp://[2001:db8::25]:587", "2001:db8::25", 587, "starttls"),
    ],
)
def test_valid_urls(url: str, host: str, port: int, tls: str) -> None:
    server = parse_smtp_url(url)
    assert (server.host, server.port, server.tls) == (host, port, tls)
    assert server.username is None
    assert server.password is None
    assert server.timeout == 10.0


def test_credentials_are_percent_decoded_and_the_password_is_secret() -> None:
    password = "p@ss:w/rd#?&" + PASSWORD
    user = quote("alerts@labo.example.fr", safe="")
    server = parse_smtp_url(
        f"smtp://{user}:{quote(password, safe='')}@mail.example.org?timeout=2.5"
    )

    assert server.username == "alerts@labo.example.fr"
    assert isinstance(server.password, Secret)
    assert server.password.reveal() == password
    assert server.timeout == 2.5
    mailer = SmtpMailer(server, SENDER)
    for text in (repr(server), str(server), repr(mailer), str(mailer)):
        assert PASSWORD not in text
        assert quote(password, safe="") not in text
    assert "Secret('**********')" in repr(server)
    assert str(server) == "smtp://mail.example.org:587?tls=starttls"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "smtp://"),
        (" smtp://mail.example.org", "spaces"),
        ("smtp://mail.example.org\r\nRCPT TO:<x@example.net>", "one line"),
        ("smtps://mail.example.org", "must start with smtp://"),
        ("http://mail.example.org", "must start with smtp://"),
        ("mail.example.org:587", "must start with smtp://"),
        ("smtp:mail.example.org", "no host"),
        ("smtp://", "no host"),
        ("smtp://:587", "no host"),
        ("smtp://mail.example.org/inbox", "path"),
        ("smtp://mail.example.org#frag", "fragment"),
        ("smtp://mail.example.org:0", "port"),
        ("smtp://mail.example.org:65536", "port"),
        ("smtp://mail.example.org:abc", "port"),
        ("smtp://mail.example.org:", "port"),
        ("smtp://mail.example.org?tls=yes", "tls must be"),
        ("smtp://mail.example.org?tls=", "tls must be"),
        ("smtp://mail.example.org?tls=ssl&tls=none", "twice"),
        ("smtp://mail.example.org?verify=false", "only options"),
        ("smtp://mail.example.org?tls", "only options"),
        ("smtp://mail.example.org?timeout=0", "timeout"),
        ("smtp://mail.example.org?timeout=-1", "timeout"),
        ("smtp://mail.example.org?timeout=nan", "timeout"),
        ("smtp://mail.example.org?timeout=inf", "timeout"),
        ("smtp://mail.example.org?timeout=301", "timeout"),
        ("smtp://mail.example.org?timeout=ten", "timeout"),
        ("smtp://mail.example.org?tls=none", "only for a server on this machine"),
        ("smtp://10.0.0.25?tls=none", "only for a server on this machine"),
        ("smtp://localhost.example.org?tls=none", "only for a server on this machine"),
        ("smtp://[::ffff:10.0.0.1]?tls=none", "only for a server on this machine"),
        ("smtp://exämple.org", "host name"),
        ("smtp://mail_.-example.org", "host name"),
        ("smtp://[not-an-ip]", "malformed"),
        (f"smtp://:{PASSWORD}@mail.example.org", "user:password@host"),
        ("smtp://alerts@mail.example.org", "user:password@host"),
        ("smtp://alerts:@mail.example.org", "user:password@host"),
        (f"smtp://alerts%0d%0a:{PASSWORD}@mail.example.org", "control characters"),
        (f"smtp://alerts:{PASSWORD}%0A@mail.example.org", "control characters"),
    ],
)
def test_bad_urls_get_a_clear_error_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_smtp_url(url)
    assert PASSWORD not in error_text(caught.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("host", ""),
        ("host", "mail.example.org\r\n"),
        ("port", 0),
        ("port", True),
        ("tls", "tls"),
        ("timeout", 0.0),
        ("timeout", float("nan")),
        ("username", "alerts"),
        ("username", ""),
    ],
)
def test_servers_built_directly_are_checked_too(field: str, value: object) -> None:
    values: dict[str, object] = {"host": "mail.example.org", "port": 587, field: value}
    with pytest.raises(ValueError, match="SMTP"):
        SmtpServer(**values)  # type: ignore[arg-type]


def test_plaintext_is_refused_for_a_remote_server_built_directly() -> None:
    with pytest.raises(ValueError, match="tls=none"):
        SmtpServer(host="mail.example.org", port=25, tls="none")


def test_password_without_user_is_refused() -> None:
    with pytest.raises(ValueError, match="both"):
        SmtpServer(host="mail.example.org", port=587, password=Secret(PASSWORD))


def test_mailer_refuses_a_bad_sender() -> None:
    with pytest.raises(ValueError, match="LABVAULT_MAIL_FROM"):
        SmtpMailer.from_url("smtp://mail.example.org", "no-reply")


@settings(max_examples=1000)
@given(st.text())
def test_any_text_is_parsed_or_refused_with_value_error(url: str) -> None:
    try:
        server = parse_smtp_url(url)
    except ValueError:
        return
    assert 1 <= server.port <= 65535
    assert server.tls in {"starttls", "ssl", "none"}


_URL_PART = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["smtp", "smtps", "://", ":", "@", "[", "]", "::1", "?", "&", "=", "#"]),
    st.sampled_from(["tls", "ssl", "none", "starttls", "timeout", "%", "%0a", "%40", "/", "0"]),
    st.sampled_from(["127.0.0.1", "localhost", "mail.example.org", "65536", "1e3", "nan"]),
)


@settings(max_examples=2000)
@given(st.lists(_URL_PART, max_size=14).map("".join))
def test_url_shaped_text_is_parsed_or_refused_without_the_password(fragment: str) -> None:
    url = f"smtp://alerts:{PASSWORD}@{fragment}"
    try:
        server = parse_smtp_url(url)
    except ValueError as exc:
        leaked = PASSWORD in error_text(exc)
        assert not leaked
        return
    assert (
        server.tls != "none"
        or server.host in {"localhost", "127.0.0.1", "::1"}
        or (server.host.startswith("127."))
    )
    assert PASSWORD not in repr(server) + str(server)
