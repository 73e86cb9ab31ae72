"""Fuzzing the stored intake (SQLite): arbitrary bytes, and valid messages with fields
replaced by arbitrary text, go through what the MLLP listener does (decode, parse, store).
Nothing raises but the refusals; a refused message writes nothing but its audit event; an
accepted one is attached or queued, never half-written."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from results_intake_world import IntakeWorld, build_intake_world, oru
from sqlalchemy import func, select

from labvault.core.runtime import Runtime
from labvault.results.hl7 import Hl7Error, decode_payload, parse_oru
from labvault.results.intake import StoredResultIntake
from labvault.results.mllp import IntakeStatus
from labvault.results.models import ResultMessage, ResultObservation, ResultOrder, ResultReport

FUZZ = settings(
    derandomize=True,
    deadline=None,
    max_examples=120,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
_TABLES = (ResultMessage, ResultOrder, ResultReport, ResultObservation)


@pytest.fixture
def world(runtime: Runtime) -> IntakeWorld:
    return build_intake_world(runtime)


def counts(world: IntakeWorld) -> tuple[int, ...]:
    with world.runtime.sessions() as session:
        return tuple(
            int(session.scalar(select(func.count()).select_from(t)) or 0)  # type: ignore[call-overload]
            for t in _TABLES
        )


def deliver(intake: StoredResultIntake, payload: bytes) -> IntakeStatus | None:
    """What the listener does with one MLLP payload; ``None``: refused by the parser."""
    try:
        message = parse_oru(decode_payload(payload))
    except Hl7Error:
        return None
    return intake.receive(message, peer="local").status


@pytest.mark.parametrize("backend", ["sqlite"])
def test_arbitrary_bytes_never_crash_and_never_write(world: IntakeWorld, backend: str) -> None:
    intake = StoredResultIntake(world.runtime.sessions, world.runtime.key_provider, world.tenant)
    valid = oru(world.people["ins"]).encode()

    @FUZZ
    @given(
        st.one_of(
            st.binary(max_size=400),
            st.binary(max_size=60).map(lambda junk: valid[:40] + junk + valid[40:]),
            st.binary(max_size=60).map(lambda junk: b"MSH|^~\\&|" + junk),
        )
    )
    def run(payload: bytes) -> None:
        before = counts(world)
        status = deliver(intake, payload)
        if status in (None, IntakeStatus.REJECTED, IntakeStatus.DUPLICATE):
            assert counts(world) == before

    run()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_fuzzed_fields_are_stored_whole_or_not_at_all(world: IntakeWorld, backend: str) -> None:
    intake = StoredResultIntake(world.runtime.sessions, world.runtime.key_provider, world.tenant)
    text = oru(world.people["ins"], hiv=True)
    segments = text.split("\r")
    fields = st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
        max_size=40,
    )

    @FUZZ
    @given(
        st.integers(min_value=1, max_value=len(segments) - 2),
        st.integers(min_value=1, max_value=25),
        fields,
        st.integers(min_value=0, max_value=10**9),
    )
    def run(segment: int, field: int, value: str, control: int) -> None:
        parts = segments[segment].split("|")
        while len(parts) <= field:
            parts.append("")
        parts[field] = value
        mutated = list(segments)
        mutated[segment] = "|".join(parts)
        mutated[0] = mutated[0].replace("MSG0001", f"F{control}")
        before = counts(world)
        status = deliver(intake, "\r".join(mutated).encode())
        after = counts(world)
        if status in (None, IntakeStatus.REJECTED, IntakeStatus.DUPLICATE):
            assert after == before
        else:
            assert after[0] == before[0] + 1  # one message row, attached or queued

    run()
