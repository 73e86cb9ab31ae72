"""Jinja2 templates for the server-rendered French pages.

Autoescaping is always on and undefined variables are errors. Templates link assets with
``static_url('labvault.css')`` (a relative URL: no host, so nothing breaks behind a TLS
proxy) and never use inline styles or scripts, which the Content-Security-Policy forbids.
"""

from __future__ import annotations

from os import PathLike
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.templating import Jinja2Templates

from labvault.core.web.headers import STATIC_PREFIX
from labvault.core.web.request_context import request_id_of

__all__ = ["create_templates"]


def create_templates(*directories: str | PathLike[str]) -> Jinja2Templates:
    """Templates looked up in ``directories``, first match wins."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(list(directories)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return Jinja2Templates(env=env, context_processors=[_page_context])


def _page_context(request: Request) -> dict[str, Any]:
    root_path = str(request.scope.get("root_path", ""))

    def static_url(path: str) -> str:
        return f"{root_path}{STATIC_PREFIX}{path.lstrip('/')}"

    return {
        "static_url": static_url,
        "home_url": f"{root_path}/",
        "request_id": request_id_of(request),
    }
