"""The patient's access history speaks French: every purpose it can show has a label."""

from __future__ import annotations


def test_every_purpose_a_patient_can_see_has_a_french_label() -> None:
    from labvault.patients import routes
    from labvault.patients.history import PURPOSE_LABELS
    from labvault.security.models import BreakGlassReason

    shown = {
        routes.READ_PURPOSE,
        routes.NIR_PURPOSE,
        routes.SEARCH_PURPOSE,
        routes.CONTACT_PURPOSE,
        *(f"break-glass:{reason.value}" for reason in BreakGlassReason),
    }
    assert shown <= set(PURPOSE_LABELS)
