"""The required-binding checker: catches what fhir.resources lets through."""

from __future__ import annotations

from fhir.resources.R4B import get_fhir_model_class

from labvault.fhir.bindings import binding_problems


def test_a_bad_gender_passes_the_library_but_not_the_checker() -> None:
    patient = {"resourceType": "Patient", "gender": "femme", "identifier": [{"use": "main"}]}
    get_fhir_model_class("Patient").model_validate(patient)  # the library accepts it
    problems = binding_problems(patient)
    assert any("gender" in problem for problem in problems)
    assert any("identifier[0].use" in problem for problem in problems)


def test_nested_resources_of_a_bundle_are_checked() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "resource": {"resourceType": "Observation", "status": "done", "code": {}},
                "search": {"mode": "match"},
            },
            {
                "resource": {
                    "resourceType": "DocumentReference",
                    "status": "current",
                    "content": [{"attachment": {"contentType": "pdf"}}],
                }
            },
        ],
    }
    problems = binding_problems(bundle)
    assert len(problems) == 2
    assert "entry[0].resource.status" in problems[0]
    assert "contentType" in problems[1]


def test_valid_codes_and_unknown_types() -> None:
    assert binding_problems({"resourceType": "Appointment", "status": "booked"}) == []
    assert binding_problems(
        {"resourceType": "Appointment", "status": "booked", "participant": [{"status": "ok"}]}
    )
    assert binding_problems({"resourceType": "Invoice"}) == [
        "Invoice: no binding table for resourceType 'Invoice'"
    ]
