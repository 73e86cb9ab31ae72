"""SmtpMailer against a real SMTP server (aiosmtpd on a loopback port): plain, AUTH,
STARTTLS and implicit TLS with a certificate made here, refusals, retries."""

from __future__ import annotations

import datetime as dt
import email.policy
import email.utils
import ipaddress
import re
import socket
import ssl
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from structlog.testing import capture_logs

from labvault.core.mail import MailerError, OutgoingMessage, SmtpMailer

pytestmark = pytest.mark.smtp

SENDER = "labvault <no-reply@labvault.localhost>"
TO = "camille.martin@example.org"
CODE = "482913"
USER = "alerts@labo.example.fr"
PASSWORD = "pw-5e0b7f1c93ad"
# aiosmtpd warns when AUTH is offered without TLS; these tests do it on loopback on purpose.
plaintext_auth = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


def outgoing() -> OutgoingMessage:
    return OutgoingMessage(
        to=TO,
        subject="Votre code de connexion à labvault",
        text=f"Bonjour,\n\nVotre code de connexion : {CODE}.\n.\nÀ bientôt.\n",
        category="account:email-code",
    )


# Every byte the server must receive; only the date and the random Message-ID may vary.
EXPECTED = re.compile(
    re.escape(
        b"From: labvault <no-reply@labvault.localhost>\r\n"
        b"To: camille.martin@example.org\r\n"
        b"Subject: =?utf-8?q?Votre_code_de_connexion_=C3=A0_labvault?=\r\n"
    )
    + rb"Date: (?P<date>[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d \+0000)\r\n"
    + rb"Message-ID: <[0-9a-f]{32}@labvault\.localhost>\r\n"
    + re.escape(
        b"Auto-Submitted: auto-generated\r\n"
        b'Content-Type: text/plain; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"MIME-Version: 1.0\r\n"
        b"\r\n"
        b"Bonjour,\r\n"
        b"\r\n"
        b"Votre code de connexion : 482913.\r\n"
        b".\r\n"  # a line holding only a dot: dot-stuffed on the wire, restored here
        b"=C3=80 bient=C3=B4t.\r\n"
    )
)


def error_text(exc: BaseException) -> str:
    """All that a log line or a traceback would show of the error."""
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Recorder:
    """An aiosmtpd handler that keeps what it receives and answers RCPT/DATA as told."""

    rcpt_replies: list[str] = field(default_factory=list)  # used in turn, then "250 OK"
    data_reply: str = "250 OK: queued"
    rcpt_attempts: int = 0
    envelopes: list[Envelope] = field(default_factory=list)
    tls_seen: list[bool] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.rcpt_attempts += 1
        if self.rcpt_replies:
            return self.rcpt_replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply.startswith("250"):
            self.envelopes.append(envelope)
            self.tls_seen.append(session.ssl is not None)
        return self.data_reply


@dataclass
class Authenticator:
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.logins.append((data.login, data.password))
        ok = (data.login, data.password) == (USER.encode(), PASSWORD.encode())
        return AuthResult(success=ok, handled=False)


@dataclass
class Server:
    port: int
    recorder: Recorder


StartServer = Callable[..., Server]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    controllers: list[Controller] = []

    def start(recorder: Recorder | None = None, **smtp_options: Any) -> Server:
        recorder = recorder or Recorder()
        port = free_port()
        controller = Controller(recorder, hostname="127.0.0.1", port=port, **smtp_options)
        controller.start()
        controllers.append(controller)
        return Server(port, recorder)

    yield start
    for controller in controllers:
        controller.stop()


@dataclass
class Certificate:
    server_context: ssl.SSLContext
    client_context: ssl.SSLContext  # trusts this certificate only


def make_certificate(directory: Path, names: list[x509.GeneralName]) -> Certificate:
    """A self-signed certificate for ``names``, made with cryptography."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "labvault test SMTP")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    client_context = ssl.create_default_context(cadata=cert_pem.decode())
    return Certificate(server_context, client_context)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    return make_certificate(tmp_path_factory.mktemp("tls"), names)


def mailer(url: str, **options: Any) -> SmtpMailer:
    return SmtpMailer.from_url(url, SENDER, retry_delay=0, **options)


def assert_received_exactly(server: Server) -> None:
    [envelope] = server.recorder.envelopes
    assert envelope.mail_from == "no-reply@labvault.localhost"
    assert envelope.rcpt_tos == [TO]
    assert isinstance(envelope.original_content, bytes)
    match = EXPECTED.fullmatch(envelope.original_content)
    assert match is not None, envelope.original_content
    sent = email.utils.parsedate_to_datetime(match["date"].decode())
    assert abs(sent - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
    assert parsed["Subject"] == "Votre code de connexion à labvault"


def test_plain_delivery_to_loopback_byte_for_byte(start_server: StartServer) -> None:
    server = start_server()
    mailer(f"smtp://127.0.0.1:{server.port}?tls=none").send(outgoing())
    assert_received_exactly(server)
    assert server.recorder.tls_seen == [False]


@plaintext_auth
def test_auth_login_over_loopback(start_server: StartServer) -> None:
    authenticator = Authenticator()
    server = start_server(authenticator=authenticator, auth_required=True, auth_require_tls=False)
    url = f"smtp://alerts%40labo.example.fr:{PASSWORD}@127.0.0.1:{server.port}?tls=none"
    mailer(url).send(outgoing())
    assert authenticator.logins == [(USER.encode(), PASSWORD.encode())]
    assert_received_exactly(server)


@plaintext_auth
def test_wrong_password_fails_at_once_without_the_password(start_server: StartServer) -> None:
    authenticator = Authenticator()
    server = start_server(
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=False,
        auth_exclude_mechanism=["LOGIN"],  # PLAIN only: one try per connection
    )
    url = f"smtp://alerts%40labo.example.fr:wrong-{PASSWORD}@127.0.0.1:{server.port}?tls=none"
    with (
        capture_logs() as logs,
        pytest.raises(MailerError, match=r"refused the credentials \(535 5\.7\.8\)") as caught,
    ):
        mailer(url).send(outgoing())
    assert len(authenticator.logins) == 1  # a permanent refusal is not retried
    assert logs == []
    assert PASSWORD not in error_text(caught.value)
    assert server.recorder.envelopes == []


def test_credentials_are_never_sent_where_auth_is_not_offered(start_server: StartServer) -> None:
    # The server offers AUTH only after TLS (aiosmtpd's default): no plaintext login.
    server = start_server(authenticator=Authenticator())
    url = f"smtp://alerts:{PASSWORD}@127.0.0.1:{server.port}?tls=none"
    with pytest.raises(MailerError, match="does not offer authentication"):
        mailer(url).send(outgoing())


def test_starttls_with_auth_and_a_trusted_certificate(
    start_server: StartServer, certificate: Certificate
) -> None:
    authenticator = Authenticator()
    server = start_server(
        tls_context=certificate.server_context,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
    )
    url = f"smtp://alerts%40labo.example.fr:{PASSWORD}@127.0.0.1:{server.port}"
    mailer(url, ssl_context=certificate.client_context).send(outgoing())
    assert authenticator.logins == [(USER.encode(), PASSWORD.encode())]
    assert_received_exactly(server)
    assert server.recorder.tls_seen == [True]


def test_an_untrusted_certificate_is_refused(
    start_server: StartServer, certificate: Certificate
) -> None:
    server = start_server(tls_context=certificate.server_context, require_starttls=True)
    # No ssl_context: the system's trust store, which does not know the test certificate.
    with pytest.raises(MailerError, match="certificate was refused"):
        mailer(f"smtp://127.0.0.1:{server.port}").send(outgoing())
    assert server.recorder.envelopes == []


def test_a_certificate_for_another_host_is_refused(
    start_server: StartServer, tmp_path: Path
) -> None:
    other = make_certificate(tmp_path, [x509.DNSName("mail.example.org")])
    server = start_server(tls_context=other.server_context, require_starttls=True)
    # Trusted, but it names another host than the one connected to.
    with pytest.raises(MailerError, match=r"certificate was refused \(IP address mismatch"):
        mailer(f"smtp://127.0.0.1:{server.port}", ssl_context=other.client_context).send(outgoing())
    assert server.recorder.envelopes == []


def test_starttls_that_the_server_does_not_offer_is_an_error(start_server: StartServer) -> None:
    server = start_server()
    with pytest.raises(MailerError, match="does not offer STARTTLS"):
        mailer(f"smtp://127.0.0.1:{server.port}").send(outgoing())
    assert server.recorder.envelopes == []


def test_implicit_tls(start_server: StartServer, certificate: Certificate) -> None:
    server = start_server(ssl_context=certificate.server_context)
    url = f"smtp://127.0.0.1:{server.port}?tls=ssl"
    mailer(url, ssl_context=certificate.client_context).send(outgoing())
    assert_received_exactly(server)


def test_a_refused_recipient_is_not_named_in_the_error(start_server: StartServer) -> None:
    server = start_server(
        Recorder(rcpt_replies=[f"550 5.1.1 <{TO}>: Recipient address rejected: User unknown"])
    )
    with (
        capture_logs() as logs,
        pytest.raises(MailerError, match=r"refused the recipient \(550 5\.1\.1\)") as caught,
    ):
        mailer(f"smtp://127.0.0.1:{server.port}?tls=none").send(outgoing())
    assert server.recorder.rcpt_attempts == 1  # permanent: no retry
    assert "camille" not in error_text(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    assert "camille" not in repr(logs)


def test_a_refused_message_does_not_quote_the_body(start_server: StartServer) -> None:
    server = start_server(Recorder(data_reply=f"554 5.7.1 Rejected: 'code de connexion : {CODE}'"))
    with pytest.raises(MailerError, match=r"refused the message \(554 5\.7\.1\)") as caught:
        mailer(f"smtp://127.0.0.1:{server.port}?tls=none").send(outgoing())
    assert CODE not in error_text(caught.value)


def test_a_temporary_refusal_is_retried_once(start_server: StartServer) -> None:
    server = start_server(Recorder(rcpt_replies=[f"451 4.3.0 <{TO}>: try again later"]))
    with capture_logs() as logs:
        mailer(f"smtp://127.0.0.1:{server.port}?tls=none").send(outgoing())
    assert server.recorder.rcpt_attempts == 2
    assert_received_exactly(server)
    assert [entry["event"] for entry in logs] == ["mail.retry", "mail.sent"]
    assert logs[0]["category"] == "account:email-code"
    assert "camille" not in repr(logs)


def test_two_temporary_refusals_raise(start_server: StartServer) -> None:
    replies = [f"451 4.3.0 <{TO}>: try again later", "452 4.2.2 mailbox full"]
    server = start_server(Recorder(rcpt_replies=replies))
    with pytest.raises(MailerError, match=r"for now \(452 4\.2\.2\) \(after one retry\)") as caught:
        mailer(f"smtp://127.0.0.1:{server.port}?tls=none").send(outgoing())
    assert server.recorder.rcpt_attempts == 2
    assert "camille" not in error_text(caught.value)


def test_a_closed_port_fails_after_one_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # nothing listens there
    attempts: list[tuple[str, int]] = []
    real_create_connection = socket.create_connection

    def counting_create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        attempts.append(address)
        return real_create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counting_create_connection)
    with pytest.raises(MailerError, match=r"Connection refused\) \(after one retry\)") as caught:
        mailer(f"smtp://127.0.0.1:{port}?tls=none").send(outgoing())
    assert attempts == [("127.0.0.1", port)] * 2
    assert str(caught.value).startswith(f"smtp://127.0.0.1:{port}?tls=none: ")


def test_a_silent_server_times_out_without_a_retry() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # connections are queued, never greeted
        port = listener.getsockname()[1]
        with capture_logs() as logs, pytest.raises(MailerError, match=r"no answer within 0\.3 s"):
            mailer(f"smtp://127.0.0.1:{port}?tls=none&timeout=0.3").send(outgoing())
    assert logs == []  # no "mail.retry": a timeout is not retried


@plaintext_auth
def test_no_common_auth_mechanism_is_a_clear_error(start_server: StartServer) -> None:
    server = start_server(
        authenticator=Authenticator(),
        auth_require_tls=False,
        auth_exclude_mechanism=["LOGIN", "PLAIN"],
    )
    url = f"smtp://alerts:{PASSWORD}@127.0.0.1:{server.port}?tls=none"
    with pytest.raises(MailerError, match=r"No suitable authentication method found$") as caught:
        mailer(url).send(outgoing())
    assert PASSWORD not in error_text(caught.value)
