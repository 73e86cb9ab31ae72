"""Replacing the authenticator app: the confirmed one keeps working (login, step-up) until a
code of the new one is confirmed; then the new one replaces it in one transaction. Both
database backends, over the real API."""

from __future__ import annotations

import base64
import time

from fastapi.testclient import TestClient
from sqlalchemy import select
from test_step_up import EMAIL, PASSWORD, client, sign_in

from labvault.accounts.models import TotpCredential
from labvault.core.crypto.otp import totp_code
from labvault.core.crypto.secret import Secret
from labvault.core.runtime import Runtime

__all__ = ["client"]


def _secret(setup: dict[str, str]) -> Secret[bytes]:
    text = setup["secret"]
    return Secret(base64.b32decode(text + "=" * (-len(text) % 8)))


def _credentials(runtime: Runtime) -> list[tuple[bool, int]]:
    """(confirmed, last step) of every stored credential, confirmed first."""
    with runtime.sessions() as session:
        rows = session.execute(select(TotpCredential.confirmed_at, TotpCredential.last_step))
        return sorted(((at is not None, step) for at, step in rows), reverse=True)


def _login_with_totp(client: TestClient, code: str) -> int:
    client.cookies.clear()
    step = client.post("/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD})
    assert step.status_code == 200, step.text
    done = client.post(
        "/api/v1/auth/login/second-factor",
        json={"method": "totp", "code": code},
        headers={"X-CSRF-Token": step.json()["csrf_token"]},
    )
    return done.status_code


def test_the_old_app_works_until_the_new_one_is_confirmed(
    client: TestClient, runtime: Runtime
) -> None:
    headers = sign_in(client, runtime)
    now = time.time()
    old = _secret(client.post("/api/v1/auth/totp", headers=headers).json())
    confirmed = client.post(
        "/api/v1/auth/totp/confirm", json={"code": totp_code(old, now - 30)}, headers=headers
    )
    assert confirmed.status_code == 204, confirmed.text

    # A new app is started, not confirmed: the old one still opens a session.
    new = _secret(client.post("/api/v1/auth/totp", headers=headers).json())
    assert new.reveal() != old.reveal()
    assert [confirmed for confirmed, _ in _credentials(runtime)] == [True, False]
    assert _login_with_totp(client, totp_code(new, now - 30)) == 401, "not confirmed yet"
    assert _login_with_totp(client, totp_code(old, now)) == 200, "the old app still works"
    headers = {"X-CSRF-Token": client.get("/api/v1/auth/me").json()["csrf_token"]}

    # Starting again replaces only the pending secret; the old app still works.
    newer = _secret(client.post("/api/v1/auth/totp", headers=headers).json())
    assert [confirmed for confirmed, _ in _credentials(runtime)] == [True, False]
    wrong = client.post(
        "/api/v1/auth/totp/confirm", json={"code": totp_code(new, now)}, headers=headers
    )
    assert wrong.status_code == 422, "the abandoned secret cannot be confirmed"
    assert [confirmed for confirmed, _ in _credentials(runtime)] == [True, False]

    # Confirmed: the newer app replaces the old one, which stops working.
    done = client.post(
        "/api/v1/auth/totp/confirm", json={"code": totp_code(newer, now)}, headers=headers
    )
    assert done.status_code == 204, done.text
    assert [confirmed for confirmed, _ in _credentials(runtime)] == [True]
    assert _login_with_totp(client, totp_code(old, now + 30)) == 401, "the old app is gone"
    assert _login_with_totp(client, totp_code(newer, now + 30)) == 200
    # The confirmation's code was used: the new app's replay protection starts from it.
    assert _login_with_totp(client, totp_code(newer, now + 30)) == 401, "replay"
