"""labvault configured with LABVAULT_KEY_PROVIDER=transit:...: keyring, workers, chain, CLI."""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from typer.testing import CliRunner

from labvault.cli import app
from labvault.core.access.principals import SystemPrincipal
from labvault.core.config import Settings
from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.keyring import TenantKeyring
from labvault.core.crypto.models import DataKeyRecord, IndexKeyRecord
from labvault.core.crypto.providers import (
    FileKeyProvider,
    KeyProviderConfig,
    TransitKeyProvider,
    load_key_provider,
)
from labvault.core.crypto.providers.chain import KeyChain
from labvault.core.crypto.secret import Secret
from labvault.core.db import transaction
from labvault.core.runtime import Runtime
from labvault.organizations.services import create_organization
from labvault.patients.nir import Nir
from labvault.patients.services import PatientRepository
from labvault.patients.synthetic import synthetic_patient_rows, synthetic_patients
from openbao import TRANSIT_MOUNT, OpenBaoServer

pytestmark = pytest.mark.openbao


def _spec(openbao: OpenBaoServer, key: str) -> str:
    return f"transit:{openbao.address}/{TRANSIT_MOUNT}/{key}"


@pytest.fixture
def transit_runtime(
    tmp_path: Path,
    database_url: str,
    admin_database_url: str,
    openbao: OpenBaoServer,
    transit_provider: TransitKeyProvider,
) -> Iterator[Runtime]:
    settings = Settings(
        data_dir=tmp_path / "var",
        database_url=database_url,
        admin_database_url=admin_database_url,
        key_provider=_spec(openbao, transit_provider.options.key),
        transit_token=SecretStr(openbao.root_token),
    )
    runtime = Runtime(settings)
    yield runtime
    runtime.close()


def test_patients_round_trip_through_transit(transit_runtime: Runtime) -> None:
    runtime = transit_runtime
    assert isinstance(runtime.key_provider, TransitKeyProvider)
    people = list(synthetic_patients(3, seed=11))
    with transaction(runtime.sessions) as session:
        tenant = create_organization(session, runtime.key_provider, "Labo").id
        keyring = TenantKeyring(session, runtime.key_provider, tenant, SystemPrincipal("t:w"))
        created = PatientRepository(session, keyring).register_many(people).created
    with transaction(runtime.sessions) as session:
        keyring = TenantKeyring(session, runtime.key_provider, tenant, SystemPrincipal("t:r"))
        repository = PatientRepository(session, keyring)
        record = repository.get(created[0], purpose="care")
        assert record is not None
        assert record.birth_name == people[0].birth_name
        nir = people[1].nir
        assert nir is not None
        found = repository.find_by_nir(Nir.parse(nir.compact), purpose="care")
        assert [r.id for r in found] == [created[1]]
        blobs = [
            *session.scalars(select(DataKeyRecord.wrapped_key)),
            *session.scalars(select(IndexKeyRecord.wrapped_key)),
        ]
        providers = set(session.scalars(select(DataKeyRecord.provider)))
    assert blobs
    assert all(bytes(blob).startswith(b"vault:v1:") for blob in blobs)
    assert providers == {"transit"}


def test_worker_specs_carry_no_token_and_workers_read_it_from_their_environment(
    transit_runtime: Runtime, openbao: OpenBaoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = transit_runtime
    with transaction(runtime.sessions) as session:
        tenant = create_organization(session, runtime.key_provider, "Labo").id
        spec = runtime.sealer_spec(session, tenant)
    shipped = pickle.dumps(spec)
    assert openbao.root_token.encode() not in shipped
    received = pickle.loads(shipped)

    monkeypatch.delenv("LABVAULT_TRANSIT_TOKEN", raising=False)
    with pytest.raises(KeyProviderError, match="no credentials"):
        received.build()
    monkeypatch.setenv("LABVAULT_TRANSIT_TOKEN", openbao.root_token)
    sealer = received.build()
    assert isinstance(sealer.provider, TransitKeyProvider)
    keys, rows = sealer.new_data_keys("patient", [uuid.uuid4()])
    assert len(keys) == len(rows) == 1


def test_a_token_file_and_a_previous_file_provider_make_a_key_chain(
    tmp_path: Path, openbao: OpenBaoServer, transit_provider: TransitKeyProvider
) -> None:
    old = FileKeyProvider.create(tmp_path / "keys" / "root.key")
    old_blob = old.wrap(Secret(b"k" * 32), "ctx")
    token_file = tmp_path / "bao-token"
    token_file.write_text(openbao.root_token + "\n")
    settings = Settings(
        data_dir=tmp_path / "var",
        key_provider=_spec(openbao, transit_provider.options.key),
        previous_key_provider=f"file:{old.path}",
        transit_token_file=token_file,
    )
    config = KeyProviderConfig.from_settings(settings)
    assert pickle.loads(pickle.dumps(config)) == config
    chain = load_key_provider(config)
    assert isinstance(chain, KeyChain)
    assert chain.unwrap(old_blob, "ctx") == Secret(b"k" * 32)
    new_blob = chain.wrap(Secret(b"n" * 32), "ctx")
    assert new_blob.startswith(b"vault:v1:")
    assert chain.unwrap(new_blob, "ctx") == Secret(b"n" * 32)
    [moved] = chain.rewrap_many([(old_blob, "ctx")])
    assert transit_provider.unwrap(moved, "ctx") == Secret(b"k" * 32)


def test_init_creates_the_transit_keys_then_find_works_end_to_end(
    cli_env: Settings, openbao: OpenBaoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = f"labvault-{uuid.uuid4().hex[:12]}"
    token_file = tmp_path / "bao-token"
    token_file.write_text(openbao.root_token)
    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", _spec(openbao, key))
    monkeypatch.setenv("LABVAULT_TRANSIT_TOKEN_FILE", str(token_file))
    runner = CliRunner()

    result = runner.invoke(app, ["init", "--organization", "Labo"])
    assert result.exit_code == 0, result.output
    assert openbao.request("GET", f"transit/keys/{key}")["data"]["derived"] is True
    assert openbao.request("GET", f"transit/keys/{key}-derivation")["data"]["type"] == "hmac"

    result = runner.invoke(app, ["seed", "--patients", "5", "--seed", "3"])
    assert result.exit_code == 0, result.output
    row = next(synthetic_patient_rows(5, seed=3))
    result = runner.invoke(app, ["patients", "find", "--nir", str(row["nir"])])
    assert result.exit_code == 0, result.output
    assert "1 patient(s)" in result.output
    other = next(synthetic_patient_rows(1, seed=99))
    result = runner.invoke(app, ["patients", "find", "--nir", str(other["nir"])])
    assert result.exit_code == 1, result.output
    assert "No matching patient" in result.output
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 0, result.output


def test_keys_migrate_between_transit_keys_is_refused_and_retire_destroy_trims(
    cli_env: Settings,
    openbao: OpenBaoServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    runtime: Runtime,
) -> None:
    key = f"labvault-{uuid.uuid4().hex[:12]}"
    token_file = tmp_path / "bao-token"
    token_file.write_text(openbao.root_token)
    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", _spec(openbao, key))
    monkeypatch.setenv("LABVAULT_TRANSIT_TOKEN_FILE", str(token_file))
    runner = CliRunner()
    for command in (["init", "--organization", "Labo"], ["seed", "--patients", "3"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
    with runtime.sessions() as session:
        wrapped = sorted(bytes(b) for b in session.scalars(select(DataKeyRecord.wrapped_key)))

    # Transit blobs do not name their key: the other key's would look like this one's.
    other = f"labvault-{uuid.uuid4().hex[:12]}"
    refused = runner.invoke(app, ["keys", "migrate", "--to", _spec(openbao, other)])
    assert refused.exit_code == 1, refused.output
    text = " ".join(refused.output.split())
    assert "rotating the key instead" in text
    assert "Nothing was changed." in text
    with runtime.sessions() as session:
        assert sorted(bytes(b) for b in session.scalars(select(DataKeyRecord.wrapped_key))) == (
            wrapped
        )
    unknown = httpx.get(
        f"{openbao.address}/v1/transit/keys/{other}",
        headers={"X-Vault-Token": openbao.root_token},
    )
    assert unknown.status_code == 404, "the target key was not even created"

    for command in (["keys", "rotate"], ["keys", "rewrap"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
    destroyed = runner.invoke(app, ["keys", "retire", "--destroy"])
    assert destroyed.exit_code == 0, destroyed.output
    text = " ".join(destroyed.output.split())
    assert f"Retired transit:{key}:v1" in text
    assert f"Destroyed transit:{key}:v1: deleted from the key provider for good" in text
    data = openbao.request("GET", f"transit/keys/{key}")["data"]
    assert (data["min_available_version"], data["min_decryption_version"]) == (2, 2)
    again = runner.invoke(app, ["keys", "retire", "--destroy"])
    assert again.exit_code == 0, again.output
    assert "No retired root key version left to destroy." in again.output
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 0, result.output
