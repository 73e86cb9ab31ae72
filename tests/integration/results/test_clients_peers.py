"""MLLP sender authentication (review finding 3): a message speaks for the sending system
named by MSH-3/MSH-4 only when it comes from a peer in that system's allow-list. Anything
else is the unknown-sender AR (204), audited as denied, nothing written; in-process feeds
name their peer ``local``."""

from __future__ import annotations

import pytest
from results_intake_world import IntakeWorld, build_intake_world, oru
from sqlalchemy import func, select

from labvault.core.audit.models import AuditEvent
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.results.clients import (
    DEFAULT_PEERS,
    LOCAL_PEER,
    ClientError,
    ServiceClientRegistry,
    parse_peers,
)
from labvault.results.hl7 import Hl7ErrorCode, parse_oru
from labvault.results.intake import StoredResultIntake
from labvault.results.mllp import IntakeOutcome, IntakeStatus
from labvault.results.models import ResultMessage, ServiceClient


@pytest.fixture
def world(runtime: Runtime) -> IntakeWorld:
    return build_intake_world(runtime)


def registry(world: IntakeWorld, session: object) -> ServiceClientRegistry:
    keyring = world.keyring(session, "test:clients")
    return ServiceClientRegistry(session, world.tenant, keyring.audit)  # type: ignore[arg-type]


def send(world: IntakeWorld, peer: str, control_id: str = "MSG0001") -> IntakeOutcome:
    intake = StoredResultIntake(world.runtime.sessions, world.runtime.key_provider, world.tenant)
    return intake.receive(parse_oru(oru(world.people["ins"], control_id=control_id)), peer=peer)


def stored(world: IntakeWorld) -> int:
    with world.runtime.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(ResultMessage)) or 0)


def denials(world: IntakeWorld) -> list[tuple[str | None, object]]:
    with world.runtime.sessions() as session:
        return [
            (purpose, target)
            for purpose, target in session.execute(
                select(AuditEvent.purpose, AuditEvent.target_id).where(
                    AuditEvent.action == "result:message:reject", AuditEvent.outcome == "denied"
                )
            )
        ]


def test_peers_are_normalised_and_bad_ones_refused() -> None:
    assert parse_peers([" 10.0.0.5 ", "10.0.1.0/24", "10.0.0.5", "", "fd00::/8"]) == (
        "10.0.0.5/32",
        "10.0.1.0/24",
        "fd00::/8",
    )
    for bad in ("10.0.0.300", "10.0.1.5/24", "lis.example", "local", "10.0.0.0/33"):
        with pytest.raises(ClientError, match="--peer"):
            parse_peers([bad])
    with pytest.raises(ClientError, match="at most"):
        parse_peers([f"10.0.{n // 250}.{n % 250}" for n in range(33)])


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_new_sender_gets_loopback_only(world: IntakeWorld, backend: str) -> None:
    with world.runtime.sessions() as session:
        client = session.get(ServiceClient, world.client)
        assert client is not None
        assert client.hl7_peers == " ".join(DEFAULT_PEERS)
    assert send(world, "127.0.0.1:40000").status is IntakeStatus.ACCEPTED
    assert send(world, "[::1]:40001", "MSG0002").status is IntakeStatus.ACCEPTED
    assert send(world, "[::ffff:127.0.0.1]:40002", "MSG0003").status is IntakeStatus.ACCEPTED
    assert stored(world) == 3


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_message_from_another_peer_is_an_unknown_sender(world: IntakeWorld, backend: str) -> None:
    """Same AR as an unknown MSH-3/MSH-4 (no oracle on registered pairs), nothing written,
    audited as denied against the client it claimed."""
    unknown = send_unknown(world)
    assert unknown.error is not None
    peers = ["10.0.0.9:2575", "127.0.0.2:1", "[fe80::1]:2575", "unknown", "demo", "10.0.0.5"]
    for number, peer in enumerate(peers):
        outcome = send(world, peer, f"MSG{number}")
        assert outcome.status is IntakeStatus.REJECTED
        assert outcome.error is not None
        assert outcome.error.code is Hl7ErrorCode.UNKNOWN_KEY
        assert str(outcome.error) == str(unknown.error)
    assert stored(world) == 0
    assert denials(world).count(("peer-not-allowed", world.client)) == len(peers)


def send_unknown(world: IntakeWorld) -> IntakeOutcome:
    intake = StoredResultIntake(world.runtime.sessions, world.runtime.key_provider, world.tenant)
    text = oru(world.people["ins"], sending=("NOBODY", "NOWHERE"))
    return intake.receive(parse_oru(text), peer="127.0.0.1:1")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_set_peers_replaces_the_allow_list_and_is_audited(world: IntakeWorld, backend: str) -> None:
    with transaction(world.runtime.sessions) as session:
        registry(world, session).set_peers("SIL Alpha", ["10.0.0.5", "10.0.1.0/24"])
    assert send(world, "10.0.1.77:3000").status is IntakeStatus.ACCEPTED
    assert send(world, "10.0.0.5:3000", "MSG0002").status is IntakeStatus.ACCEPTED
    assert send(world, "127.0.0.1:3000", "MSG0003").status is IntakeStatus.REJECTED
    assert send(world, LOCAL_PEER, "MSG0004").status is IntakeStatus.ACCEPTED
    assert stored(world) == 3
    with world.runtime.sessions() as session:
        events = session.execute(
            select(AuditEvent.target_id, AuditEvent.purpose).where(
                AuditEvent.action == "service:client:peers"
            )
        ).all()
    assert events == [(world.client, None)]
    with (
        pytest.raises(ClientError, match="at least one"),
        transaction(world.runtime.sessions) as session,
    ):
        registry(world, session).set_peers("SIL Alpha", [])


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_sender_without_an_allow_list_is_refused_from_every_network_peer(
    world: IntakeWorld, backend: str
) -> None:
    """A client registered before the allow-list existed (column empty): fail closed."""
    with transaction(world.runtime.sessions) as session:
        client = session.get(ServiceClient, world.client)
        assert client is not None
        client.hl7_peers = None
    assert send(world, "127.0.0.1:1").status is IntakeStatus.REJECTED
    assert stored(world) == 0


@pytest.mark.parametrize("backend", ["sqlite"])
def test_peers_only_for_an_mllp_sender(world: IntakeWorld, backend: str) -> None:
    with pytest.raises(ClientError, match="--peer"), transaction(world.runtime.sessions) as session:
        registry(world, session).add("Portail", kind="fhir", peers=["10.0.0.5"])
    with transaction(world.runtime.sessions) as session:
        registry(world, session).add("Portail", kind="fhir")
    with (
        pytest.raises(ClientError, match="not an MLLP sender"),
        transaction(world.runtime.sessions) as session,
    ):
        registry(world, session).set_peers("Portail", ["10.0.0.5"])
