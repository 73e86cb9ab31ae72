"""TransitKeyProvider over HTTPS with mutual TLS, against a real OpenBao dev server.

The dev server keeps its plain loopback listener (setup: Transit and the keys, as root) and
gets a second listener from a config file: TLS with a server certificate for 127.0.0.1 signed
by a test CA, and a client certificate required, verified against a separate client CA. All
certificates are made here, per module, with ``cryptography``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from labvault.core.config import Settings
from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.providers import KeyProviderConfig, load_key_provider
from labvault.core.crypto.providers.transit import TransitKeyProvider, TransitOptions
from labvault.core.crypto.secret import Secret
from openbao import TRANSIT_MOUNT, OpenBaoServer, free_port

pytestmark = pytest.mark.openbao


# --- certificates ----------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    """A CA (no ``issuer``: self-signed) or a leaf signed by ``issuer``, valid for a day."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        ).add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        return builder.sign(key, hashes.SHA256())
    ca_key = issuer[1]
    builder = builder.add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True
    ).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256())


def _write_pem(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class _Pki:
    ca_file: Path
    """The CA that signed the server's certificate (what LABVAULT_TRANSIT_CA_FILE names)."""
    server_cert_file: Path
    server_key_file: Path
    client_ca_file: Path
    """The CA the server trusts for client certificates (a different one)."""
    client_cert_file: Path
    client_key_file: Path
    other_key_file: Path
    """A valid private key that belongs to no certificate here."""


def _make_pki(directory: Path) -> _Pki:
    def new_key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    ca_key, client_ca_key, server_key, client_key = new_key(), new_key(), new_key(), new_key()
    ca = _certificate("labvault test server CA", ca_key)
    client_ca = _certificate("labvault test client CA", client_ca_key)
    server = _certificate(
        "127.0.0.1", server_key, issuer=(ca, ca_key), usage=ExtendedKeyUsageOID.SERVER_AUTH
    )
    client = _certificate(
        "labvault-app",
        client_key,
        issuer=(client_ca, client_ca_key),
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    return _Pki(
        ca_file=_write_pem(directory / "ca.pem", ca),
        server_cert_file=_write_pem(directory / "server.pem", server),
        server_key_file=_write_key(directory / "server-key.pem", server_key),
        client_ca_file=_write_pem(directory / "client-ca.pem", client_ca),
        client_cert_file=_write_pem(directory / "client.pem", client),
        client_key_file=_write_key(directory / "client-key.pem", client_key),
        other_key_file=_write_key(directory / "other-key.pem", new_key()),
    )


# --- a dev server with a mutual-TLS listener ---------------------------------------------------


class _TlsOpenBao(OpenBaoServer):
    """A dev server (plain listener, root token) plus a TLS listener requiring a client cert."""

    def __init__(self, binary: Path, workdir: Path, pki: _Pki) -> None:
        super().__init__(binary, workdir)
        self.pki = pki
        self.tls_port = self.cluster_port = 0

    @property
    def tls_address(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def pick_ports(self) -> None:
        super().pick_ports()
        self.tls_port, self.cluster_port = free_port(), free_port()

    def extra_config(self) -> str:
        pki = self.pki
        return (
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.tls_port}"\n'
            f'  cluster_address = "127.0.0.1:{self.cluster_port}"\n'
            f'  tls_cert_file = "{pki.server_cert_file}"\n'
            f'  tls_key_file = "{pki.server_key_file}"\n'
            f'  tls_client_ca_file = "{pki.client_ca_file}"\n'
            "  tls_require_and_verify_client_cert = true\n}\n"
        )

    def extra_ready(self) -> bool:
        return self._tls_answers()

    def _tls_answers(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki.ca_file))
        context.load_cert_chain(self.pki.client_cert_file, self.pki.client_key_file)
        try:
            with httpx.Client(verify=context, trust_env=False, timeout=2) as client:
                return client.get(f"{self.tls_address}/v1/sys/health").status_code == 200
        except httpx.TransportError:
            return False

    def tls_options(self, key: str, **overrides: Any) -> TransitOptions:
        """Options for the TLS listener; by default with the CA and the client certificate."""
        pki = self.pki
        defaults: dict[str, Any] = {
            "ca_file": str(pki.ca_file),
            "client_cert_file": str(pki.client_cert_file),
            "client_key_file": str(pki.client_key_file),
            "retries": 0,
        }
        return TransitOptions(
            address=self.tls_address, mount=TRANSIT_MOUNT, key=key, **{**defaults, **overrides}
        )

    def tls_provider(self, key: str, **overrides: Any) -> TransitKeyProvider:
        return TransitKeyProvider(self.tls_options(key, **overrides), token=Secret(self.root_token))


@pytest.fixture(scope="module")
def tls_openbao(
    openbao: OpenBaoServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[_TlsOpenBao]:
    workdir = tmp_path_factory.mktemp("openbao-tls")
    server = _TlsOpenBao(openbao.binary, workdir, _make_pki(workdir))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_key(tls_openbao: _TlsOpenBao) -> str:
    """A wrapping key (and its derivation key), created as root over the plain listener."""
    key = f"labvault-{uuid.uuid4().hex[:12]}"
    setup = tls_openbao.provider(key)
    setup.ensure_keys()
    setup.close()
    return key


def _items(count: int) -> list[tuple[Secret[bytes], str]]:
    tenant = uuid.uuid4()
    return [(Secret(os.urandom(32)), f"{tenant}|patient|{i}") for i in range(count)]


def _round_trip(provider: TransitKeyProvider) -> None:
    items = _items(3)
    wrapped = provider.wrap_many(items)
    assert all(blob.startswith(b"vault:v1:") for blob in wrapped)
    pairs = [(blob, context) for blob, (_, context) in zip(wrapped, items, strict=True)]
    assert provider.unwrap_many(pairs) == [material for material, _ in items]


def _assert_clean(error: KeyProviderError, server: _TlsOpenBao) -> str:
    """The message, checked for what must never be in it; no httpx exception in the chain."""
    message = str(error)
    assert server.root_token not in message
    assert "httpx" not in message
    assert "<" not in message  # no object repr
    assert error.__cause__ is None
    assert error.__suppress_context__ or error.__context__ is None
    return message


def _refusal(
    server: _TlsOpenBao, provider: TransitKeyProvider, call: Callable[[TransitKeyProvider], object]
) -> str:
    """The checked message of the error ``call`` must raise; the provider is closed."""
    try:
        with pytest.raises(KeyProviderError) as refused:
            call(provider)
    finally:
        provider.close()
    return _assert_clean(refused.value, server)


# --- the tests ---------------------------------------------------------------------------------


def test_wrap_and_unwrap_over_mutual_tls(tls_openbao: _TlsOpenBao, tls_key: str) -> None:
    provider = tls_openbao.tls_provider(tls_key)
    try:
        _round_trip(provider)
        # What the plain listener wrapped opens over TLS and back: the same key.
        plain = tls_openbao.provider(tls_key)
        items = _items(2)
        pairs = [
            (blob, context)
            for blob, (_, context) in zip(plain.wrap_many(items), items, strict=True)
        ]
        assert provider.unwrap_many(pairs) == [material for material, _ in items]
        plain.close()
    finally:
        provider.close()


def test_without_the_ca_file_the_server_certificate_is_not_verified(
    tls_openbao: _TlsOpenBao, tls_key: str
) -> None:
    """The system trust store does not know the test CA: refused, and said so."""
    provider = tls_openbao.tls_provider(tls_key, ca_file=None, retries=2)
    message = _refusal(tls_openbao, provider, lambda p: p.wrap_many(_items(1)))
    assert tls_openbao.tls_address in message
    assert "certificate could not be verified" in message
    assert "LABVAULT_TRANSIT_CA_FILE" in message


def test_a_server_certificate_from_another_ca_is_not_verified(
    tls_openbao: _TlsOpenBao, tls_key: str
) -> None:
    """Trusting the client CA only (the wrong file in LABVAULT_TRANSIT_CA_FILE)."""
    provider = tls_openbao.tls_provider(tls_key, ca_file=str(tls_openbao.pki.client_ca_file))
    message = _refusal(tls_openbao, provider, lambda p: p.unwrap_many([(b"vault:v1:AAAA", "ctx")]))
    assert "certificate could not be verified" in message


def test_without_a_client_certificate_the_server_refuses_the_handshake(
    tls_openbao: _TlsOpenBao, tls_key: str
) -> None:
    provider = tls_openbao.tls_provider(
        tls_key, client_cert_file=None, client_key_file=None, retries=2
    )
    message = _refusal(tls_openbao, provider, lambda p: p.wrap_many(_items(1)))
    assert tls_openbao.tls_address in message
    assert "refused the TLS handshake" in message
    assert "client certificate" in message
    assert "LABVAULT_TRANSIT_CLIENT_CERT_FILE" in message


def test_a_client_certificate_from_an_untrusted_ca_is_refused(
    tls_openbao: _TlsOpenBao, tls_key: str
) -> None:
    """The server certificate as client certificate: valid, but not from the client CA."""
    pki = tls_openbao.pki
    provider = tls_openbao.tls_provider(
        tls_key,
        client_cert_file=str(pki.server_cert_file),
        client_key_file=str(pki.server_key_file),
    )
    message = _refusal(tls_openbao, provider, lambda p: p.wrap_many(_items(1)))
    assert "refused the TLS handshake" in message


def test_a_missing_ca_file_is_a_configuration_error_naming_the_setting(
    tls_openbao: _TlsOpenBao, tls_key: str, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(KeyProviderError) as refused:
        tls_openbao.tls_provider(tls_key, ca_file=str(missing))
    message = _assert_clean(refused.value, tls_openbao)
    assert "LABVAULT_TRANSIT_CA_FILE" in message
    assert str(missing) in message
    assert "LABVAULT_TRANSIT_CLIENT_KEY_FILE" not in message


def test_a_client_key_that_does_not_match_is_a_configuration_error(
    tls_openbao: _TlsOpenBao, tls_key: str
) -> None:
    pki = tls_openbao.pki
    with pytest.raises(KeyProviderError) as refused:
        tls_openbao.tls_provider(tls_key, client_key_file=str(pki.other_key_file))
    message = _assert_clean(refused.value, tls_openbao)
    assert "LABVAULT_TRANSIT_CLIENT_KEY_FILE" in message
    assert "LABVAULT_TRANSIT_CLIENT_CERT_FILE" in message
    assert "does not match" in message
    assert "LABVAULT_TRANSIT_CA_FILE" not in message
    for key_file in (pki.other_key_file, pki.client_key_file):
        pem = key_file.read_text()
        body = "".join(pem.strip().splitlines()[1:-1])
        assert body[:32] not in message
        assert "PRIVATE KEY" not in message


def test_settings_with_the_tls_files_build_a_provider_that_works(
    tls_openbao: _TlsOpenBao, tls_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LABVAULT_TRANSIT_CA_FILE, _CLIENT_CERT_FILE, _CLIENT_KEY_FILE and a token file, read
    from the environment as the application reads them."""
    pki = tls_openbao.pki
    token_file = tmp_path / "bao-token"
    token_file.write_text(tls_openbao.root_token + "\n", encoding="utf-8")
    for name in ("LABVAULT_TRANSIT_TOKEN", "LABVAULT_TRANSIT_ROLE_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(
        "LABVAULT_KEY_PROVIDER", f"transit:{tls_openbao.tls_address}/{TRANSIT_MOUNT}/{tls_key}"
    )
    monkeypatch.setenv("LABVAULT_TRANSIT_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("LABVAULT_TRANSIT_CA_FILE", str(pki.ca_file))
    monkeypatch.setenv("LABVAULT_TRANSIT_CLIENT_CERT_FILE", str(pki.client_cert_file))
    monkeypatch.setenv("LABVAULT_TRANSIT_CLIENT_KEY_FILE", str(pki.client_key_file))
    monkeypatch.setenv("LABVAULT_TRANSIT_RETRIES", "0")
    settings = Settings(data_dir=tmp_path / "var")
    provider = load_key_provider(KeyProviderConfig.from_settings(settings))
    assert isinstance(provider, TransitKeyProvider)
    try:
        assert provider.options.address == tls_openbao.tls_address
        assert provider.options.ca_file == str(pki.ca_file)
        _round_trip(provider)
    finally:
        provider.close()
    # The same settings without the client certificate: the server refuses.
    monkeypatch.delenv("LABVAULT_TRANSIT_CLIENT_CERT_FILE")
    monkeypatch.delenv("LABVAULT_TRANSIT_CLIENT_KEY_FILE")
    bare = load_key_provider(KeyProviderConfig.from_settings(Settings(data_dir=tmp_path / "v")))
    assert isinstance(bare, TransitKeyProvider)
    try:
        with pytest.raises(KeyProviderError, match="refused the TLS handshake"):
            bare.wrap_many(_items(1))
    finally:
        bare.close()
