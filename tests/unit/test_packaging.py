"""Every file the package needs at run time is declared as package data, so an installed
wheel (not only this checkout) serves every page: a template folder left out of
``pyproject.toml`` once made the patient-record pages exist only in development."""

from __future__ import annotations

import tomllib
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "labvault"


def _declared() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns: list[str] = config["tool"]["setuptools"]["package-data"]["labvault"]
    return patterns


def _matches(relative: PurePosixPath, pattern: str) -> bool:
    if "**" in pattern:  # setuptools: "**" spans folders
        head, tail = pattern.split("**/", 1)
        return str(relative).startswith(head) and relative.match(tail)
    return relative.match(pattern) and len(relative.parts) == len(PurePosixPath(pattern).parts)


def test_every_data_file_is_declared() -> None:
    patterns = _declared()
    undeclared = [
        str(relative)
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix not in {".py", ".pyc"} and "__pycache__" not in path.parts
        for relative in [PurePosixPath(path.relative_to(PACKAGE).as_posix())]
        if not any(_matches(relative, pattern) for pattern in patterns)
    ]
    assert undeclared == [], "add these to [tool.setuptools.package-data] in pyproject.toml"


def test_a_folder_left_out_is_caught() -> None:
    assert _matches(
        PurePosixPath("web/templates/results/patient/liste.html"), "web/templates/**/*.html"
    )
    assert not _matches(PurePosixPath("web/templates/results/x.html"), "web/templates/*.html")
    assert not _matches(PurePosixPath("web/static/x/y.css"), "web/static/*")


def test_every_test_file_has_its_own_name() -> None:
    """Test folders have no ``__init__.py``: two files of one name cannot be collected by the
    same worker ("import file mismatch"), which fails a run only when they meet."""
    names: dict[str, list[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        names.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in names.items() if len(paths) > 1} == {}
