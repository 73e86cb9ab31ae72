from test_desk_pages import visit, served, browser, _sign_in_as  # noqa
def test_debug(visit, served):
    _, world = served
    page = visit.page
    person = world.world.inputs["today"]
    who = f"{person.first_names} {person.birth_name}"
    _sign_in_as(visit, world, "receptionist")
    page.goto("/accueil/planning")
    page.get_by_label(f"Pièce d'identité vue pour {who}").select_option("permis_conduire")
    page.get_by_role("button", name=f"Vérifier l'identité de {who}").click()
    page.wait_for_load_state()
    print(page.evaluate("document.documentElement.scrollWidth"), page.evaluate("""() => [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > window.innerWidth + 1 && !e.closest('.table-scroll')).slice(0, 15).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right) + ' ' + (e.id||''))"""), page.evaluate("""() => [...document.querySelectorAll('.visually-hidden')].map(e => Math.round(e.getBoundingClientRect().right)).join(',')"""))
