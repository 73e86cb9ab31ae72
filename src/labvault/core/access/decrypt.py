"""The decrypt choke point's hooks.

No personal field can be decrypted without its subject's data key, and data keys only come
out of :meth:`labvault.core.crypto.keyring.TenantKeyring.open_data_keys`, which first calls
every :class:`DecryptGuard`. Authorization, auditing and read budgets plug in here; a guard
that raises stops the read before any key is unwrapped.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

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
