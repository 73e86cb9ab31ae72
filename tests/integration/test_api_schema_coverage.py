"""Every ``/api/v1`` operation has a schemathesis property test.

The schemathesis modules (``tests/**/test_*_api_schema.py``) each choose their operations
with a ``COVERED`` path regex. Here every path of the app's OpenAPI schema under ``/api/v1``
must match at least one of them, so a new API route without a property run fails the suite;
and every ``COVERED`` must still match a path (a renamed route does not leave a regex that
covers nothing), and be the one the module actually runs.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from labvault.app import create_app
from labvault.core.runtime import Runtime

TESTS = Path(__file__).resolve().parents[1]
SCHEMA_MODULES = sorted(TESTS.rglob("test_*_api_schema.py"))
KNOWN = {
    "test_auth_api_schema",
    "test_booking_api_schema",
    "test_preregistration_api_schema",
    "test_desk_api_schema",
    "test_patient_api_schema",
    "test_security_api_schema",
}


@pytest.fixture
def backend() -> str:
    """SQLite only: the schema does not depend on the database backend."""
    return "sqlite"


def _module(path: Path) -> ModuleType:
    """The test module as pytest imports it (``prepend`` mode: by its file name, its folder
    on ``sys.path``), reused if the run already collected it."""
    name = path.stem
    if (loaded := sys.modules.get(name)) is not None and Path(str(loaded.__file__)) == path:
        return loaded
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _covered() -> dict[str, str]:
    """Each schemathesis module's ``COVERED`` regex, by module name."""
    found: dict[str, str] = {}
    for path in SCHEMA_MODULES:
        covered = getattr(_module(path), "COVERED", None)
        assert isinstance(covered, str), f"{path.name} must define COVERED (its path regex)"
        assert "include(path_regex=COVERED)" in path.read_text(encoding="utf-8"), (
            f"{path.name} must run the operations its COVERED names"
        )
        found[path.stem] = covered
    return found


def _api_paths(runtime: Runtime) -> list[str]:
    app = create_app(runtime.settings, runtime)
    return sorted(p for p in app.openapi()["paths"] if p.startswith("/api/v1/"))


def test_every_api_path_has_a_property_test(runtime: Runtime) -> None:
    covered = _covered()
    assert set(covered) >= KNOWN, "a schemathesis module was not found"
    paths = _api_paths(runtime)
    assert len(paths) > 50, "the app's OpenAPI schema lost its API paths"
    uncovered = [p for p in paths if not any(re.search(rx, p) for rx in covered.values())]
    assert uncovered == [], (
        "API paths without a schemathesis test (add them to a module's COVERED): "
        + ", ".join(uncovered)
    )


def test_every_covered_regex_still_names_a_path(runtime: Runtime) -> None:
    paths = _api_paths(runtime)
    stale = {
        name: rx for name, rx in _covered().items() if not any(re.search(rx, p) for p in paths)
    }
    assert stale == {}, f"COVERED regexes matching no API path: {stale}"


def test_the_check_would_catch_a_path_nobody_covers() -> None:
    """The rule itself: a route outside every module's regex is reported."""
    covered = _covered().values()
    assert not any(re.search(rx, "/api/v1/new-feature/{thing_id}") for rx in covered)
    assert any(re.search(rx, "/api/v1/patients/{patient_id}/nir") for rx in covered)
    assert not any(re.search(rx, "/api/v1/patients/{patient_id}/new-thing") for rx in covered)
