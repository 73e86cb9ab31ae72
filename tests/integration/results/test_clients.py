"""The registry of sending systems: MSH-3/MSH-4 unique per tenant, clear refusals with
nothing written, a client secret shown once and stored as an argon2 hash, disabling
revokes tokens, every change audited (ids only); and the CLI."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from results_intake_world import LIS_APPLICATION, LIS_FACILITY, IntakeWorld, build_intake_world
from sqlalchemy import func, select
from typer.testing import CliRunner

from labvault.cli import CliError, app
from labvault.core.audit.models import AuditEvent
from labvault.core.config import Settings
from labvault.core.crypto.passwords import PasswordHasher
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction, utcnow
from labvault.core.runtime import Runtime
from labvault.results.clients import ClientError, ServiceClientRegistry
from labvault.results.models import ServiceClient, ServiceClientSite, ServiceToken


@pytest.fixture
def world(runtime: Runtime) -> IntakeWorld:
    return build_intake_world(runtime)


def registry(world: IntakeWorld, session: object) -> ServiceClientRegistry:
    keyring = world.keyring(session, "test:clients")
    return ServiceClientRegistry(session, world.tenant, keyring.audit)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    ("changes", "option"),
    [
        ({"hl7_application": LIS_APPLICATION, "hl7_facility": LIS_FACILITY}, "--hl7-application"),
        ({"hl7_application": "ONLY-ONE"}, "--hl7-application"),
        ({"sites": ["Nowhere"]}, "--site"),
        ({"scopes": ["everything"]}, "--scope"),
        ({"kind": "robot"}, "--kind"),
        ({"name": "SIL Alpha"}, "NAME"),
    ],
)
def test_refusals_are_clear_and_write_nothing(
    world: IntakeWorld, changes: dict[str, object], option: str, backend: str
) -> None:
    arguments: dict[str, object] = {"name": "Autre SIL", "kind": "lis", **changes}
    name = str(arguments.pop("name"))
    with pytest.raises(ClientError, match=option), transaction(world.runtime.sessions) as session:
        registry(world, session).add(name, **arguments)  # type: ignore[arg-type]
    with world.runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(ServiceClient)) == 1


def test_a_secret_is_shown_once_and_stored_as_a_hash(world: IntakeWorld) -> None:
    with transaction(world.runtime.sessions) as session:
        client, issued = registry(world, session).add(
            "Portail FHIR", kind="fhir", scopes=["system/Observation.read"], with_secret=True
        )
        client_id = client.id
    assert issued is not None
    assert "Secret" in repr(issued.secret)
    assert issued.secret.reveal() not in repr(issued)
    with world.runtime.sessions() as session:
        stored = session.get(ServiceClient, client_id)
        assert stored is not None
        assert stored.secret_hash is not None
        assert issued.secret.reveal() not in stored.secret_hash
        assert PasswordHasher().verify(stored.secret_hash, issued.secret)
        assert not PasswordHasher().verify(stored.secret_hash, Secret("wrong"))
        assert stored.scopes == "system/Observation.read"
        events = session.execute(
            select(AuditEvent.action, AuditEvent.target_id).where(
                AuditEvent.action.like("service:client:%")
            )
        ).all()
    assert ("service:client:create", client_id) in events
    assert ("service:client:secret", client_id) in events


def test_disabling_revokes_tokens_and_is_audited(world: IntakeWorld) -> None:
    with transaction(world.runtime.sessions) as session:
        session.add(
            ServiceToken(
                tenant_id=world.tenant,
                client_id=world.client,
                token_digest=hashlib.sha256(b"token").digest(),
                scopes="system/Observation.write",
                expires_at=utcnow() + dt.timedelta(minutes=5),
            )
        )
    with transaction(world.runtime.sessions) as session:
        registry(world, session).disable("SIL Alpha", reason="decommissioned")
    with transaction(world.runtime.sessions) as session:
        registry(world, session).disable(str(world.client))  # again: nothing more
    with world.runtime.sessions() as session:
        client = session.get(ServiceClient, world.client)
        assert client is not None
        assert client.disabled_at is not None
        assert client.disabled_reason == "decommissioned"
        assert session.scalar(select(ServiceToken.revoked_at)) is not None
        disabled = session.scalars(
            select(AuditEvent.purpose).where(AuditEvent.action == "service:client:disable")
        ).all()
    assert disabled == ["decommissioned"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_cli_adds_lists_and_disables(
    world: IntakeWorld, cli_env: Settings, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    added = runner.invoke(
        app,
        [
            "results", "clients", "add", "SIL Nord", "--kind", "lis",
            "--hl7-application", "SIL-NORD", "--hl7-facility", "NORD",
            "--site", "Alpha Centre", "--with-secret", "--peer", "10.0.0.5",
            "--peer", "10.0.1.0/24", "--organization", "Labo Alpha",
        ],
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    secret = added.output.split("store it now): ", 1)[1].split()[0]
    with world.runtime.sessions() as session:
        client = session.scalars(
            select(ServiceClient).where(ServiceClient.name == "SIL Nord")
        ).one()
        assert client.secret_hash is not None
        assert PasswordHasher().verify(client.secret_hash, Secret(secret))
        assert client.default_site_id == world.site
        assert (
            session.scalar(
                select(func.count())
                .select_from(ServiceClientSite)
                .where(ServiceClientSite.client_id == client.id)
            )
            == 1
        )
    listed = runner.invoke(app, ["results", "clients", "list", "--organization", "Labo Alpha"])
    assert listed.exit_code == 0, listed.output
    assert "SIL-NORD/NORD" in listed.output
    assert "10.0.0.5/32 10.0.1.0/24" in listed.output
    assert secret not in listed.output
    changed = runner.invoke(
        app,
        [
            "results", "clients", "set-peers", "SIL Nord", "--peer", "192.168.4.2",
            "--organization", "Labo Alpha",
        ],
    )  # fmt: skip
    assert changed.exit_code == 0, changed.output
    assert "192.168.4.2/32" in changed.output
    bad_peer = runner.invoke(
        app,
        [
            "results", "clients", "set-peers", "SIL Nord", "--peer", "lis.example",
            "--organization", "Labo Alpha",
        ],
    )  # fmt: skip
    assert isinstance(bad_peer.exception, CliError)
    assert "--peer" in str(bad_peer.exception)
    with world.runtime.sessions() as session:
        peers = session.scalar(
            select(ServiceClient.hl7_peers).where(ServiceClient.name == "SIL Nord")
        )
    assert peers == "192.168.4.2/32"
    taken = runner.invoke(
        app,
        [
            "results", "clients", "add", "SIL Bis", "--hl7-application", "SIL-NORD",
            "--hl7-facility", "NORD", "--organization", "Labo Alpha",
        ],
    )  # fmt: skip
    assert isinstance(taken.exception, CliError)
    disabled = runner.invoke(
        app, ["results", "clients", "disable", "SIL Nord", "--organization", "Labo Alpha"]
    )
    assert disabled.exit_code == 0, disabled.output
    listed = runner.invoke(app, ["results", "clients", "list", "--organization", "Labo Alpha"])
    assert "disabled" in listed.output
