"""``labvault results clients|queue`` and ``labvault mllp serve``.

Each command acts as a named system principal (``cli:results-...``); output names ids,
reason codes, counts and times, never a value of a result or a patient's identity (the
queue's ``show`` prints the claimed identity to the operator who asked, and that opening
is audited).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.orm import Session

from labvault.core.access.principals import SystemPrincipal
from labvault.core.audit.events import audited_transaction
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import use_organization
from labvault.patients.scope import SYSTEM_ACCESS
from labvault.results.clients import ClientError, ServiceClientRegistry
from labvault.results.intake import OrderDigester, StoredResultIntake
from labvault.results.mllp import DEFAULT_MAX_PER_PEER, DEFAULT_MESSAGE_TIMEOUT, MllpServer
from labvault.results.queue import DiscardReason, MatchingQueue, QueueError

__all__ = ["mllp_app", "results_app"]

results_app = typer.Typer(
    help="Lab results: sending systems, matching queue.", no_args_is_help=True
)
clients_app = typer.Typer(help="Sending systems (service clients).", no_args_is_help=True)
queue_app = typer.Typer(help="Results waiting for a patient match.", no_args_is_help=True)
mllp_app = typer.Typer(help="HL7 v2 over MLLP.", no_args_is_help=True)
results_app.add_typer(clients_app, name="clients")
results_app.add_typer(queue_app, name="queue")

OrganizationOption = Annotated[str | None, typer.Option(help="Organization name.")]

CLIENTS_PRINCIPAL = "cli:results-clients"
QUEUE_PRINCIPAL = "cli:results-queue"


@dataclass(frozen=True, slots=True)
class _Unit:
    """One command's unit of work: the organization, and a keyring acting as the command's
    system principal (every opening and change it makes is audited under that name)."""

    runtime: Runtime
    session: Session
    tenant_id: uuid.UUID
    keyring: TenantKeyring

    def clients(self) -> ServiceClientRegistry:
        return ServiceClientRegistry(self.session, self.tenant_id, self.keyring.audit)

    def queue(self) -> MatchingQueue:
        """The matching queue (the order-number digests are derived on first use: attaching
        only)."""
        return MatchingQueue(
            self.session,
            self.keyring,
            SYSTEM_ACCESS,
            orders=OrderDigester.from_provider(self.runtime.key_provider, self.tenant_id),
        )


@contextlib.contextmanager
def _unit_of_work(
    principal: str,
    organization: str | None,
    *,
    refusals: tuple[type[Exception], ...] = (),
    seal: bool = True,
    audited: bool = False,
) -> Iterator[_Unit]:
    """Open the runtime and one transaction as ``principal``, for the named organization.

    A domain refusal (one of ``refusals``) rolls everything back and reaches the operator as
    a :class:`~labvault.cli.CliError`, with nothing written. After a commit, the run's audit
    events are sealed (``seal``) before the runtime closes. ``audited`` keeps the events of an
    audited refusal (:func:`~labvault.core.audit.events.audited_transaction`).
    """
    from labvault.cli import CliError, _audit_context, _runtime, _seal_events

    with _runtime() as runtime:
        begin = audited_transaction if audited else transaction
        try:
            with begin(runtime.sessions) as session:
                tenant_id = use_organization(session, organization).id
                keyring = TenantKeyring(
                    session,
                    runtime.key_provider,
                    tenant_id,
                    SystemPrincipal(principal),
                    context=_audit_context(),
                )
                yield _Unit(runtime, session, tenant_id, keyring)
        except refusals as refused:
            raise CliError(str(refused)) from None
        if seal:
            _seal_events(runtime)


@clients_app.command("add")
def clients_add(
    name: Annotated[str, typer.Argument(help="A name for the sending system.")],
    kind: Annotated[str, typer.Option(help="lis (laboratory system) or fhir.")] = "lis",
    hl7_application: Annotated[
        str | None, typer.Option(help="Its MSH-3 (sending application).")
    ] = None,
    hl7_facility: Annotated[str | None, typer.Option(help="Its MSH-4 (sending facility).")] = None,
    site: Annotated[
        list[str] | None, typer.Option(help="A site it serves (repeatable; first: default).")
    ] = None,
    scope: Annotated[
        list[str] | None, typer.Option(help="A SMART scope, e.g. system/Observation.write.")
    ] = None,
    with_secret: Annotated[
        bool, typer.Option("--with-secret", help="Issue an OAuth2 client secret (shown once).")
    ] = False,
    peer: Annotated[
        list[str] | None,
        typer.Option(
            help="An address or network its MLLP connections come from (repeatable, e.g. "
            "10.0.0.5 or 10.0.1.0/24). Default: loopback only."
        ),
    ] = None,
    organization: OrganizationOption = None,
) -> None:
    """Register a sending system (an MLLP sender: its MSH-3 and MSH-4, from its peers)."""
    from labvault.cli import console

    with _unit_of_work(CLIENTS_PRINCIPAL, organization, refusals=(ClientError,)) as unit:
        client, issued = unit.clients().add(
            name,
            kind=kind,
            hl7_application=hl7_application,
            hl7_facility=hl7_facility,
            sites=site or [],
            scopes=scope or [],
            with_secret=with_secret,
            peers=peer or [],
        )
        client_id = client.id
    console.print(f"Sending system {client_id} registered.", highlight=False)
    if issued is not None:
        console.print(
            "Client secret (shown once, store it now): " + issued.secret.reveal(),
            highlight=False,
            soft_wrap=True,
        )


@clients_app.command("list")
def clients_list(organization: OrganizationOption = None) -> None:
    """The sending systems, with their HL7 identity, sites and state."""
    from labvault.cli import console

    with _unit_of_work(CLIENTS_PRINCIPAL, organization, seal=False) as unit:
        clients = unit.clients().list()
    if not clients:
        console.print("No sending system.")
        return
    table = Table(
        "id", "name", "kind", "MSH-3/MSH-4", "MLLP peers", "sites", "scopes", "secret", "state"
    )
    for c in clients:
        if c.hl7_application is None:
            peers = "-"
        elif c.hl7_peers:
            peers = " ".join(c.hl7_peers)
        else:
            peers = "none: MLLP refused (set-peers)"
        table.add_row(
            str(c.id),
            c.name,
            c.kind,
            f"{c.hl7_application}/{c.hl7_facility}" if c.hl7_application else "-",
            peers,
            ", ".join(c.sites) or "-",
            " ".join(c.scopes) or "-",
            "yes" if c.has_secret else "no",
            f"disabled {c.disabled_at:%Y-%m-%d}" if c.disabled_at else "enabled",
        )
    console.print(table)


@clients_app.command("set-peers")
def clients_set_peers(
    client: Annotated[str, typer.Argument(help="The client's id or name.")],
    peer: Annotated[
        list[str],
        typer.Option(help="An address or network (repeatable): 10.0.0.5, 10.0.1.0/24."),
    ],
    organization: OrganizationOption = None,
) -> None:
    """Replace the addresses an MLLP sender's connections may come from (others: AR)."""
    from labvault.cli import console

    with _unit_of_work(CLIENTS_PRINCIPAL, organization, refusals=(ClientError,)) as unit:
        row = unit.clients().set_peers(client, peer)
        client_id, peers = row.id, row.hl7_peers
    console.print(f"Sending system {client_id}: MLLP peers {peers}.", highlight=False)


@clients_app.command("disable")
def clients_disable(
    client: Annotated[str, typer.Argument(help="The client's id or name.")],
    reason: Annotated[str, typer.Option(help="A short reason code.")] = "operator",
    organization: OrganizationOption = None,
) -> None:
    """Disable a sending system: its messages are refused (AR), its tokens revoked."""
    from labvault.cli import console

    with _unit_of_work(CLIENTS_PRINCIPAL, organization, refusals=(ClientError,)) as unit:
        client_id = unit.clients().disable(client, reason=reason).id
    console.print(f"Sending system {client_id} disabled.", highlight=False)


@clients_app.command("secret")
def clients_secret(
    client: Annotated[str, typer.Argument(help="The client's id or name.")],
    organization: OrganizationOption = None,
) -> None:
    """Issue a new OAuth2 client secret (shown once; the previous one stops working)."""
    from labvault.cli import console

    with _unit_of_work(CLIENTS_PRINCIPAL, organization, refusals=(ClientError,)) as unit:
        issued = unit.clients().new_secret(client)
    console.print(
        "Client secret (shown once, store it now): " + issued.secret.reveal(),
        highlight=False,
        soft_wrap=True,
    )


# --- The matching queue -----------------------------------------------------------------


@queue_app.command("list")
def queue_list(organization: OrganizationOption = None) -> None:
    """Queued messages: id, reason, time (nothing decrypted)."""
    from labvault.cli import console

    with _unit_of_work(QUEUE_PRINCIPAL, organization, seal=False) as unit:
        items = unit.queue().list()
    if not items:
        console.print("The matching queue is empty.")
        return
    table = Table("id", "reason", "received", "sender")
    for item in items:
        table.add_row(
            str(item.id),
            item.reason,
            item.received_at.isoformat(timespec="seconds"),
            str(item.client_id),
        )
    console.print(table)


@queue_app.command("show")
def queue_show(
    message_id: Annotated[str, typer.Argument(help="The queued message's id.")],
    organization: OrganizationOption = None,
) -> None:
    """Decrypt one queued message to decide (audited): the claimed identity and orders."""
    from labvault.cli import CliError, _parse_uuid, console

    subject = _parse_uuid(message_id, "MESSAGE_ID")
    with _unit_of_work(QUEUE_PRINCIPAL, organization) as unit:
        opened = unit.queue().open(subject)
    if opened is None:
        raise CliError("no such queued message")
    claim = opened.result.patient
    console.print(f"Message {opened.item.id}: {opened.item.reason}", highlight=False)
    console.print(
        "Claimed patient: "
        f"{claim.birth_name} ({claim.used_name or '-'}), {' '.join(claim.first_names)}, "
        f"born {claim.birth_date or '?'}, sex {claim.sex or '?'}; identifiers: "
        + ", ".join(f"{i.value} [{i.oid or '-'}]" for i in claim.identifiers),
        highlight=False,
        markup=False,
    )
    for order in opened.result.orders:
        exams = ", ".join(exam.display or exam.code for exam in order.exams)
        console.print(
            f"Order {order.order_number}: {exams}; {len(order.observations)} observation(s)",
            highlight=False,
            markup=False,
        )


@queue_app.command("attach")
def queue_attach(
    message_id: Annotated[str, typer.Argument(help="The queued message's id.")],
    patient: Annotated[str, typer.Option(help="The patient's id.")],
    organization: OrganizationOption = None,
) -> None:
    """Attach a queued message to a patient (the result is sealed under the patient's key)."""
    from labvault.cli import _parse_uuid, console

    subject = _parse_uuid(message_id, "MESSAGE_ID")
    patient_id = _parse_uuid(patient, "--patient")
    with _unit_of_work(QUEUE_PRINCIPAL, organization, refusals=(QueueError,), audited=True) as unit:
        reports = unit.queue().attach(subject, patient_id)
    console.print(
        f"Message {subject} attached to patient {patient_id}: {len(reports)} report(s).",
        highlight=False,
    )


@queue_app.command("discard")
def queue_discard(
    message_id: Annotated[str, typer.Argument(help="The queued message's id.")],
    reason: Annotated[
        DiscardReason,
        typer.Option(help="Why it is discarded (recorded in the audit log).", case_sensitive=False),
    ],
    organization: OrganizationOption = None,
) -> None:
    """Discard a queued message for a reason: its data key is destroyed."""
    from labvault.cli import _parse_uuid, console

    subject = _parse_uuid(message_id, "MESSAGE_ID")
    with _unit_of_work(QUEUE_PRINCIPAL, organization, refusals=(QueueError,)) as unit:
        unit.queue().discard(subject, reason)
    console.print(f"Message {subject} discarded.", highlight=False)


# --- The listener -------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@mllp_app.command("serve")
def mllp_serve(
    organization: Annotated[str, typer.Option(help="The organization whose results arrive.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (2575 is MLLP's usual port).")] = 2575,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Listen on a non-loopback address. MLLP has no TLS: put stunnel or a VPN in "
            "front.",
        ),
    ] = False,
    message_timeout: Annotated[
        float, typer.Option(help="Seconds a sender has to finish a message once started.")
    ] = DEFAULT_MESSAGE_TIMEOUT,
    max_per_peer: Annotated[
        int, typer.Option(help="Connections one peer address may hold at once.")
    ] = DEFAULT_MAX_PER_PEER,
) -> None:
    """Receive ORU^R01 results over MLLP and store them (AA/AR/AE answers).

    MLLP carries results in clear: by default only loopback addresses are accepted; expose
    it through a TLS tunnel (stunnel) or a VPN, never directly. Stops gracefully on SIGTERM
    or SIGINT (messages in progress get their answer).
    """
    from labvault.cli import CliError, _audit_context, _runtime, console

    if message_timeout <= 0 or max_per_peer < 1:
        raise CliError("--message-timeout and --max-per-peer must be positive")
    if not _is_loopback(host) and not allow_remote:
        raise CliError(
            f"--host {host} is not a loopback address. MLLP has no TLS: put stunnel or a VPN "
            "in front and pass --allow-remote."
        )
    with _runtime() as runtime:
        with transaction(runtime.sessions) as session:
            tenant_id = use_organization(session, organization).id
        intake = StoredResultIntake(
            runtime.tenant_sessions(tenant_id),
            runtime.key_provider,
            tenant_id,
            context=_audit_context(),
        )

        async def serve() -> None:
            server = MllpServer(
                intake,
                host=host,
                port=port,
                message_timeout=message_timeout,
                max_per_peer=max_per_peer,
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            await server.start()
            console.print(f"MLLP listening on {host}:{server.port}", highlight=False)
            console.file.flush()  # a supervisor reading a pipe sees it now
            try:
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=2.0)
                    # Sequence the audit events of the messages stored meanwhile.
                    await asyncio.to_thread(runtime.audit_log.advance)
            finally:
                await server.stop()
                await asyncio.to_thread(runtime.audit_log.advance, force_checkpoint=True)

        asyncio.run(serve())
        counters = intake.counters
    console.print(
        f"MLLP stopped: {counters.attached} attached, {counters.queued} queued, "
        f"{counters.duplicates} duplicate(s), {counters.rejected} refused.",
        highlight=False,
    )
