"""The registry of sending systems (service clients) of one organization.

A laboratory information system (``lis``) or a FHIR client (``fhir``) is one service
principal, ``service:<client id>``. An MLLP sender is recognised by its MSH-3/MSH-4 pair,
unique in the organization, so a message cannot claim another system's results. An OAuth2
client secret (for the FHIR token endpoint) is generated here, shown once and stored only as
an argon2 hash. Every change is audited; the events name ids, never names or secrets.

MSH-3/MSH-4 are only text the sender writes, so an MLLP message is also checked against the
client's allow-list of peer networks (``hl7_peers``): a new client gets loopback only (the
listener's default address, behind a local TLS tunnel); ``set_peers`` names others. A message
fed in-process (the demo, a benchmark, a test) names its peer ``LOCAL_PEER``: no socket is
involved, and that code already holds the keys.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from labvault.core.audit.actions import AuditAction
from labvault.core.audit.events import AuditTrail
from labvault.core.crypto.passwords import PasswordHasher
from labvault.core.crypto.secret import Secret
from labvault.core.db import utcnow
from labvault.organizations.models import Site
from labvault.results.models import (
    ServiceClient,
    ServiceClientKind,
    ServiceClientSite,
    ServiceToken,
)

__all__ = [
    "DEFAULT_PEERS",
    "LOCAL_PEER",
    "ClientError",
    "ClientSummary",
    "IssuedSecret",
    "ServiceClientRegistry",
    "find_sender",
    "parse_peers",
    "peer_allowed",
]

TARGET_TYPE: Final = "service-client"
SECRET_BYTES: Final = 32
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")
_HL7_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,226}")
_SCOPE: Final = re.compile(r"(?:system|user|patient)/[A-Za-z*]+\.(?:read|write|\*|[cruds]+)")
DEFAULT_LIS_SCOPES: Final = ("system/Observation.write", "system/DiagnosticReport.write")
LOCAL_PEER: Final = "local"
"""The peer of a message fed in-process (no socket): always allowed."""
DEFAULT_PEERS: Final = ("127.0.0.1/32", "::1/128")
"""A new sender's allow-list: loopback only (the listener's default, a local TLS tunnel)."""
MAX_PEERS: Final = 32
_PEERS_COLUMN_CHARS: Final = 1000

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientError(ValueError):
    """A registration refused: a clear message naming the option, nothing written."""


@dataclass(frozen=True, slots=True)
class ClientSummary:
    id: uuid.UUID
    name: str
    kind: str
    scopes: tuple[str, ...]
    hl7_application: str | None
    hl7_facility: str | None
    default_site: str | None
    sites: tuple[str, ...]
    has_secret: bool
    hl7_peers: tuple[str, ...] | None
    """The allowed MLLP peer networks; ``None`` (or empty): every network peer refused."""
    created_at: dt.datetime
    disabled_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class IssuedSecret:
    """A client secret as issued: to show once, never stored in clear."""

    client_id: uuid.UUID
    secret: Secret[str]


def _scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    cleaned = tuple(dict.fromkeys(s.strip() for s in scopes if s.strip()))
    for scope in cleaned:
        if not _SCOPE.fullmatch(scope):
            raise ClientError(
                f"--scope: {scope!r} is not a SMART scope (e.g. system/Observation.write)"
            )
    return cleaned


def parse_peers(peers: Sequence[str]) -> tuple[str, ...]:
    """Normalised CIDR networks (a bare address is a /32 or /128); ``ClientError`` on any
    value that is not an address or a network without host bits."""
    networks: list[str] = []
    for raw in peers:
        value = raw.strip()
        if not value:
            continue
        try:
            network = ipaddress.ip_network(value, strict=True)
        except ValueError:
            raise ClientError(
                f"--peer: {value!r} is not an IP address or a network "
                "(e.g. 10.0.0.5 or 10.0.1.0/24, without host bits)"
            ) from None
        networks.append(str(network))
    cleaned = tuple(dict.fromkeys(networks))
    if len(cleaned) > MAX_PEERS or len(" ".join(cleaned)) > _PEERS_COLUMN_CHARS:
        raise ClientError(f"--peer: at most {MAX_PEERS} addresses or networks")
    return cleaned


def _peer_address(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of ``host:port``, ``[v6]:port`` or a bare address (IPv4-mapped IPv6
    addresses as IPv4); ``None`` if it is none of these."""
    host = peer
    if peer.startswith("["):
        host = peer[1:].partition("]")[0]
    elif peer.count(":") == 1:
        host = peer.partition(":")[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def peer_allowed(client: ServiceClient, peer: str) -> bool:
    """Whether an MLLP message from ``peer`` may speak for ``client``: in-process feeds
    (``LOCAL_PEER``) always; a network peer only inside the client's allow-list (none set:
    refused)."""
    if peer == LOCAL_PEER:
        return True
    address = _peer_address(peer)
    if address is None or not client.hl7_peers:
        return False
    networks: list[IpNetwork] = [ipaddress.ip_network(n) for n in client.hl7_peers.split()]
    return any(address in network for network in networks)


def find_sender(
    session: Session, tenant_id: uuid.UUID, application: str, facility: str
) -> ServiceClient | None:
    """The client registered with this MSH-3/MSH-4 pair in the tenant (enabled or not)."""
    return session.scalars(
        select(ServiceClient).where(
            ServiceClient.tenant_id == tenant_id,
            ServiceClient.hl7_application == application,
            ServiceClient.hl7_facility == facility,
        )
    ).one_or_none()


class ServiceClientRegistry:
    """Adds, lists and disables the sending systems of one tenant, audited on ``audit``."""

    def __init__(
        self,
        session: Session,
        tenant_id: uuid.UUID,
        audit: AuditTrail,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self._session = session
        self._tenant_id = tenant_id
        self._audit = audit
        self._hasher = hasher or PasswordHasher()

    def _site(self, name: str) -> Site:
        site = self._session.scalars(
            select(Site).where(Site.tenant_id == self._tenant_id, Site.name == name)
        ).one_or_none()
        if site is None:
            raise ClientError(f"--site: no site named {name!r} in this organization")
        return site

    def add(
        self,
        name: str,
        *,
        kind: ServiceClientKind | str,
        hl7_application: str | None = None,
        hl7_facility: str | None = None,
        sites: Sequence[str] = (),
        scopes: Sequence[str] = (),
        with_secret: bool = False,
        peers: Sequence[str] = (),
    ) -> tuple[ServiceClient, IssuedSecret | None]:
        """Register a sending system; the first site is its default site.

        Refused (``ClientError``, nothing written) for a taken name or MSH-3/MSH-4 pair, an
        unknown site, a malformed scope or peer. An LIS without scopes gets the
        result-writing ones (``DEFAULT_LIS_SCOPES``); an HL7 sender without peers gets
        loopback only (``DEFAULT_PEERS``).
        """
        name = name.strip()
        if not _NAME.fullmatch(name):
            raise ClientError("NAME: 1 to 64 letters, digits, spaces, '.', '_' or '-'")
        try:
            kind = ServiceClientKind(kind)
        except ValueError:
            raise ClientError("--kind: lis or fhir") from None
        application = (hl7_application or "").strip() or None
        facility = (hl7_facility or "").strip() or None
        if (application is None) != (facility is None):
            raise ClientError("--hl7-application and --hl7-facility go together")
        if application is not None and facility is not None:
            if not (_HL7_NAME.fullmatch(application) and _HL7_NAME.fullmatch(facility)):
                raise ClientError(
                    "--hl7-application/--hl7-facility: letters, digits, spaces, '.', '_', '-'"
                )
            if find_sender(self._session, self._tenant_id, application, facility) is not None:
                raise ClientError(
                    "--hl7-application/--hl7-facility: another sending system already uses them"
                )
        granted = _scopes(scopes) or (DEFAULT_LIS_SCOPES if kind is ServiceClientKind.LIS else ())
        allowed = parse_peers(peers)
        if allowed and application is None:
            raise ClientError("--peer: only for an MLLP sender (with --hl7-application)")
        if application is not None and not allowed:
            allowed = DEFAULT_PEERS
        taken = self._session.scalar(
            select(ServiceClient.id).where(
                ServiceClient.tenant_id == self._tenant_id, ServiceClient.name == name
            )
        )
        if taken is not None:
            raise ClientError(f"NAME: a sending system named {name!r} already exists")
        site_rows = [self._site(site) for site in dict.fromkeys(sites)]
        client = ServiceClient(
            id=uuid.uuid4(),
            tenant_id=self._tenant_id,
            name=name,
            kind=kind.value,
            scopes=" ".join(granted),
            hl7_application=application,
            hl7_facility=facility,
            hl7_peers=" ".join(allowed) or None,
            default_site_id=site_rows[0].id if site_rows else None,
            created_by=self._audit.principal.id,
        )
        issued: IssuedSecret | None = None
        if with_secret:
            issued = IssuedSecret(client.id, Secret(secrets.token_urlsafe(SECRET_BYTES)))
            client.secret_hash = self._hasher.hash(issued.secret)
        self._session.add(client)
        self._session.flush()
        for site in site_rows:
            self._session.add(
                ServiceClientSite(tenant_id=self._tenant_id, client_id=client.id, site_id=site.id)
            )
        self._session.flush()
        self._audit.record(
            AuditAction.SERVICE_CLIENT_CREATE,
            tenant_id=self._tenant_id,
            target_type=TARGET_TYPE,
            target_id=client.id,
        )
        if issued is not None:
            self._audit.record(
                AuditAction.SERVICE_CLIENT_SECRET,
                tenant_id=self._tenant_id,
                target_type=TARGET_TYPE,
                target_id=client.id,
            )
        return client, issued

    def get(self, reference: str) -> ServiceClient:
        """A client by id or by name; ``ClientError`` if there is none."""
        query = select(ServiceClient).where(ServiceClient.tenant_id == self._tenant_id)
        try:
            query = query.where(ServiceClient.id == uuid.UUID(reference))
        except ValueError:
            query = query.where(ServiceClient.name == reference)
        client = self._session.scalars(query).one_or_none()
        if client is None:
            raise ClientError("CLIENT: no such sending system in this organization")
        return client

    def new_secret(self, reference: str) -> IssuedSecret:
        """Replace the client's OAuth2 secret: the old one, and every token issued with it,
        stop working at once (a rotation after a leak must cut the thief off)."""
        client = self.get(reference)
        if client.disabled_at is not None:
            raise ClientError("CLIENT: disabled")
        issued = IssuedSecret(client.id, Secret(secrets.token_urlsafe(SECRET_BYTES)))
        client.secret_hash = self._hasher.hash(issued.secret)
        self._session.flush()
        self._revoke_tokens(client)
        self._audit.record(
            AuditAction.SERVICE_CLIENT_SECRET,
            tenant_id=self._tenant_id,
            target_type=TARGET_TYPE,
            target_id=client.id,
        )
        return issued

    def _revoke_tokens(self, client: ServiceClient) -> None:
        now = utcnow()
        for token in self._session.scalars(
            select(ServiceToken).where(
                ServiceToken.tenant_id == self._tenant_id,
                ServiceToken.client_id == client.id,
                ServiceToken.revoked_at.is_(None),
            )
        ):
            token.revoked_at = now
        self._session.flush()

    def set_peers(self, reference: str, peers: Sequence[str]) -> ServiceClient:
        """Replace the allow-list of an MLLP sender's peer networks (at least one)."""
        client = self.get(reference)
        if client.hl7_application is None:
            raise ClientError("CLIENT: not an MLLP sender (no --hl7-application)")
        allowed = parse_peers(peers)
        if not allowed:
            raise ClientError("--peer: at least one (127.0.0.1 for a local tunnel)")
        client.hl7_peers = " ".join(allowed)
        self._session.flush()
        self._audit.record(
            AuditAction.SERVICE_CLIENT_PEERS,
            tenant_id=self._tenant_id,
            target_type=TARGET_TYPE,
            target_id=client.id,
        )
        return client

    def disable(self, reference: str, *, reason: str = "operator") -> ServiceClient:
        """Disable a client: its messages are refused (AR) and its tokens stop working.
        Disabling a disabled client changes nothing (and records nothing)."""
        client = self.get(reference)
        if client.disabled_at is not None:
            return client
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,63}", reason):
            raise ClientError("--reason: a short code (lower-case letters, digits, '-')")
        client.disabled_at = utcnow()
        client.disabled_reason = reason
        self._session.flush()
        self._revoke_tokens(client)
        self._audit.record(
            AuditAction.SERVICE_CLIENT_DISABLE,
            tenant_id=self._tenant_id,
            target_type=TARGET_TYPE,
            target_id=client.id,
            purpose=reason,
        )
        return client

    def list(self) -> list[ClientSummary]:
        clients = list(
            self._session.scalars(
                select(ServiceClient)
                .where(ServiceClient.tenant_id == self._tenant_id)
                .order_by(ServiceClient.name)
            )
        )
        site_names = {
            site_id: site_name
            for site_id, site_name in self._session.execute(
                select(Site.id, Site.name).where(Site.tenant_id == self._tenant_id)
            )
        }
        served: dict[uuid.UUID, list[str]] = {}
        for client_id, site_id in self._session.execute(
            select(ServiceClientSite.client_id, ServiceClientSite.site_id).where(
                ServiceClientSite.tenant_id == self._tenant_id
            )
        ):
            served.setdefault(client_id, []).append(site_names.get(site_id, str(site_id)))
        return [
            ClientSummary(
                id=client.id,
                name=client.name,
                kind=client.kind,
                scopes=tuple(client.scopes.split()),
                hl7_application=client.hl7_application,
                hl7_facility=client.hl7_facility,
                default_site=(
                    site_names.get(client.default_site_id) if client.default_site_id else None
                ),
                sites=tuple(sorted(served.get(client.id, []))),
                has_secret=client.secret_hash is not None,
                hl7_peers=tuple(client.hl7_peers.split()) if client.hl7_peers else None,
                created_at=client.created_at,
                disabled_at=client.disabled_at,
            )
            for client in clients
        ]
