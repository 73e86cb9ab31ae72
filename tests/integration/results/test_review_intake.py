"""From the intake to the release: an ORU^R01 stored by the real intake
(``labvault.results.intake``) is in the biologist's queue through the order at the site,
reads with its values, and is released by a validation; a sensitive one (HIV, listed in
the tenant's sensitive exams) waits for the phone call; a correction that arrives after the
biologist opened a report refuses the validation of the version seen."""

from __future__ import annotations

import uuid

import pytest
from results_intake_world import (
    IntakeWorld,
    add_biologist,
    build_intake_world,
    oru,
    receive,
    review,
)

from labvault.core.runtime import Runtime
from labvault.results.models import ReportStatus
from labvault.results.review import VersionChangedError


@pytest.fixture
def world(runtime: Runtime) -> IntakeWorld:
    return build_intake_world(runtime)


@pytest.fixture
def biologist(world: IntakeWorld) -> uuid.UUID:
    return add_biologist(world)


def test_a_received_result_is_reviewed_and_released(
    world: IntakeWorld, biologist: uuid.UUID
) -> None:
    receive(world, oru(world.people["ins"]))
    (item,) = review(world, biologist, lambda s: s.queue())
    assert item.patient_id == world.patients["ins"]
    assert not item.phone
    view = review(world, biologist, lambda s: s.report(item.report_id))
    values = {o.code.code: (o.value, o.flag_words) for o in view.observations}
    assert values["2345-7"] == ("5,42", ("élevé",))
    assert values["718-7"][0] == "13,7"
    outcome = review(world, biologist, lambda s: s.validate(item.report_id, view.version))
    assert outcome.released
    assert outcome.delivered
    assert review(world, biologist, lambda s: s.queue()) == []


def test_a_sensitive_result_from_the_intake_waits_for_the_call(
    world: IntakeWorld, biologist: uuid.UUID
) -> None:
    receive(world, oru(world.people["ins"], hiv=True))
    (item,) = review(world, biologist, lambda s: s.queue())
    assert item.phone
    outcome = review(world, biologist, lambda s: s.validate(item.report_id, 1))
    assert outcome.status is ReportStatus.VALIDATED
    assert not outcome.released


def test_a_correction_after_the_biologist_opened_the_report_refuses_its_validation(
    world: IntakeWorld, biologist: uuid.UUID
) -> None:
    receive(world, oru(world.people["ins"], status="P"))
    (item,) = review(world, biologist, lambda s: s.queue())
    seen = review(world, biologist, lambda s: s.report(item.report_id)).version
    receive(world, oru(world.people["ins"], control_id="MSG0002", status="C", glucose="6.10"))
    with pytest.raises(VersionChangedError):
        review(world, biologist, lambda s: s.validate(item.report_id, seen))
    view = review(world, biologist, lambda s: s.report(item.report_id))
    assert view.version == seen + 1
    assert {o.code.code: o.value for o in view.observations}["2345-7"] == "6,10"
