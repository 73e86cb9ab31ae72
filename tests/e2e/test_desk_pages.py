"""The lab desk in Debian's Chromium: a receptionist opens the day's schedule, checks a
patient in, then records the identity card she was shown (a driving licence is refused
first); the planning shows the patient arrived with a validated identity."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect
from test_account_pages import LiveServer, Visit, _visit, browser
from test_break_glass_pages import _sign_in_as, served

from caller_world import CallerWorld

pytestmark = pytest.mark.browser

__all__ = ["browser", "served"]


@pytest.fixture
def visit(browser: Browser, served: tuple[LiveServer, CallerWorld]) -> Iterator[Visit]:
    opened = _visit(browser, served[0])
    yield opened
    opened.context.close()


def test_a_receptionist_checks_a_patient_in_and_checks_their_identity(
    visit: Visit, served: tuple[LiveServer, CallerWorld]
) -> None:
    _, world = served
    page = visit.page
    person = world.world.inputs["today"]
    who = f"{person.first_names} {person.birth_name}"
    _sign_in_as(visit, world, "receptionist")

    page.goto("/accueil/planning")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Planning du")
    row = page.locator("tr").filter(has_text=person.birth_name)
    expect(row).to_have_count(1)
    expect(row.locator(".desk-status")).to_have_text("réservé")
    expect(row.locator(".desk-identity")).to_have_text("Provisoire")
    visit.check()

    page.get_by_role("button", name=f"Arrivée de {who}").click()
    expect(page).to_have_url(
        re.compile(r"/accueil/planning\?site=[0-9a-f-]+&jour=[0-9-]+&info=arrivee$")
    )
    expect(page.get_by_role("status")).to_contain_text("Arrivée enregistrée.")
    row = page.locator("tr").filter(has_text=person.birth_name)
    expect(row.locator(".desk-status")).to_have_text("arrivé")
    visit.check()

    # A driving licence does not prove an identity for the INS: refused, nothing changed.
    page.get_by_label(f"Pièce d'identité vue pour {who}").select_option("permis_conduire")
    page.get_by_role("button", name=f"Vérifier l'identité de {who}").click()
    expect(page.get_by_role("alert")).to_contain_text("ne permet pas de valider l'identité")
    row = page.locator("tr").filter(has_text=person.birth_name)
    expect(row.locator(".desk-identity")).to_have_text("Provisoire")
    # The refusal is answered 422 (the form again, with its message): expected here.
    assert visit.problems == [
        "console error: Failed to load resource: the server responded with a status of 422 "
        "(Unprocessable Entity)"
    ]
    visit.problems.clear()
    visit.check()

    page.get_by_label(f"Pièce d'identité vue pour {who}").select_option("cni")
    page.get_by_role("button", name=f"Vérifier l'identité de {who}").click()
    expect(page).to_have_url(re.compile(r"info=identite$"))
    row = page.locator("tr").filter(has_text=person.birth_name)
    expect(row.locator(".desk-identity")).to_have_text("Validée")
    expect(row.locator(".desk-status")).to_have_text("arrivé")
    # Only random ids and dates in the address bar, never a name.
    assert person.birth_name not in page.url
    visit.check()


def test_a_receptionist_registers_a_walk_in_and_opens_the_rounds(
    visit: Visit, served: tuple[LiveServer, CallerWorld]
) -> None:
    _, world = served
    page = visit.page
    person = world.world.inputs["no_appointment"]
    _sign_in_as(visit, world, "receptionist")

    page.goto("/accueil/sans-rendez-vous")
    expect(page.get_by_role("heading", level=1)).to_have_text("Patient sans rendez-vous")
    visit.check()
    page.get_by_label("Nom de naissance").fill(person.birth_name)
    page.get_by_label("Prénom").fill(person.first_given_name)
    page.get_by_label("Date de naissance").fill(person.birth_date.isoformat())
    page.get_by_role("button", name="Enregistrer le passage").click()
    expect(page).to_have_url(re.compile(r"info=sans-rendez-vous$"))
    expect(page.get_by_role("status")).to_contain_text("Passage sans rendez-vous enregistré")
    row = page.locator("tr").filter(has_text=person.birth_name)
    expect(row.locator(".desk-status")).to_have_text("arrivé")
    expect(row).to_contain_text("Sans rendez-vous")
    visit.check()

    page.get_by_role("link", name="Tournées à domicile").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Prélèvements à domicile")
    visit.check()
