"""The provider's HKDF derivations that requests need (CSRF, one-time codes, the client
address hash) are made once per process, on the Runtime, not in every request."""

from __future__ import annotations

from collections import Counter

import pytest
from fastapi.testclient import TestClient

from labvault.accounts.services import CODE_LABEL
from labvault.accounts.sessions import CSRF_LABEL
from labvault.app import create_app
from labvault.core.audit.events import CLIENT_ADDRESS_LABEL, ClientAddressHasher
from labvault.core.crypto.derived import DerivedKeys
from labvault.core.crypto.providers import KeyProvider
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization

ORIGIN = "https://testserver"


class _Counting:
    """The runtime's real provider, counting its derivations."""

    def __init__(self, provider: KeyProvider) -> None:
        self.derive = provider.derive_key  # the bound method, before it is replaced
        self.calls: Counter[str] = Counter()

    def __call__(self, label: str) -> Secret[bytes]:
        self.calls[label] += 1
        return self.derive(label)


@pytest.fixture
def counted(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> _Counting:
    with transaction(runtime.sessions) as session:
        create_organization(session, runtime.key_provider, "Labo Dérivations")
    counting = _Counting(runtime.key_provider)
    monkeypatch.setattr(runtime.key_provider, "derive_key", counting)
    return counting


def test_requests_derive_each_key_once_per_process(runtime: Runtime, counted: _Counting) -> None:
    app = create_app(runtime.settings, runtime)
    with TestClient(app, base_url=ORIGIN) as client:
        for _ in range(5):
            assert client.get("/api/v1/auth/me").status_code == 401
            assert client.get("/compte/connexion").status_code == 200
            answer = client.post(
                "/api/v1/auth/login",
                json={"email": "personne@example.org", "password": "un mot de passe long"},
            )
            assert answer.status_code in (401, 429)  # throttled after a few: fine
    for label in (CSRF_LABEL, CODE_LABEL, CLIENT_ADDRESS_LABEL):
        assert counted.calls[label] == 1, (label, counted.calls)


def test_cached_keys_are_the_provider_s_own(runtime: Runtime) -> None:
    keys = DerivedKeys(runtime.key_provider)
    assert keys.get(CSRF_LABEL) is keys.get(CSRF_LABEL)
    assert keys.get(CSRF_LABEL).reveal() == runtime.key_provider.derive_key(CSRF_LABEL).reveal()
    assert keys.get(CODE_LABEL).reveal() != keys.get(CSRF_LABEL).reveal()
    assert repr(keys).startswith("DerivedKeys(labels=")
    # The runtime's hasher gives the same answers as one made from the provider.
    fresh = ClientAddressHasher.from_provider(runtime.key_provider)
    assert runtime.client_address_hasher("192.0.2.7") == fresh("192.0.2.7")
    assert runtime.client_address_hasher is runtime.client_address_hasher
