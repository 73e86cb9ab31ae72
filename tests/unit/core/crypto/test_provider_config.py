"""KeyProviderConfig: what crosses to worker processes, and what never does (the token)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from pydantic import SecretStr

from labvault.core.config import Settings
from labvault.core.crypto.errors import KeyProviderError
from labvault.core.crypto.providers import KeyProviderConfig, TransitKeyProvider, load_key_provider
from labvault.core.crypto.providers.transit import TransitOptions

SPEC = "transit:https://bao.internal:8200/kms/transit/labvault"


def _settings(tmp_path: Path, **options: object) -> Settings:
    return Settings(data_dir=tmp_path / "var", key_provider=SPEC, **options)  # type: ignore[arg-type]


def test_it_takes_the_transit_options_from_the_settings(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        transit_role_id="role",
        transit_secret_id_file=tmp_path / "secret-id",
        transit_ca_file=tmp_path / "ca.pem",
        transit_namespace="lab",
        transit_timeout_seconds=2,
        transit_retries=1,
    )
    config = KeyProviderConfig.from_settings(settings)
    assert config.spec == SPEC
    assert config.default_key_file == str(tmp_path / "var" / "keys" / "root.key")
    assert config.transit == TransitOptions(
        address="https://bao.internal:8200",
        mount="kms/transit",
        key="labvault",
        role_id="role",
        secret_id_file=str(tmp_path / "secret-id"),
        ca_file=str(tmp_path / "ca.pem"),
        namespace="lab",
        timeout_seconds=2,
        retries=1,
    )
    assert config.transit.derivation_key_name == "labvault-derivation"


def test_the_file_provider_needs_no_transit_options(tmp_path: Path) -> None:
    config = KeyProviderConfig.from_settings(Settings(data_dir=tmp_path / "var"))
    assert (config.spec, config.transit, config.previous_spec) == ("file:", None, None)


def test_an_inline_token_is_never_pickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABVAULT_TRANSIT_TOKEN", raising=False)
    config = KeyProviderConfig.from_settings(
        _settings(tmp_path, transit_token=SecretStr("s.inline-token"))
    )
    assert config.transit_token() is not None
    assert "inline-token" not in repr(config)
    shipped = pickle.dumps(config)
    assert b"inline-token" not in shipped
    received = pickle.loads(shipped)
    assert received == config
    assert received.transit_token() is None
    with pytest.raises(KeyProviderError, match="no credentials"):
        load_key_provider(received)
    monkeypatch.setenv("LABVAULT_TRANSIT_TOKEN", "s.from-the-environment")
    token = received.transit_token()
    assert token is not None
    assert token.reveal() == "s.from-the-environment"


def test_loading_does_not_contact_the_server(tmp_path: Path) -> None:
    config = KeyProviderConfig.from_settings(_settings(tmp_path, transit_token=SecretStr("t")))
    provider = load_key_provider(config)
    assert isinstance(provider, TransitKeyProvider)
    assert "'t'" not in repr(provider)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(provider)


def test_missing_tls_files_are_a_clear_error(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, transit_token=SecretStr("t"), transit_ca_file=tmp_path / "missing-ca.pem"
    )
    with pytest.raises(KeyProviderError, match="LABVAULT_TRANSIT_CA_FILE"):
        load_key_provider(KeyProviderConfig.from_settings(settings))
