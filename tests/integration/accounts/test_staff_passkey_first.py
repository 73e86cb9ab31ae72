"""Organization admins and security officers register a passkey as their first factor at
activation (a software authenticator at the default public URL, http://localhost:8000),
cannot activate with an authenticator app instead, and then log in with the passkey only
(or a recovery code); the other roles keep the authenticator app. Both database backends."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from test_staff_invitations import (
    EMAIL,
    PASSWORD,
    PUBLIC_URL,
    Lab,
    accept,
    audit_events,
    client,
    csrf,
    enrol,
    enrol_passkey,
    lab,
    last_code,
)

from labvault.accounts.webauthn import WebAuthnCredential
from labvault.core.config import Settings
from labvault.core.crypto.secret import Secret
from labvault.core.runtime import Runtime
from labvault.staff.models import StaffRole
from passkey_authenticator import SoftAuthenticator

__all__ = ["client", "lab"]

PRIVILEGED = [StaffRole.ORGANIZATION_ADMIN, StaffRole.SECURITY_OFFICER]


def passkeys(runtime: Runtime) -> list[WebAuthnCredential]:
    with runtime.sessions() as session:
        return list(session.query(WebAuthnCredential))


@pytest.mark.parametrize("role", PRIVILEGED)
def test_a_privileged_invitee_cannot_activate_with_an_authenticator_app(
    client: TestClient, lab: Lab, runtime: Runtime, role: StaffRole
) -> None:
    step = accept(client, lab.invite(role=role))
    assert step.status_code == 200, step.text
    assert step.json()["enrol"] == ["webauthn"]
    headers = csrf(step.json()["csrf_token"])
    assert client.post("/api/v1/auth/enrolment/totp", headers=headers).status_code == 401
    confirm = client.post(
        "/api/v1/auth/enrolment/totp/confirm", json={"code": "123456"}, headers=headers
    )
    assert confirm.status_code == 401
    assert client.get("/api/v1/auth/me").status_code == 401, "still not signed in"
    # Nor on the pages: the activation page offers the passkey only.
    page = client.get("/compte/activation")
    assert page.status_code == 200
    assert 'id="cle-acces-ajout"' in page.text
    assert 'data-complete="/api/v1/auth/enrolment/passkey"' in page.text
    assert "Configurer l&#39;application d&#39;authentification" not in page.text
    form = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert form is not None
    begin = client.post("/compte/activation/cle", data={"csrf_token": form.group(1)})
    assert begin.status_code == 422
    assert "exige une clé d" in begin.text
    totp = client.post("/compte/activation", data={"code": "123456", "csrf_token": form.group(1)})
    assert totp.status_code == 422
    no_script = client.post("/compte/activation/cle-d-acces", data={"csrf_token": form.group(1)})
    assert no_script.status_code == 422
    assert "JavaScript" in no_script.text
    assert client.get("/api/v1/auth/me").status_code == 401
    assert audit_events(runtime, "account:totp:enrol") == []

    enrol_passkey(client, step.json()["csrf_token"])
    me = client.get("/api/v1/auth/me")
    assert me.status_code == 200
    sessions = client.get("/api/v1/auth/sessions").json()
    assert [s["second_factor"] for s in sessions if s["current"]] == ["webauthn"]
    assert len(passkeys(runtime)) == 1
    assert audit_events(runtime, "account:passkey:register")
    assert audit_events(runtime, "account:login:success")


def test_a_privileged_login_takes_the_passkey_or_a_recovery_code_nothing_else(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    step = accept(client, lab.invite(role=StaffRole.ORGANIZATION_ADMIN))
    passkey = enrol_passkey(client, step.json()["csrf_token"])
    token = client.get("/api/v1/auth/me").json()["csrf_token"]
    codes = client.post("/api/v1/auth/recovery-codes", headers=csrf(token)).json()["codes"]
    assert client.post("/api/v1/auth/logout", headers=csrf(token)).status_code == 204

    step = client.post("/api/v1/auth/staff/login", json={"email": EMAIL, "password": PASSWORD})
    assert step.status_code == 200
    assert step.json()["second_factor"] == ["webauthn", "recovery"]
    assert step.json()["enrol"] == []
    headers = csrf(step.json()["csrf_token"])
    for method in ("totp", "email"):
        refused = client.post(
            "/api/v1/auth/login/second-factor",
            json={"method": method, "code": "123456"},
            headers=headers,
        )
        assert refused.status_code == 401
    options = client.post("/api/v1/auth/webauthn/authentication/options", headers=headers)
    assert options.status_code == 200, options.text
    assertion = SoftAuthenticator(PUBLIC_URL).get(options.text, passkey)
    done = client.post(
        "/api/v1/auth/webauthn/authentication", json={"credential": assertion}, headers=headers
    )
    assert done.status_code == 200, done.text
    token = done.json()["csrf_token"]
    assert client.post("/api/v1/auth/logout", headers=csrf(token)).status_code == 204

    # The passkey is lost: a recovery code still opens the account.
    step = client.post("/api/v1/auth/staff/login", json={"email": EMAIL, "password": PASSWORD})
    recovered = client.post(
        "/api/v1/auth/login/second-factor",
        json={"method": "recovery", "code": codes[0]},
        headers=csrf(step.json()["csrf_token"]),
    )
    assert recovered.status_code == 200, recovered.text


def test_an_enrolment_after_a_plain_login_also_takes_the_emailed_code(
    client: TestClient, lab: Lab, runtime: Runtime
) -> None:
    """The invitee set a password and left: a password alone must not attach a passkey."""
    step = accept(client, lab.invite(role=StaffRole.SECURITY_OFFICER))
    assert step.status_code == 200
    client.cookies.clear()
    step = client.post("/api/v1/auth/staff/login", json={"email": EMAIL, "password": PASSWORD})
    assert step.json()["enrol"] == ["webauthn"]
    assert step.json()["email_code_required"] is True
    headers = csrf(step.json()["csrf_token"])
    soft = SoftAuthenticator(PUBLIC_URL)

    options = client.post("/api/v1/auth/enrolment/passkey/options", headers=headers)
    credential, _ = soft.create(options.text)
    refused = client.post(
        "/api/v1/auth/enrolment/passkey", json={"credential": credential}, headers=headers
    )
    assert refused.status_code == 401
    assert passkeys(runtime) == [], "nothing kept"

    assert client.post("/api/v1/auth/enrolment/email-code", headers=headers).status_code == 202
    code = last_code(runtime)
    options = client.post("/api/v1/auth/enrolment/passkey/options", headers=headers)
    credential, _ = soft.create(options.text)
    wrong = client.post(
        "/api/v1/auth/enrolment/passkey",
        json={"credential": credential, "email_code": "000000" if code != "000000" else "111111"},
        headers=headers,
    )
    assert wrong.status_code == 401
    assert passkeys(runtime) == []
    # A refused passkey (another site's) does not use the code up.
    options = client.post("/api/v1/auth/enrolment/passkey/options", headers=headers)
    phished, _ = soft.create(options.text, origin="https://labvault.example.net")
    bad = client.post(
        "/api/v1/auth/enrolment/passkey",
        json={"credential": phished, "email_code": code},
        headers=headers,
    )
    assert bad.status_code == 422
    assert passkeys(runtime) == []
    options = client.post("/api/v1/auth/enrolment/passkey/options", headers=headers)
    credential, _ = soft.create(options.text)
    done = client.post(
        "/api/v1/auth/enrolment/passkey",
        json={"credential": credential, "email_code": code},
        headers=headers,
    )
    assert done.status_code == 200, done.text
    assert len(passkeys(runtime)) == 1


def test_other_roles_keep_the_authenticator_app_and_cannot_enrol_a_passkey_first(
    client: TestClient, lab: Lab
) -> None:
    step = accept(client, lab.invite(role=StaffRole.RECEPTIONIST))
    assert step.json()["enrol"] == ["totp"]
    headers = csrf(step.json()["csrf_token"])
    assert client.post("/api/v1/auth/enrolment/passkey/options", headers=headers).status_code == 401
    enrol(client, step.json()["csrf_token"])
    assert client.get("/api/v1/auth/me").status_code == 200


def test_without_passkeys_at_this_address_privileged_roles_enrol_an_app(
    settings: Settings,
) -> None:
    """An IP address cannot be a WebAuthn relying party: an admin must still be able to
    activate (with an authenticator app)."""
    runtime = Runtime(settings.model_copy(update={"public_url": "http://127.0.0.1:8000"}))
    try:
        lab = Lab(runtime)
        token = lab.invite(role=StaffRole.ORGANIZATION_ADMIN)
        with lab.unit() as service:
            login = service.accept_invitation(
                token, Secret(PASSWORD), client_id="c" * 32, client_hash=None
            )
        assert login.enrol == ("totp",)
    finally:
        runtime.close()
