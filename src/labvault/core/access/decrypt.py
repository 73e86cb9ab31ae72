"""The decrypt choke point's hooks.

No personal field can be decrypted without its subject's data key, and data keys only come
out of :meth:`labvault.core.crypto.keyring.TenantKeyring.open_data_keys`, which first calls
every :class:`DecryptGuard`. Authorization, auditing and read budgets plug in here; a guard
that raises stops the read before any key is unwrapped.

Guards are installed per database engine (:func:`install_guards`, done by the Runtime for
its engines), and every keyring built on a session of that engine gets them unless it is
given its own: no code path can forget them. A guard that also knows records no legitimate
view may list (honey records) implements :class:`SubjectFilter`; lists ask the keyring for
the ``visible`` subjects before they decrypt anything.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from labvault.core.access.principals import Principal


@dataclass(frozen=True, slots=True)
class DecryptRequest:
    principal: Principal
    tenant_id: uuid.UUID
    subject_type: str
    subject_ids: tuple[uuid.UUID, ...]
    purpose: str


class DecryptGuard(Protocol):
    def before_decrypt(self, request: DecryptRequest) -> None:
        """Raise to refuse; return to allow. Runs in the caller's transaction."""


class DecryptDeniedError(PermissionError):
    """A guard refused the read."""


def run_guards(guards: Sequence[DecryptGuard], request: DecryptRequest) -> None:
    for guard in guards:
        guard.before_decrypt(request)


@runtime_checkable
class SubjectFilter(Protocol):
    def hidden(self, subject_type: str, subject_ids: Sequence[uuid.UUID]) -> frozenset[uuid.UUID]:
        """Which of ``subject_ids`` no list may show (without decrypting anything)."""


GuardFactory = Callable[[Session, uuid.UUID], Sequence[DecryptGuard]]
"""Builds the guards of one keyring: its session (the request's unit of work) and tenant."""

_installed: weakref.WeakKeyDictionary[Engine, GuardFactory] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def install_guards(engine: Engine, factory: GuardFactory) -> None:
    """Every keyring on a session of ``engine`` gets ``factory``'s guards from now on."""
    with _lock:
        _installed[engine] = factory


def guard_factory(engine: Engine) -> GuardFactory | None:
    """What :func:`install_guards` installed for ``engine``, if anything."""
    with _lock:
        return _installed.get(engine)


def uninstall_guards(engine: Engine) -> None:
    with _lock:
        _installed.pop(engine, None)


def installed_guards(session: Session, tenant_id: uuid.UUID) -> tuple[DecryptGuard, ...]:
    """The guards installed for ``session``'s engine (none when nothing is installed)."""
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    with _lock:
        factory = _installed.get(engine)
    return tuple(factory(session, tenant_id)) if factory is not None else ()
