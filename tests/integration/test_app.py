"""The application shell against a real SQLite database and key file in a temporary directory."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from fastapi import FastAPI
from fastapi.testclient import TestClient

from labvault.app import create_app
from labvault.core.config import Settings
from labvault.core.crypto.providers.file import FileKeyProvider
from labvault.core.logging import configure_logging

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
    "cross-origin-opener-policy": "same-origin",
}
PROBLEM_JSON = "application/problem+json"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_LabvaultHandler":
            root.removeHandler(handler)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "root.key"
    FileKeyProvider.create(path)
    return path


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"data_dir": tmp_path, "environment": "test", "log_format": "json"}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def app(tmp_path: Path, key_file: Path) -> FastAPI:
    return create_app(make_settings(tmp_path))


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def assert_security_headers(headers: Any, *, cache: str | None = "no-store") -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, name
    if cache is not None:
        assert headers.get("cache-control") == cache
    assert len(headers.get("x-request-id", "")) == 32


def test_landing_page_is_french_and_secured(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    body = response.text
    assert '<html lang="fr">' in body
    assert 'name="viewport"' in body
    assert 'href="#contenu"' in body
    assert 'id="contenu"' in body
    for landmark in ("<header", "<main", "<footer", "<nav"):
        assert landmark in body
    for feature in ("Prendre rendez-vous", "Pré-enregistrement", "Résultats"):
        assert feature in body
    assert "Bientôt disponible" in body
    # CSP forbids inline code: none is there.
    for inline in ("<script", "<style", "style="):
        assert inline not in body
    assert_security_headers(response.headers)
    assert "strict-transport-security" not in response.headers


def test_landing_page_has_no_dead_links(client: TestClient) -> None:
    body = client.get("/").text
    hrefs = {part.split('"', 1)[0] for part in body.split('href="')[1:]}
    for href in hrefs:
        if href.startswith(("#", "data:")):
            continue
        assert client.get(href).status_code == 200, href


def test_request_ids_are_random_per_request(client: TestClient) -> None:
    ids = {client.get("/").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


def test_health_is_ok(client: TestClient) -> None:
    response = client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "keys": "ok"}
    assert_security_headers(response.headers)


def test_health_reports_an_exposed_key_file_without_naming_it(
    tmp_path: Path, key_file: Path
) -> None:
    key_file.chmod(0o644)
    with TestClient(create_app(make_settings(tmp_path))) as client:
        response = client.get("/api/v1/health")
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert problem["type"] == "https://labvault.fr/problems/unavailable"
    assert problem["status"] == 503
    assert problem["title"]
    assert "key provider" in problem["detail"]
    assert problem["checks"] == {"database": "ok", "keys": "unavailable"}
    for leaked in (str(key_file), str(tmp_path), "root.key", "chmod", "0644"):
        assert leaked not in response.text
    assert_security_headers(response.headers)


def test_health_reports_a_missing_key_file(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as client:
        response = client.get("/api/v1/health")
    assert response.status_code == 503
    assert response.json()["checks"]["keys"] == "unavailable"
    assert str(tmp_path) not in response.text


def test_health_reports_an_unreachable_database(tmp_path: Path, key_file: Path) -> None:
    # A directory where the database file should be: SQLite cannot open it.
    database = tmp_path / "not-a-file.sqlite3"
    database.mkdir()
    settings = make_settings(tmp_path, database_url=f"sqlite:///{database}")
    with TestClient(create_app(settings)) as client:
        response = client.get("/api/v1/health")
    assert response.status_code == 503
    problem = response.json()
    assert problem["checks"] == {"database": "unavailable", "keys": "ok"}
    assert "database" in problem["detail"]
    assert str(tmp_path) not in response.text


def test_unknown_api_route_is_a_problem(client: TestClient) -> None:
    response = client.get("/api/v1/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json() == {
        "type": "https://labvault.fr/problems/not-found",
        "title": "Not Found",
        "status": 404,
    }
    assert_security_headers(response.headers)


def test_wrong_method_on_api_route_is_a_problem(client: TestClient) -> None:
    response = client.post("/api/v1/health")
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["type"] == "https://labvault.fr/problems/method-not-allowed"
    assert "GET" in response.headers["allow"]


def test_unknown_page_is_a_french_html_page(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert '<html lang="fr">' in response.text
    assert "Page introuvable" in response.text
    assert_security_headers(response.headers)


def test_unhandled_api_error_is_a_problem_without_details(tmp_path: Path, key_file: Path) -> None:
    app = create_app(make_settings(tmp_path))

    @app.get("/api/v1/boom")
    def boom() -> None:
        raise RuntimeError("secret detail: patient jeanne@example.fr")

    with TestClient(app) as client:
        response = client.get("/api/v1/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert problem["type"] == "https://labvault.fr/problems/internal-error"
    assert problem["status"] == 500
    assert problem["request_id"] == response.headers["x-request-id"]
    for leaked in ("secret detail", "jeanne", "RuntimeError", "Traceback"):
        assert leaked not in response.text
    assert_security_headers(response.headers)


def test_unhandled_page_error_is_a_french_page_with_a_reference(
    tmp_path: Path, key_file: Path
) -> None:
    app = create_app(make_settings(tmp_path))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail")

    with TestClient(app) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/html")
    assert "Erreur interne" in response.text
    assert response.headers["x-request-id"] in response.text
    assert "secret detail" not in response.text
    assert_security_headers(response.headers)


def test_unhandled_error_is_logged_scrubbed_with_request_id(tmp_path: Path, key_file: Path) -> None:
    app = create_app(make_settings(tmp_path))
    stream = io.StringIO()
    configure_logging(make_settings(tmp_path), stream=stream)

    @app.get("/api/v1/test-records/{patient_id}")
    def read(patient_id: str) -> None:
        raise RuntimeError("cannot reach jeanne@example.fr")

    with TestClient(app) as client:
        response = client.get("/api/v1/test-records/0f6c?email=jeanne%40example.fr&token=abc")
    request_id = response.headers["x-request-id"]
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    errors = [line for line in lines if line["event"] == "http.unhandled_error"]
    assert len(errors) == 1
    assert errors[0]["request_id"] == request_id
    assert "RuntimeError: cannot reach [email]" in errors[0]["exception"]
    access = [line for line in lines if line["event"] == "http.request"]
    assert access == [
        {
            "event": "http.request",
            "logger": "labvault.web",
            "level": "info",
            "timestamp": access[0]["timestamp"],
            "request_id": request_id,
            "method": "GET",
            "route": "/api/v1/test-records/{patient_id}",
            "status": 500,
            "duration_ms": access[0]["duration_ms"],
        }
    ]
    ours = "\n".join(
        json.dumps(line) for line in lines if line.get("logger", "").startswith("labvault")
    )
    for leaked in ("jeanne", "token=abc", "0f6c", "?"):
        assert leaked not in ours


def test_hsts_only_behind_tls(tmp_path: Path, key_file: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, behind_tls=True))) as client:
        for path in ("/", "/api/v1/health", "/nope", "/static/labvault.css"):
            response = client.get(path)
            assert (
                response.headers["strict-transport-security"]
                == "max-age=63072000; includeSubDomains"
            ), path


def test_hsts_absent_without_tls(client: TestClient) -> None:
    for path in ("/", "/api/v1/health", "/nope", "/static/labvault.css"):
        assert "strict-transport-security" not in client.get(path).headers


# A reference the browser would fetch from elsewhere: url(...) or @import, optional quotes
# and spaces, then a protocol-relative "//" or a scheme (data: is inline, not a fetch).
EXTERNAL_CSS_URL = re.compile(
    r"""(?:url\(|@import)\s*["']?\s*(?://|(?!data:)[a-z][a-z0-9+.-]*:)""", re.IGNORECASE
)


def test_static_css_is_served_cacheable(client: TestClient) -> None:
    response = client.get("/static/labvault.css")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/css")
    assert "no-store" not in response.headers["cache-control"]
    assert_security_headers(response.headers, cache=None)
    assert EXTERNAL_CSS_URL.findall(response.text) == []  # no CDN, no third-party font


@pytest.mark.parametrize(
    ("css", "external"),
    [
        ("a{background:url(//cdn.example.org/x.png)}", True),
        ("a{background:url( 'https://cdn.example.org/x.png')}", True),
        ('@font-face{src:URL("HTTP://fonts.example/f.woff2")}', True),
        ('@import "https://cdn.example.org/reset.css";', True),
        ("@import url(ftp://example.org/a.css);", True),
        ("a{background:url(/static/x.png)}", False),
        ("a{background:url('img/x.png')}", False),
        ("a{background:url(data:image/png;base64,iVBORw0KGgo=)}", False),
    ],
)
def test_the_external_css_url_check_is_precise(css: str, external: bool) -> None:
    assert bool(EXTERNAL_CSS_URL.search(css)) is external


def test_missing_static_file_is_a_french_page(client: TestClient) -> None:
    response = client.get("/static/nope.css")
    assert response.status_code == 404
    assert "Page introuvable" in response.text


def test_no_third_party_documentation_pages(client: TestClient) -> None:
    # Swagger UI and ReDoc would load scripts from a CDN.
    assert client.get("/docs").status_code == 404
    assert client.get("/redoc").status_code == 404
    assert client.get("/api/v1/openapi.json").status_code == 200


def test_runtime_is_disposed_on_shutdown(tmp_path: Path, key_file: Path) -> None:
    app = create_app(make_settings(tmp_path))
    runtime = app.state.runtime
    closed: list[bool] = []
    original = runtime.close
    runtime.close = lambda: (closed.append(True), original())[-1]
    with TestClient(app) as client:
        client.get("/api/v1/health")
        assert closed == []
    assert closed == [True]


def test_a_write_raced_by_an_index_key_rotation_asks_to_retry(
    tmp_path: Path, key_file: Path
) -> None:
    """Nothing was written (the transaction rolled back); the same request works a moment
    later: 503 with Retry-After, not the 500 of a bug."""
    from labvault.core.crypto.keyring import IndexKeysChangedError

    app = create_app(make_settings(tmp_path))

    @app.post("/api/v1/raced")
    def raced() -> None:
        raise IndexKeysChangedError

    with TestClient(app) as client:
        response = client.post("/api/v1/raced")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.headers["content-type"] == PROBLEM_JSON
    assert "réessayez" in response.json()["detail"]
    assert_security_headers(response.headers)
