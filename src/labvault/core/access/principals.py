"""Principals: the acting party every service call names.

Privileged access must name :class:`SystemPrincipal` explicitly, with the job it runs for,
so that every escalation is greppable (``SystemPrincipal(``) and recorded.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass


class PrincipalKind(enum.StrEnum):
    PATIENT = "patient"
    STAFF = "staff"
    SERVICE = "service"
    SYSTEM = "system"
    ANONYMOUS = "anonymous"
    """Not authenticated yet: sign-up, login, password reset."""


@dataclass(frozen=True, slots=True)
class Principal:
    kind: PrincipalKind
    id: str
    role: str | None = None
    """The staff role (or service scope set) it acts with, recorded in every audit event."""
    site_id: uuid.UUID | None = None
    """The site it acts for, when there is one."""


@dataclass(frozen=True, slots=True, init=False)
class SystemPrincipal(Principal):
    """A command-line job or background task acting outside any login."""

    job: str = ""

    def __init__(self, job: str) -> None:
        if not job or not job.replace(":", "").replace("-", "").replace("_", "").isalnum():
            raise ValueError("a system principal names its job, e.g. 'cli:patients-find'")
        object.__setattr__(self, "kind", PrincipalKind.SYSTEM)
        object.__setattr__(self, "id", f"system:{job}")
        object.__setattr__(self, "role", None)
        object.__setattr__(self, "site_id", None)
        object.__setattr__(self, "job", job)


ANONYMOUS = Principal(PrincipalKind.ANONYMOUS, "anonymous")
