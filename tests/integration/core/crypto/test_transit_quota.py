"""The decrypt quota as a second ceiling on KEYS, not only requests (docs/keys.md, issue 9).

OpenBao's rate-limit quota counts requests; the online cap on keys per decrypt request
(``LABVAULT_TRANSIT_UNWRAP_BATCH``) makes "rate x cap" a bound on keys, and a dedicated
listener's ``max_request_size`` holds that bound even against the application's own token.
Real OpenBao dev servers throughout.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from labvault.core.access.principals import SystemPrincipal
from labvault.core.config import Settings
from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.keyring import TenantKeyring, data_key_context
from labvault.core.crypto.providers import KeyProviderConfig, TransitKeyProvider
from labvault.core.crypto.providers.transit import (
    BATCH_SIZE,
    ONLINE_UNWRAP_BATCH,
    KeyProviderThrottledError,
    TransitOptions,
)
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patients
from openbao import TRANSIT_MOUNT, OpenBaoServer, free_port

pytestmark = pytest.mark.openbao

APP_LISTENER_MAX_REQUEST_SIZE = 6400
"""docs/keys.md: the app listener's ``max_request_size``; 20 keys fit, 21 do not."""


def _keys(count: int) -> list[tuple[Secret[bytes], str]]:
    """Distinct data keys with production-shaped contexts (the request size depends on it)."""
    tenant = uuid.uuid4()
    return [
        (Secret(os.urandom(32)), data_key_context(tenant, "patient", uuid.uuid4(), uuid.uuid4()))
        for _ in range(count)
    ]


@contextmanager
def _decrypt_quota(
    openbao: OpenBaoServer, key: str, *, rate: int, interval: str = "1m"
) -> Iterator[None]:
    """docs/keys.md's quota on ``transit/decrypt/<key>``, blocking for the rest of the test."""
    name = f"decrypt-{key}"
    openbao.request(
        "POST",
        f"sys/quotas/rate-limit/{name}",
        {
            "path": f"{TRANSIT_MOUNT}/decrypt/{key}",
            "rate": rate,
            "interval": interval,
            "block_interval": "1m",
        },
    )
    try:
        yield
    finally:
        openbao.request("DELETE", f"sys/quotas/rate-limit/{name}")


def test_the_online_cap_is_a_setting_distinct_from_the_bulk_batch(tmp_path: Path) -> None:
    assert ONLINE_UNWRAP_BATCH == 20 < BATCH_SIZE == 200
    settings = Settings(
        data_dir=tmp_path,
        key_provider="transit:http://127.0.0.1:8200/transit/labvault",
        transit_token=SecretStr("t"),
        transit_unwrap_batch=7,
    )
    options = KeyProviderConfig.from_settings(settings).transit
    assert options is not None
    assert options.unwrap_batch == 7
    default = Settings(
        data_dir=tmp_path, key_provider=settings.key_provider, transit_token=SecretStr("t")
    )
    default_options = KeyProviderConfig.from_settings(default).transit
    assert default_options is not None
    assert default_options.unwrap_batch == ONLINE_UNWRAP_BATCH
    for wrong in (0, BATCH_SIZE + 1):
        with pytest.raises(ValueError, match="unwrap_batch"):
            TransitOptions(address="http://127.0.0.1:8200", mount="t", key="k", unwrap_batch=wrong)
        with pytest.raises(ValueError, match="unwrap_batch"):
            Settings(data_dir=tmp_path, transit_unwrap_batch=wrong)


def test_a_loop_of_unwraps_opens_at_most_rate_times_cap_keys(
    openbao: OpenBaoServer, transit_provider: TransitKeyProvider
) -> None:
    key = transit_provider.options.key
    items = _keys(60)
    wrapped = transit_provider.wrap_many(items)  # encrypt: not under the decrypt quota
    rate, cap, page_size = 3, 5, 10
    pages = [
        [
            (blob, context)
            for blob, (_, context) in zip(
                wrapped[i : i + page_size], items[i : i + page_size], strict=True
            )
        ]
        for i in range(0, len(items), page_size)
    ]
    with _decrypt_quota(openbao, key, rate=rate):
        # The app as configured: at most `cap` keys a request, no retries (the refusal as seen
        # at once). Wrapping goes on (registrations) whatever the decrypt quota says.
        app = openbao.provider(key, retries=0, unwrap_batch=cap)
        opened: list[Secret[bytes]] = []
        refusals: list[KeyProviderThrottledError] = []
        for page in pages:  # a scraper walking page after page of distinct patients
            try:
                opened.extend(app.unwrap_many(page))
            except KeyProviderThrottledError as refused:
                refusals.append(refused)
        # A page of 10 is two requests of 5: the first page passes, the second gets its
        # first half (request 3) and then 429, so it fails whole; then 429 until the block
        # ends. OpenBao decrypted rate x cap = 15 keys; the caller got 10. Without the cap,
        # three pages of 10 (30 keys) would have passed.
        assert len(opened) == page_size <= rate * cap
        assert opened == [material for material, _ in items[:page_size]]
        assert len(refusals) == len(pages) - 1
        # One call asking for everything at once is cut into capped requests: refused too.
        everything = [(blob, context) for blob, (_, context) in zip(wrapped, items, strict=True)]
        with pytest.raises(KeyProviderThrottledError) as whole:
            app.unwrap_many(everything)
        refusals.append(whole.value)
        app.wrap_many(items[:3])
    for refused in refusals:
        message = str(refused)
        assert "429" in message
        assert "nothing was returned" in message
        assert isinstance(refused, KeyProviderError)  # fails closed wherever that is handled
        for material, context in items:
            assert base64.b64encode(material.reveal()).decode() not in message
            assert context not in message


def test_without_the_cap_one_allowed_request_opens_a_whole_batch(
    openbao: OpenBaoServer, transit_provider: TransitKeyProvider
) -> None:
    """Why the cap: the quota alone counts requests; a 200-key batch is one request."""
    key = transit_provider.options.key
    items = _keys(60)
    wrapped = transit_provider.wrap_many(items)
    pairs = [(blob, context) for blob, (_, context) in zip(wrapped, items, strict=True)]
    with _decrypt_quota(openbao, key, rate=1):
        bulk = openbao.provider(key, retries=0, unwrap_batch=BATCH_SIZE)
        assert bulk.unwrap_many(pairs) == [material for material, _ in items]
        with pytest.raises(KeyProviderThrottledError):
            bulk.unwrap_many(pairs[:1])


@pytest.mark.parametrize("backend", ["sqlite"])  # nothing differs on PostgreSQL
def test_a_read_over_the_quota_is_refused_whole_through_the_keyring(
    tmp_path: Path,
    database_url: str,
    admin_database_url: str,
    openbao: OpenBaoServer,
    transit_provider: TransitKeyProvider,
) -> None:
    """Configured by the settings: 10 patients take 2 capped requests of 5; then a read of 12
    needs 3 with room for 1, and is refused whole (no partial page, nothing in the message)."""
    key = transit_provider.options.key
    settings = Settings(
        data_dir=tmp_path / "var",
        database_url=database_url,
        admin_database_url=admin_database_url,
        key_provider=f"transit:{openbao.address}/{TRANSIT_MOUNT}/{key}",
        transit_token=SecretStr(openbao.root_token),
        transit_retries=0,
        transit_unwrap_batch=5,
    )
    runtime = Runtime(settings)
    try:
        people = list(synthetic_patients(12, seed=29))
        with transaction(runtime.sessions) as session:
            tenant = create_organization(session, runtime.key_provider, "Labo").id
            writer = TenantKeyring(session, runtime.key_provider, tenant, SystemPrincipal("t:w"))
            result = PatientRepository(session, writer).register_many(people)
            created = [result.created[i] for i in range(len(people))]
        with _decrypt_quota(openbao, key, rate=3):
            with transaction(runtime.sessions) as session:
                keyring = TenantKeyring(
                    session, runtime.key_provider, tenant, SystemPrincipal("t:r")
                )
                records = PatientRepository(session, keyring).get_many(created[:10], purpose="care")
                assert len(records) == 10  # two requests of 5 keys: one left
            with transaction(runtime.sessions) as session:
                keyring = TenantKeyring(
                    session, runtime.key_provider, tenant, SystemPrincipal("t:r")
                )
                repository = PatientRepository(session, keyring)
                with pytest.raises(KeyProviderThrottledError) as refused:
                    repository.get_many(created, purpose="care")
        message = str(refused.value)
        for person, patient_id in zip(people, created, strict=True):
            assert person.birth_name not in message
            assert str(patient_id) not in message
            assert str(tenant) not in message
    finally:
        runtime.close()


# --- a dedicated listener for the application -------------------------------------------------


class _TwoListenerOpenBao(OpenBaoServer):
    """A dev server with a second listener for the app, bounded by ``max_request_size``."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        super().__init__(binary, workdir)
        self.app_port = self.cluster_port = 0

    @property
    def app_address(self) -> str:
        return f"http://127.0.0.1:{self.app_port}"

    def pick_ports(self) -> None:
        super().pick_ports()
        self.app_port, self.cluster_port = free_port(), free_port()

    def extra_config(self) -> str:
        return (
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.app_port}"\n'
            f'  cluster_address = "127.0.0.1:{self.cluster_port}"\n  tls_disable = true\n'
            f"  max_request_size = {APP_LISTENER_MAX_REQUEST_SIZE}\n}}\n"
        )

    def extra_ready(self) -> bool:
        return _answers(self.app_address)


def _answers(address: str) -> bool:
    try:
        return httpx.get(f"{address}/v1/sys/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def two_listeners(
    openbao: OpenBaoServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[_TwoListenerOpenBao]:
    server = _TwoListenerOpenBao(openbao.binary, tmp_path_factory.mktemp("openbao-2l"))
    server.start()
    yield server
    server.stop()


def test_the_app_listener_refuses_a_batch_larger_than_the_cap(
    two_listeners: _TwoListenerOpenBao,
) -> None:
    """Even the app's own token (here a compromised app's code asking for 21 keys a request)
    cannot batch past what the listener takes; the operator's listener takes 200."""
    server = two_listeners
    key = f"labvault-{uuid.uuid4().hex[:12]}"
    operator = server.provider(key, unwrap_batch=BATCH_SIZE)
    operator.ensure_keys()
    items = _keys(BATCH_SIZE)
    wrapped = operator.wrap_many(items)
    pairs = [(blob, context) for blob, (_, context) in zip(wrapped, items, strict=True)]
    expected = [material for material, _ in items]
    assert operator.unwrap_many(pairs) == expected  # one request of 200 keys

    def on_app_listener(cap: int) -> TransitKeyProvider:
        options = TransitOptions(
            address=server.app_address, mount=TRANSIT_MOUNT, key=key, unwrap_batch=cap, retries=0
        )
        return TransitKeyProvider(options, token=Secret(server.root_token))

    app = on_app_listener(ONLINE_UNWRAP_BATCH)
    assert app.unwrap_many(pairs[:ONLINE_UNWRAP_BATCH]) == expected[:ONLINE_UNWRAP_BATCH]
    for cap in (ONLINE_UNWRAP_BATCH + 1, BATCH_SIZE):
        with pytest.raises(KeyProviderError, match="413") as refused:
            on_app_listener(cap).unwrap_many(pairs[:cap])
        assert not any(
            base64.b64encode(material.reveal()).decode() in str(refused.value)
            for material in expected
        )
