"""The security helpers that every form page shares (``labvault.accounts.forms``), tested on
their own: the same-origin check, the CSRF check of a form and the local ``suite=`` path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import pytest
from starlette.requests import Request

from labvault.accounts.forms import (
    FORM_COOKIE,
    MAX_CSRF,
    AnonymousForm,
    app_url,
    form_csrf_ok,
    from_this_site,
    redirect_to,
)
from labvault.accounts.services import AccountService
from labvault.accounts.stepup_pages import DEFAULT_NEXT, local_path


def _request(headers: dict[str, str] | None = None, root_path: str = "") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request(
        {
            "type": "http",
            "method": "POST",
            "path": "/compte/connexion",
            "root_path": root_path,
            "query_string": b"",
            "headers": [(b"host", b"labo.example"), *raw],
        }
    )


@dataclass
class _Sessions:
    """Stands for ``SessionStore``: accepts one token, and records what it was asked."""

    good: str = "jeton-correct"
    asked: list[tuple[str, str]] = field(default_factory=list)

    def check_csrf(self, bound_to: str, presented: str) -> bool:
        self.asked.append((bound_to, presented))
        return presented == self.good

    def csrf_token(self, bound_to: str) -> str:
        return f"token-of:{bound_to}"


@dataclass
class _Service:
    sessions: _Sessions = field(default_factory=_Sessions)


def _service() -> tuple[AccountService, _Sessions]:
    fake = _Service()
    return cast(AccountService, fake), fake.sessions


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Sec-Fetch-Site": "same-origin"}, True),
        # Fetch Metadata decides when present, whatever Origin says.
        ({"Sec-Fetch-Site": "same-origin", "Origin": "https://evil.example"}, True),
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({"Sec-Fetch-Site": "same-site"}, False),
        ({"Sec-Fetch-Site": "none"}, False),
        ({"Sec-Fetch-Site": "cross-site", "Origin": "https://labo.example"}, False),
        # No Fetch Metadata: Origin: null (no-referrer) is left to the CSRF token...
        ({"Origin": "null"}, True),
        # ... and a real Origin must be this host.
        ({"Origin": "https://labo.example"}, True),
        ({"Origin": "http://labo.example"}, True),
        ({"Origin": "https://evil.example"}, False),
        ({"Origin": "https://labo.example.evil.example"}, False),
        ({}, True),
    ],
)
def test_a_form_post_is_from_this_site_only_by_fetch_metadata_or_origin(
    headers: dict[str, str], expected: bool
) -> None:
    assert from_this_site(_request(headers)) is expected


@pytest.mark.parametrize(
    "presented",
    ["", "x" * (MAX_CSRF + 1), "jeton-corrécte", "jeton-correct\u00a0"],
)
def test_a_csrf_token_that_is_empty_too_long_or_not_ascii_is_refused_unchecked(
    presented: str,
) -> None:
    service, sessions = _service()
    assert form_csrf_ok(service, "session", presented) is False
    assert sessions.asked == [], "refused before any comparison"


def test_a_csrf_token_is_checked_against_what_it_is_bound_to() -> None:
    service, sessions = _service()
    assert form_csrf_ok(service, "session", "jeton-correct") is True
    assert form_csrf_ok(service, "session", "jeton-faux") is False
    assert sessions.asked == [("session", "jeton-correct"), ("session", "jeton-faux")]


def test_an_anonymous_form_without_its_cookie_is_refused_even_with_a_good_token() -> None:
    service, _ = _service()
    form = AnonymousForm.of(_request())
    assert form.fresh
    assert not form.check(service, "jeton-correct"), "a fresh value was never shown"


def test_an_anonymous_form_keeps_a_well_formed_cookie_and_replaces_a_bad_one() -> None:
    service, sessions = _service()
    value = "A" * 43
    kept = AnonymousForm.of(_request({"Cookie": f"{FORM_COOKIE}={value}"}))
    assert (kept.secret, kept.fresh) == (value, False)
    assert kept.check(service, "jeton-correct")
    bound_to, _ = sessions.asked[-1]
    assert bound_to.endswith(value)
    assert bound_to != value, "labelled apart from session tokens"
    for bad in ("court", "A" * 44, "A" * 42 + "!"):
        replaced = AnonymousForm.of(_request({"Cookie": f"{FORM_COOKIE}={bad}"}))
        assert replaced.fresh
        assert replaced.secret != bad


def test_redirects_are_303_to_a_path_of_this_application() -> None:
    request = _request(root_path="/labo")
    assert app_url(request, "/compte/connexion") == "/labo/compte/connexion"
    response = redirect_to(request, "/compte/securite", info="session-revoquee")
    assert response.status_code == 303
    assert response.headers["location"] == "/labo/compte/securite?info=session-revoquee"
    assert app_url(_request(), "/x", suite="/a?b=c&d") == "/x?suite=%2Fa%3Fb%3Dc%26d"


@pytest.mark.parametrize(
    "suite",
    ["/compte/securite", "/compte/administration/personnel", "/dossiers?page=2"],
)
def test_a_local_suite_is_kept(suite: str) -> None:
    assert local_path(suite) == suite


@pytest.mark.parametrize(
    "suite",
    [
        None,
        "",
        "https://evil.example/compte",
        "//evil.example/compte",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "compte/securite",
        "/compte/../../etc",
        "/compte/securite#fragment",
        "/compte/confirmer-identite",
        "/compte/sécurité",
        "/compte/a b",
        "/compte/\n",
        "/" + "a" * 600,
    ],
)
def test_a_suite_that_is_not_a_local_path_falls_back_to_the_security_page(
    suite: str | None,
) -> None:
    assert local_path(suite) == DEFAULT_NEXT
