"""The biologist's review in Debian's Chromium: "Résultats à valider", a report with its
values, ranges and flags in words, validation with a conclusion (published at once), then
a sensitive result: the phone banner, validation, the call recorded, published. Every page
passes the accessibility basics, is no-store and runs under the strict CSP."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect
from test_account_pages import LiveServer, Visit, _visit, browser
from test_break_glass_pages import _sign_in_as, served

from caller_world import CallerWorld
from labvault.results.content import Delivery
from labvault.results.models import ReportStatus, ResultReport
from results_world import TITLE, add_report, glucose, hemoglobin, hiv_positive

pytestmark = pytest.mark.browser

__all__ = ["browser", "served"]


@pytest.fixture
def visit(browser: Browser, served: tuple[LiveServer, CallerWorld]) -> Iterator[Visit]:
    opened = _visit(browser, served[0])
    yield opened
    opened.context.close()


def _status(world: CallerWorld, report_id: object) -> str:
    with world.world.sessions() as session:
        found = session.get(ResultReport, report_id)
        assert found is not None
        return found.status


def test_a_biologist_validates_a_report_and_a_sensitive_one_after_the_call(
    visit: Visit, served: tuple[LiveServer, CallerWorld]
) -> None:
    _, world = served
    w = world.world
    online = add_report(
        world.runtime, w.sessions, w.tenant, w.patients["today"], [hemoglobin(), glucose()]
    )
    sensitive = add_report(
        world.runtime,
        w.sessions,
        w.tenant,
        w.patients["tomorrow"],
        [hiv_positive()],
        title="Sérologie",
        delivery=Delivery.PHONE,
    )
    page = visit.page
    _sign_in_as(visit, world, "biologist")

    page.goto("/biologie/resultats")
    expect(page.get_by_role("heading", level=1)).to_have_text("Résultats à valider")
    expect(page.get_by_role("row")).to_have_count(3)  # the header and two reports
    visit.check()

    page.get_by_role("link", name=TITLE).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(TITLE)
    row = page.get_by_role("row").filter(has_text="Hémoglobine")
    expect(row).to_contain_text("10,4 g/dL")
    expect(row).to_contain_text("12.0-16.0")
    expect(row).to_contain_text("bas")
    visit.check()
    page.get_by_label("Conclusion").fill("Anémie modérée, contrôle dans un mois.")
    page.get_by_role("button", name="Valider le compte rendu").click()
    expect(page).to_have_url(re.compile(r"/biologie/resultats\?info=publie$"))
    expect(page.get_by_role("status")).to_contain_text("Compte rendu validé et publié")
    assert _status(world, online) == ReportStatus.RELEASED.value
    visit.check()

    page.get_by_role("link", name="Sérologie").click()
    expect(page.locator("#telephone")).to_contain_text("à communiquer par téléphone")
    visit.check()
    page.get_by_role("button", name="Valider le compte rendu").click()
    expect(page).to_have_url(re.compile(r"info=telephone$"))
    expect(page.get_by_role("row").filter(has_text="Sérologie")).to_contain_text(
        "À communiquer par téléphone"
    )
    assert _status(world, sensitive) == ReportStatus.VALIDATED.value
    visit.check()

    page.get_by_role("link", name="Sérologie").click()
    page.get_by_label("Compte rendu de l'appel").fill("Patient joint à 9 h, résultat expliqué.")
    page.get_by_role("button", name="Enregistrer l'appel et publier").click()
    expect(page).to_have_url(re.compile(r"info=appel$"))
    expect(page.locator(".notice")).to_contain_text("Appel enregistré")
    expect(page.get_by_text("Aucun compte rendu à valider.")).to_be_visible()
    assert _status(world, sensitive) == ReportStatus.RELEASED.value
    # Only random ids in the address bar, never a name or an exam.
    assert w.inputs["today"].birth_name not in page.url
    visit.check()
