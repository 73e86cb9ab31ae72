"""Staff administration by an organization admin: the API under ``/api/v1/admin`` and the
French pages under ``/administration/personnel``, on both database backends, against a real
key file and file mailer. The admin signs in as a real invitee does (invitation, password,
passkey from a software authenticator); other principals get sessions opened directly."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from test_staff_invitations import (
    CLIENT,
    EMAIL,
    FIRST_NAME,
    LAST_NAME,
    PASSWORD,
    PUBLIC_URL,
    SESSION_COOKIE,
    SYSTEM,
    Lab,
    accept,
    audit_events,
    body,
    client,
    csrf,
    enrol_passkey,
    invitation_token,
    lab,
    messages,
)
from test_step_up import age_proofs

from helpers import leaked, pg_dump, sqlite_files
from labvault.accounts.administration import StaffStatus
from labvault.accounts.models import Account, AccountKind, AccountStatus, LockReason
from labvault.core.crypto.secret import Secret
from labvault.core.runtime import Runtime
from labvault.staff.models import StaffMember, StaffRole
from passkey_authenticator import SoftAuthenticator

__all__ = ["client", "lab"]  # fixtures, shared as they are

ADMIN = "directrice@example.org"
ADMIN_FIRST, ADMIN_LAST = "Solène", "Quatremère"
NEW = {
    "email": "nouvel.agent@example.org",
    "first_name": "Théophile",
    "last_name": "Vasseur-Kergoat",
    "role": "receptionist",
}


# --------------------------------------------------------------------------- helpers


def sign_in_admin(client: TestClient, lab: Lab) -> str:
    """An organization admin invited, activated with a passkey and signed in; its CSRF token."""
    with lab.unit() as service:
        service.invite_staff(
            SYSTEM, ADMIN, ADMIN_FIRST, ADMIN_LAST, StaffRole.ORGANIZATION_ADMIN, [lab.site_id]
        )
    step = accept(client, invitation_token(lab.runtime, ADMIN))
    assert step.status_code == 200, step.text
    assert step.json()["enrol"] == ["webauthn"]
    enrol_passkey(client, step.json()["csrf_token"])
    me = client.get("/api/v1/auth/me")
    assert me.status_code == 200
    return str(me.json()["csrf_token"])


def open_session(client: TestClient, lab: Lab, account_id: uuid.UUID, factor: str = "totp") -> str:
    """A fully signed-in session for ``account_id``, put in the client's cookie; its CSRF."""
    with lab.unit() as service:
        account = service.account(account_id)
        assert account is not None
        token, _ = service.sessions.create(
            tenant_id=lab.tenant_id,
            account_id=account_id,
            policy=service._policy(account),
            client_hash=None,
            second_factor=factor,
        )
        csrf_token = service.sessions.csrf_token(token.reveal())
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, token.reveal())
    return csrf_token


def patient(lab: Lab) -> uuid.UUID:
    with lab.unit() as service:
        return service.provision(
            "patiente@example.org",
            Secret(PASSWORD),
            kind=AccountKind.PATIENT,
            security_phrase=None,
            by=SYSTEM,
        ).id


def counts(runtime: Runtime) -> tuple[int, int, int]:
    with runtime.sessions() as session:
        return (
            session.scalar(select(func.count()).select_from(StaffMember)) or 0,
            session.scalar(select(func.count()).select_from(Account)) or 0,
            len(messages(runtime)),
        )


def _csrf_field(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None, html
    return match.group(1)


ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/v1/admin/staff", None),
    ("GET", "/api/v1/admin/sites", None),
    ("POST", "/api/v1/admin/staff", {**NEW, "site_ids": []}),
    ("POST", "/api/v1/admin/staff/{account}/invitation", None),
    ("POST", "/api/v1/admin/staff/{account}/unlock", None),
    ("GET", "/administration/personnel", None),
    ("GET", "/administration/personnel/invitation", None),
    ("POST", "/administration/personnel/invitation", {**NEW, "csrf_token": "{csrf}"}),
    ("POST", "/administration/personnel/renouvellement", {"account_id": "{account}"}),
    ("POST", "/administration/personnel/deverrouillage", {"account_id": "{account}"}),
]


def call(
    client: TestClient,
    method: str,
    path: str,
    data: dict[str, Any] | None,
    *,
    account: str,
    token: str,
) -> Any:
    path = path.format(account=account)
    headers = csrf(token)
    if method == "GET":
        return client.get(path, follow_redirects=False)
    if path.startswith("/api/"):
        return client.post(path, json=data, headers=headers, follow_redirects=False)
    form = {k: str(v).format(account=account, csrf=token) for k, v in (data or {}).items()}
    form.setdefault("csrf_token", token)
    return client.post(path, data=form, follow_redirects=False)


# --------------------------------------------------------------------------- who may


def test_every_admin_route_is_a_404_for_anyone_but_an_organization_admin(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    locked = lab.active("verrou@example.org", StaffRole.BIOLOGIST)
    with lab.unit() as service:
        target = service.account(locked.id)
        assert target is not None
        service.lock(target, reason_principal=SYSTEM)
    pending = lab.invite("attente@example.org", StaffRole.SAMPLER)
    assert pending
    invited_id = str(lab.account("attente@example.org").id)
    receptionist = lab.active("accueil@example.org", StaffRole.RECEPTIONIST)
    officer = lab.active("rssi@example.org", StaffRole.SECURITY_OFFICER)
    patient_id = patient(lab)
    unknown_api = client.get("/api/v1/admin/nothing-here")
    unknown_page = client.get("/administration/nulle-part")
    assert unknown_api.status_code == unknown_page.status_code == 404
    before = counts(runtime)

    callers: dict[str, uuid.UUID | None] = {
        "anonymous": None,
        "receptionist": receptionist.id,
        "security officer": officer.id,
        "patient": patient_id,
    }
    for who, account_id in callers.items():
        client.cookies.clear()
        token = ""
        if account_id is not None:
            factor = "email" if who == "patient" else "totp"
            token = open_session(client, lab, account_id, factor)
        for method, path, data in ROUTES:
            for account in (str(locked.id), invited_id):
                answer = call(client, method, path, data, account=account, token=token)
                assert answer.status_code == 404, (who, method, path, answer.status_code)
                if path.startswith("/api/"):
                    assert answer.json() == unknown_api.json(), (who, path)
                else:
                    assert answer.text == unknown_page.text, (who, path)
    assert counts(runtime) == before, "nothing invited, nothing sent"
    assert lab.account("verrou@example.org").status == AccountStatus.LOCKED.value
    denied = audit_events(runtime, "staff:administration:denied")
    assert {e.actor_role for e in denied} == {"receptionist", "security_officer", None}
    assert all(e.outcome == "denied" for e in denied)

    # A pending admin login (password only) is nobody either.
    client.cookies.clear()
    admin_csrf = sign_in_admin(client, lab)
    assert client.get("/api/v1/admin/staff").status_code == 200
    client.post("/api/v1/auth/logout", headers=csrf(admin_csrf))
    step = client.post("/api/v1/auth/staff/login", json={"email": ADMIN, "password": PASSWORD})
    assert step.status_code == 200
    assert step.json()["second_factor"] == ["webauthn"]
    assert client.get("/api/v1/admin/staff").status_code == 404
    assert client.get("/administration/personnel").status_code == 404


def test_an_admin_without_a_passkey_is_sent_to_add_one(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    """An admin enrolled before passkeys were required (an authenticator app only)."""
    admin = lab.active(ADMIN, StaffRole.ORGANIZATION_ADMIN)
    open_session(client, lab, admin.id)
    page = client.get("/administration/personnel", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/compte/securite"
    api = client.get("/api/v1/admin/staff")
    assert api.status_code == 403
    assert api.json()["type"].endswith("/passkey-required")


# --------------------------------------------------------------------------- the API


def test_the_admin_lists_invites_renews_and_unlocks_through_the_api(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    locked = lab.active("verrou@example.org", StaffRole.BIOLOGIST)
    with lab.unit() as service:
        target = service.account(locked.id)
        assert target is not None
        service.lock(target, reason_principal=SYSTEM)
    token = sign_in_admin(client, lab)

    sites = client.get("/api/v1/admin/sites")
    assert sites.json() == [{"id": str(lab.site_id), "name": "Centre"}]
    invited = client.post(
        "/api/v1/admin/staff", json={**NEW, "site_ids": [str(lab.site_id)]}, headers=csrf(token)
    )
    assert invited.status_code == 201, invited.text
    new_account = invited.json()["account_id"]
    message = messages(runtime)[-1]
    assert message["To"] == NEW["email"]
    assert body(message).startswith(f"Bonjour {NEW['first_name']},")
    (created,) = [
        e for e in audit_events(runtime, "staff:invitation:create") if e.actor_role is not None
    ]
    assert created.actor_role == "organization_admin"

    listing = client.get("/api/v1/admin/staff")
    assert listing.status_code == 200
    by_name = {entry["last_name"]: entry for entry in listing.json()}
    assert by_name[NEW["last_name"]] | {"staff_id": None, "invitation_expires_at": None} == {
        "staff_id": None,
        "account_id": new_account,
        "first_name": NEW["first_name"],
        "last_name": NEW["last_name"],
        "role": "receptionist",
        "site_ids": [str(lab.site_id)],
        "status": "invited",
        "lock_reason": None,
        "locked_at": None,
        "invitation_expires_at": None,
    }
    assert by_name[LAST_NAME]["status"] == StaffStatus.LOCKED.value
    assert by_name[LAST_NAME]["lock_reason"] == LockReason.TOO_MANY_FAILURES.value
    assert by_name[ADMIN_LAST]["status"] == "active"
    # Every name read went through the decrypt choke point, one event per member.
    reads = audit_events(runtime, "staff:record:read")
    assert {e.target_id for e in reads} >= {uuid.UUID(e["staff_id"]) for e in listing.json()}
    assert {e.purpose for e in reads} == {"staff-administration"}

    first_link = invitation_token(runtime, NEW["email"])
    renewed = client.post(f"/api/v1/admin/staff/{new_account}/invitation", headers=csrf(token))
    assert renewed.status_code == 200, renewed.text
    assert invitation_token(runtime, NEW["email"]) != first_link
    assert audit_events(runtime, "staff:invitation:renew")
    # Only a pending invitation is renewed: 404 for an active account or an unknown one.
    for other in (str(locked.id), str(uuid.uuid4())):
        assert (
            client.post(f"/api/v1/admin/staff/{other}/invitation", headers=csrf(token)).status_code
            == 404
        )

    unlock = f"/api/v1/admin/staff/{locked.id}/unlock"
    assert client.post(unlock).status_code == 403, "CSRF applies"
    assert lab.account("verrou@example.org").status == AccountStatus.LOCKED.value
    done = client.post(unlock, headers=csrf(token))
    assert done.status_code == 200, done.text
    assert done.json() == {"unlocked": True}
    account = lab.account("verrou@example.org")
    assert (account.status, account.lock_reason, account.locked_at) == ("active", None, None)
    assert "déverrouillé" in body(messages(runtime)[-1])
    assert client.post(unlock, headers=csrf(token)).json() == {"unlocked": False}
    patient_id = patient(lab)
    not_staff = client.post(f"/api/v1/admin/staff/{patient_id}/unlock", headers=csrf(token))
    assert not_staff.status_code == 404, "a patient account is not administered here"
    (unlocked,) = audit_events(runtime, "account:status:unlock")
    assert unlocked.actor_role == "organization_admin"

    # The new invitee may log in once the invitation is accepted: the unlocked one too.
    with lab.unit() as service:
        login = service.staff_login(
            "verrou@example.org", Secret(PASSWORD), client_id=CLIENT, client_hash=None
        )
    assert login.token


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"email": "pas une adresse"}, "email", "Adresse e-mail invalide."),
        ({"first_name": "   "}, "first_name", "Prénom"),
        ({"last_name": "Vasseur\x00"}, "last_name", "Nom"),
        ({"role": "chief"}, "role", "Rôle inconnu."),
        ({"site_ids": [str(uuid.uuid4())]}, "sites", "site"),
        ({"site_ids": ["pas-un-id"]}, "sites", "site"),
        ({"email": EMAIL}, "email", "déjà"),
    ],
)
def test_a_bad_invitation_is_refused_with_a_clear_error_and_changes_nothing(
    client: TestClient,
    lab: Lab,
    runtime: Runtime,
    change: dict[str, Any],
    field: str,
    message: str,
) -> None:
    lab.invite()  # EMAIL: already invited
    token = sign_in_admin(client, lab)
    before = counts(runtime)
    answer = client.post(
        "/api/v1/admin/staff", json={**NEW, "site_ids": [], **change}, headers=csrf(token)
    )
    assert answer.status_code == 422, answer.text
    assert message in answer.json()["detail"]
    assert counts(runtime) == before

    page = client.get("/administration/personnel/invitation")
    form = {**NEW, "site_ids": [], **change, "csrf_token": _csrf_field(page.text)}
    shown = client.post("/administration/personnel/invitation", data=form)
    assert shown.status_code == 422, shown.text
    assert f'id="{field}-erreur"' in shown.text, field
    assert "Le formulaire contient une erreur" in shown.text
    assert counts(runtime) == before


# --------------------------------------------------------------------------- the pages


def test_the_admin_pages_list_invite_renew_and_unlock(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    locked = lab.active("verrou@example.org", StaffRole.BIOLOGIST)
    guarded = lab.active("garde@example.org", StaffRole.RECEPTIONIST)
    with lab.unit() as service:
        target = service.account(locked.id)
        assert target is not None
        service.lock(target, reason_principal=SYSTEM)
        suspect = service.account(guarded.id)
        assert suspect is not None
        service.lock_for_security(suspect, SYSTEM)
    sign_in_admin(client, lab)

    page = client.get("/administration/personnel")
    assert page.status_code == 200
    assert "Personnel du laboratoire" in page.text
    assert f"{FIRST_NAME} {LAST_NAME}" in page.text
    assert "Verrouillé (Motif : trop de tentatives de connexion" in page.text
    assert "Verrouillé (Motif : décision de sécurité" in page.text
    assert page.text.count("Déverrouiller le compte") == 1, "not the security lock"
    # A security lock is two security officers' to lift, never the admin's alone.
    refused = client.post(
        "/administration/personnel/deverrouillage",
        data={"account_id": str(guarded.id), "csrf_token": _csrf_field(page.text)},
        follow_redirects=False,
    )
    assert refused.status_code == 409
    assert "deux responsables de la sécurité" in refused.text
    assert lab.account("garde@example.org").lock_reason == "security-decision"
    assert "Administration du laboratoire" in page.text
    assert page.headers["cache-control"] == "no-store" or "no-store" in page.headers.get(
        "cache-control", ""
    )

    # A wrong CSRF token: nothing done.
    refused = client.post(
        "/administration/personnel/deverrouillage",
        data={"account_id": str(locked.id), "csrf_token": "x" * 40},
    )
    assert refused.status_code == 403
    assert lab.account("verrou@example.org").status == AccountStatus.LOCKED.value

    form = client.get("/administration/personnel/invitation")
    assert form.status_code == 200
    assert 'name="site_ids"' in form.text
    invited = client.post(
        "/administration/personnel/invitation",
        data={**NEW, "site_ids": [str(lab.site_id)], "csrf_token": _csrf_field(form.text)},
        follow_redirects=False,
    )
    assert invited.status_code == 303, invited.text
    assert invited.headers["location"] == "/administration/personnel?info=invitation-envoyee"
    listing = client.get(invited.headers["location"])
    assert "invitation a été envoyée" in listing.text
    assert f"{NEW['first_name']} {NEW['last_name']}" in listing.text
    assert "Invitation envoyée" in listing.text
    new_id = str(lab.account(NEW["email"]).id)

    first_link = invitation_token(runtime, NEW["email"])
    renewed = client.post(
        "/administration/personnel/renouvellement",
        data={"account_id": new_id, "csrf_token": _csrf_field(listing.text)},
        follow_redirects=False,
    )
    assert renewed.headers["location"] == "/administration/personnel?info=invitation-renouvelee"
    assert invitation_token(runtime, NEW["email"]) != first_link

    unlocked = client.post(
        "/administration/personnel/deverrouillage",
        data={"account_id": str(locked.id), "csrf_token": _csrf_field(listing.text)},
        follow_redirects=False,
    )
    assert unlocked.headers["location"] == "/administration/personnel?info=compte-deverrouille"
    account = lab.account("verrou@example.org")
    assert (account.status, account.lock_reason) == (AccountStatus.ACTIVE.value, None)
    after = client.get(unlocked.headers["location"]).text
    assert "Déverrouiller le compte" not in after


# --------------------------------------------------------------------------- at rest


def test_names_invited_through_the_admin_api_are_not_in_clear_at_rest(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    token = sign_in_admin(client, lab)
    answer = client.post(
        "/api/v1/admin/staff", json={**NEW, "site_ids": [str(lab.site_id)]}, headers=csrf(token)
    )
    assert answer.status_code == 201
    assert client.get("/api/v1/admin/staff").status_code == 200
    values = [NEW["email"], NEW["first_name"], NEW["last_name"], "Vasseur", "Kergoat"]
    values += [ADMIN, ADMIN_LAST, "Quatremère"]
    with runtime.sessions() as session:
        tables = ("accounts", "staff_members", "audit_events", "one_time_codes")
        dump = "\n".join(
            repr(tuple(v.hex() if isinstance(v, bytes) else v for v in row))
            for table in tables
            for row in session.execute(text(f"SELECT * FROM {table}"))
        ).encode()
    assert leaked(dump, values) == []
    runtime.engine.dispose()
    if runtime.settings.is_sqlite:
        raw = b"".join(path.read_bytes() for path in sqlite_files(runtime.settings.sqlalchemy_url))
    else:
        raw = pg_dump(runtime.settings.sqlalchemy_url)
    assert leaked(raw, values) == []


# --------------------------------------------------------------------------- step-up


def _step_up_with_passkey(client: TestClient, token: str, passkey: Any) -> None:
    options = client.post("/api/v1/auth/step-up/passkey/options", headers=csrf(token))
    assert options.status_code == 200, options.text
    assertion = SoftAuthenticator(PUBLIC_URL).get(options.json(), passkey)
    proved = client.post(
        "/api/v1/auth/step-up/passkey", json={"credential": assertion}, headers=csrf(token)
    )
    assert proved.status_code == 204, proved.text


def _sign_in_admin_with_passkey(client: TestClient, lab: Lab) -> tuple[str, Any]:
    with lab.unit() as service:
        service.invite_staff(
            SYSTEM, ADMIN, ADMIN_FIRST, ADMIN_LAST, StaffRole.ORGANIZATION_ADMIN, [lab.site_id]
        )
    step = accept(client, invitation_token(lab.runtime, ADMIN))
    passkey = enrol_passkey(client, step.json()["csrf_token"])
    return str(client.get("/api/v1/auth/me").json()["csrf_token"]), passkey


def _locked_member_and_admin(
    client: TestClient, lab: Lab, runtime: Runtime
) -> tuple[Account, str, Any]:
    """A locked biologist, and an admin signed in with a passkey whose login's proof is now
    older than LABVAULT_STEP_UP_MINUTES; the admin's CSRF token and passkey."""
    locked = lab.active("verrou@example.org", StaffRole.BIOLOGIST)
    with lab.unit() as service:
        target = service.account(locked.id)
        assert target is not None
        service.lock(target, reason_principal=SYSTEM)
    token, passkey = _sign_in_admin_with_passkey(client, lab)
    age_proofs(runtime)
    return locked, token, passkey


def test_the_admin_s_api_actions_need_a_recent_step_up(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    locked, token, passkey = _locked_member_and_admin(client, lab, runtime)
    before = counts(runtime)
    actions = (
        ("/api/v1/admin/staff", {**NEW, "site_ids": []}),
        (f"/api/v1/admin/staff/{uuid.uuid4()}/invitation", None),
        (f"/api/v1/admin/staff/{locked.id}/unlock", None),
        (f"/api/v1/auth/accounts/{locked.id}/unlock", None),
    )
    for path, payload in actions:
        refused = client.post(path, json=payload, headers=csrf(token))
        assert refused.status_code == 403, (path, refused.text)
        assert refused.json()["reason"] == "step_up_required", path
    assert counts(runtime) == before, "nothing invited, nothing sent"
    assert lab.account("verrou@example.org").status == AccountStatus.LOCKED.value
    assert len(audit_events(runtime, "account:step-up:required")) == len(actions)
    # Reading is not an action: the list still answers.
    assert client.get("/api/v1/admin/staff").status_code == 200
    _step_up_with_passkey(client, token, passkey)
    invited = client.post("/api/v1/admin/staff", json={**NEW, "site_ids": []}, headers=csrf(token))
    assert invited.status_code == 201, invited.text
    renewed = client.post(
        f"/api/v1/admin/staff/{invited.json()['account_id']}/invitation", headers=csrf(token)
    )
    assert renewed.status_code == 200, renewed.text
    done = client.post(f"/api/v1/admin/staff/{locked.id}/unlock", headers=csrf(token))
    assert done.json() == {"unlocked": True}
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    for path in (
        "/api/v1/admin/staff",
        "/api/v1/admin/staff/{account_id}/invitation",
        "/api/v1/admin/staff/{account_id}/unlock",
        "/api/v1/auth/accounts/{account_id}/unlock",
    ):
        assert "step_up_required" in paths[path]["post"]["responses"]["403"]["description"]


def test_the_admin_pages_send_to_the_step_up_page_and_come_back(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    locked, token, passkey = _locked_member_and_admin(client, lab, runtime)
    listing = client.get("/administration/personnel")
    assert listing.status_code == 200, "the list is not an action"
    refused = client.post(
        "/administration/personnel/deverrouillage",
        data={"account_id": str(locked.id), "csrf_token": _csrf_field(listing.text)},
        follow_redirects=False,
    )
    assert refused.status_code == 303
    assert refused.headers["location"] == (
        "/compte/confirmer-identite?suite=%2Fadministration%2Fpersonnel&info=confirmation-requise"
    )
    assert lab.account("verrou@example.org").status == AccountStatus.LOCKED.value
    form = client.get("/administration/personnel/invitation", follow_redirects=False)
    assert form.status_code == 303
    assert form.headers["location"].startswith(
        "/compte/confirmer-identite?suite=%2Fadministration%2Fpersonnel%2Finvitation"
    )
    before = counts(runtime)
    posted = client.post(
        "/administration/personnel/invitation",
        data={**NEW, "csrf_token": _csrf_field(listing.text)},
        follow_redirects=False,
    )
    assert posted.status_code == 303
    assert posted.headers["location"].startswith("/compte/confirmer-identite?")
    assert counts(runtime) == before
    page = client.get(refused.headers["location"])
    assert page.status_code == 200
    assert 'value="/administration/personnel"' in page.text

    _step_up_with_passkey(client, token, passkey)  # what the page's script does
    back = client.get("/administration/personnel?info=identite-confirmee")
    assert "Votre identité est confirmée" in back.text
    unlocked = client.post(
        "/administration/personnel/deverrouillage",
        data={"account_id": str(locked.id), "csrf_token": _csrf_field(back.text)},
        follow_redirects=False,
    )
    assert unlocked.headers["location"] == "/administration/personnel?info=compte-deverrouille"
    assert lab.account("verrou@example.org").status == AccountStatus.ACTIVE.value
    assert client.get("/administration/personnel/invitation").status_code == 200
