"""Settings: safe embedded defaults, LABVAULT_* overrides, clear configuration errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labvault.core.config import (
    ConfigurationError,
    Settings,
    key_provider_problem,
    load_settings,
    parse_transit_spec,
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No LABVAULT_* variable from the caller's shell, and ./ is a fresh directory."""
    for name in list(os.environ):
        if name.upper().startswith("LABVAULT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- defaults -----------------------------------------------------------------------------------


def test_defaults(clean_environment: Path) -> None:
    settings = load_settings()
    data_dir = (clean_environment / "var").resolve()
    assert settings.data_dir == Path("./var")
    assert settings.resolved_data_dir == data_dir
    assert settings.database_url is None
    assert settings.sqlalchemy_url == f"sqlite:///{data_dir / 'db' / 'labvault.sqlite3'}"
    assert settings.is_sqlite
    assert settings.key_provider == "file:"
    assert settings.key_file == data_dir / "keys" / "root.key"
    assert settings.environment == "development"
    assert settings.log_level == "info"
    assert settings.log_format == "console"
    assert settings.behind_tls is False


def test_key_file_is_not_inside_the_database_directory() -> None:
    settings = load_settings()
    database_dir = Path(settings.sqlalchemy_url.removeprefix("sqlite:///")).parent
    assert database_dir not in settings.key_file.parents
    assert settings.key_file.parent.parent == database_dir.parent


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(Exception, match="frozen"):
        settings.environment = "production"  # type: ignore[misc]


# --- environment overrides ----------------------------------------------------------------------


def test_data_dir_override_moves_database_and_key_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LABVAULT_DATA_DIR", str(tmp_path / "state"))
    settings = load_settings()
    state = (tmp_path / "state").resolve()
    assert settings.resolved_data_dir == state
    assert settings.sqlalchemy_url == f"sqlite:///{state / 'db' / 'labvault.sqlite3'}"
    assert settings.key_file == state / "keys" / "root.key"


def test_data_dir_expands_the_home_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LABVAULT_DATA_DIR", "~/labvault")
    assert load_settings().resolved_data_dir == (tmp_path / "home" / "labvault").resolve()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///tmp/x.sqlite3",
        "sqlite://",
        "postgresql+psycopg://labvault@127.0.0.1:5432/labvault",
        "postgresql+psycopg://u:p@db.internal/labvault?sslmode=require",
    ],
)
def test_database_url_override(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("LABVAULT_DATABASE_URL", url)
    settings = load_settings()
    assert settings.database_url == url
    assert settings.sqlalchemy_url == url
    assert settings.is_sqlite is url.startswith("sqlite")


def test_empty_database_url_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABVAULT_DATABASE_URL", "")
    settings = load_settings()
    assert settings.database_url is None
    assert settings.sqlalchemy_url.startswith("sqlite:///")


def test_key_provider_with_a_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "root.key"
    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", f"file:{path}")
    settings = load_settings()
    assert settings.key_provider == f"file:{path}"
    assert settings.key_file == path.resolve()


def test_relative_key_file_is_resolved(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", "file:keys/other.key")
    assert load_settings().key_file == (tmp_path / "keys" / "other.key").resolve()


def test_other_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LABVAULT_ENVIRONMENT", "production")
    # Production refuses a key file inside the data directory (./var), so point it elsewhere.
    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", f"file:{tmp_path / 'secrets' / 'root.key'}")
    monkeypatch.setenv("LABVAULT_LOG_LEVEL", "warning")
    monkeypatch.setenv("LABVAULT_LOG_FORMAT", "json")
    monkeypatch.setenv("LABVAULT_BEHIND_TLS", "true")
    settings = load_settings()
    assert settings.environment == "production"
    assert settings.log_level == "warning"
    assert settings.log_format == "json"
    assert settings.behind_tls is True


def test_explicit_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABVAULT_ENVIRONMENT", "production")
    assert load_settings(environment="test").environment == "test"


def test_unrelated_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABVAULT_SOMETHING_ELSE", "x")
    monkeypatch.setenv("DATABASE_URL", "mysql://elsewhere/db")
    assert load_settings().sqlalchemy_url.startswith("sqlite:///")


# --- configuration errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "mysql://root:hunter2@db/labvault",
        "mysql+pymysql://root@db/labvault",
        "postgresql://labvault:hunter2@127.0.0.1/labvault",
        "postgres://labvault@127.0.0.1/labvault",
        "oracle://x",
        "not a url",
    ],
)
def test_bad_database_url_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("LABVAULT_DATABASE_URL", url)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    message = str(caught.value)
    assert "LABVAULT_DATABASE_URL" in message
    assert "postgresql+psycopg://" in message
    # The URL (and its password) is never echoed back.
    assert "hunter2" not in message
    assert url not in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_admin_database_url_defaults_to_the_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    app = "postgresql+psycopg://labvault_app@db:5432/labvault"
    monkeypatch.setenv("LABVAULT_DATABASE_URL", app)
    assert load_settings().sqlalchemy_admin_url == app
    owner = "postgresql+psycopg://labvault_owner@db:5432/labvault"
    monkeypatch.setenv("LABVAULT_ADMIN_DATABASE_URL", owner)
    settings = load_settings()
    assert (settings.sqlalchemy_url, settings.sqlalchemy_admin_url) == (app, owner)


def test_admin_database_url_must_reach_the_same_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LABVAULT_ADMIN_DATABASE_URL", "postgresql+psycopg://owner@db/labvault")
    with pytest.raises(ConfigurationError, match="LABVAULT_ADMIN_DATABASE_URL must reach"):
        load_settings()
    monkeypatch.setenv("LABVAULT_ADMIN_DATABASE_URL", "postgresql://owner@db/labvault")
    with pytest.raises(ConfigurationError, match=r"LABVAULT_ADMIN_DATABASE_URL: .*psycopg 3"):
        load_settings()


def test_postgresql_without_psycopg_names_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABVAULT_DATABASE_URL", "postgresql://labvault@127.0.0.1/labvault")
    with pytest.raises(ConfigurationError, match="psycopg 3"):
        load_settings()


@pytest.mark.parametrize(
    "url",
    ["postgresql+psycopg2://labvault@127.0.0.1/labvault", "postgresql+psycopgx://h/db"],
)
def test_other_postgresql_drivers_are_refused(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    # BUG (src/labvault/core/config.py:50): `startswith("postgresql+psycopg")` also accepts
    # "postgresql+psycopg2://" (psycopg 2, not installed), which then fails later with an
    # import error instead of this clear message. Fix: compare the scheme exactly, e.g.
    # `value.split("://", 1)[0] == "postgresql+psycopg"`.
    monkeypatch.setenv("LABVAULT_DATABASE_URL", url)
    with pytest.raises(ConfigurationError, match="LABVAULT_DATABASE_URL"):
        load_settings()


@pytest.mark.parametrize(
    "spec",
    ["vault:transit/labvault", "file", "", "/etc/labvault/root.key", "FILE:", "memory:", "s3:x"],
)
def test_bad_key_provider_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, spec: str
) -> None:
    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", spec)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    message = str(caught.value)
    assert "LABVAULT_KEY_PROVIDER" in message
    assert "file:" in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LABVAULT_ENVIRONMENT", "staging"),
        ("LABVAULT_LOG_LEVEL", "verbose"),
        ("LABVAULT_LOG_FORMAT", "xml"),
        ("LABVAULT_BEHIND_TLS", "perhaps"),
    ],
)
def test_other_bad_values_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable):
        load_settings()


def test_several_errors_are_reported_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABVAULT_DATABASE_URL", "mysql://db/labvault")
    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", "vault:x")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("Invalid configuration:")
    assert "LABVAULT_DATABASE_URL" in message
    assert "LABVAULT_KEY_PROVIDER" in message


def test_overrides_are_validated_too() -> None:
    with pytest.raises(ConfigurationError, match="LABVAULT_DATABASE_URL"):
        load_settings(database_url="mysql://db/labvault")


def test_settings_class_raises_validation_errors_directly() -> None:
    """load_settings is the friendly entry point; Settings itself stays pydantic."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Settings(database_url="mysql://db/labvault")


# --- production: the key file lives outside the data directory ---------------------------------

PRODUCTION_KEY_MESSAGE = (
    "LABVAULT_KEY_PROVIDER: in production the key file must live outside LABVAULT_DATA_DIR "
    "(a backup of the data directory would carry the key); "
    "set LABVAULT_KEY_PROVIDER=file:/path/outside"
)


def test_production_refuses_the_default_key_file_in_the_data_dir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LABVAULT_ENVIRONMENT", "production")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert str(caught.value) == "Invalid configuration:\n  " + PRODUCTION_KEY_MESSAGE
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


@pytest.mark.parametrize(
    "spec",
    ["file:{data}/keys/root.key", "file:{data}/root.key", "file:{data}/db/../x/root.key"],
)
def test_production_refuses_an_explicit_key_file_inside_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, spec: str
) -> None:
    data = tmp_path / "state"
    monkeypatch.setenv("LABVAULT_ENVIRONMENT", "production")
    monkeypatch.setenv("LABVAULT_DATA_DIR", str(data))
    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", spec.format(data=data))
    with pytest.raises(ConfigurationError, match="must live outside LABVAULT_DATA_DIR"):
        load_settings()


def test_production_refuses_a_relative_key_file_that_resolves_into_the_data_dir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ./var is the default data dir; the relative path lands inside it once resolved.
    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", "file:var/secrets/root.key")
    with pytest.raises(ConfigurationError, match="LABVAULT_KEY_PROVIDER"):
        load_settings(environment="production")


def test_production_refuses_a_symlink_into_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = tmp_path / "state"
    (data / "keys").mkdir(parents=True)
    (tmp_path / "outside").symlink_to(data / "keys")
    monkeypatch.setenv("LABVAULT_DATA_DIR", str(data))
    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", f"file:{tmp_path / 'outside' / 'root.key'}")
    with pytest.raises(ConfigurationError, match="LABVAULT_KEY_PROVIDER"):
        load_settings(environment="production")


def test_production_accepts_a_key_file_outside_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = tmp_path / "state"
    key = tmp_path / "secrets" / "root.key"
    monkeypatch.setenv("LABVAULT_ENVIRONMENT", "production")
    monkeypatch.setenv("LABVAULT_DATA_DIR", str(data))
    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", f"file:{key}")
    settings = load_settings()
    assert settings.environment == "production"
    assert settings.key_file == key.resolve()
    assert settings.resolved_data_dir not in settings.key_file.parents


def test_production_accepts_a_sibling_whose_name_starts_like_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A path comparison, not a string prefix: /x/var-keys is not inside /x/var.
    monkeypatch.setenv("LABVAULT_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", f"file:{tmp_path / 'var-keys' / 'root.key'}")
    assert load_settings(environment="production").environment == "production"


@pytest.mark.parametrize("environment", ["development", "test"])
def test_development_and_test_keep_the_default_key_file(environment: str) -> None:
    settings = load_settings(environment=environment)
    assert settings.key_file == settings.resolved_data_dir / "keys" / "root.key"


def test_production_key_check_is_reported_with_other_errors_fixed_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The cross-setting check runs once every field is valid; a bad field is reported alone.
    monkeypatch.setenv("LABVAULT_ENVIRONMENT", "production")
    monkeypatch.setenv("LABVAULT_DATABASE_URL", "mysql://db/labvault")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert "LABVAULT_DATABASE_URL" in str(caught.value)


def test_settings_class_refuses_the_production_default_directly() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must live outside LABVAULT_DATA_DIR"):
        Settings(environment="production")


# --- the Transit key provider -------------------------------------------------------------------

TRANSIT = "transit:https://bao.internal:8200/transit/labvault"


@pytest.mark.parametrize(
    ("spec", "address", "mount", "key"),
    [
        (TRANSIT, "https://bao.internal:8200", "transit", "labvault"),
        ("transit:https://kms.example/ns/lab/transit/app-key", "https://kms.example",
         "ns/lab/transit", "app-key"),
        ("transit:http://127.0.0.1:8200/transit/k", "http://127.0.0.1:8200", "transit", "k"),
        ("transit:http://localhost:8200/transit/k.v2", "http://localhost:8200", "transit", "k.v2"),
        ("transit:http://[::1]:8200/t_1/k", "http://[::1]:8200", "t_1", "k"),
    ],
)  # fmt: skip
def test_transit_specs_name_address_mount_and_key(
    spec: str, address: str, mount: str, key: str
) -> None:
    where = parse_transit_spec(spec)
    assert (where.address, where.mount, where.key) == (address, mount, key)
    assert key_provider_problem(spec) is None


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("transit:", "an http(s) address"),
        ("transit:bao.internal:8200/transit/labvault", "an http(s) address"),
        ("transit:ftp://bao.internal/transit/labvault", "an http(s) address"),
        ("transit:https://bao.internal:8200", "mount path and the key name are missing"),
        ("transit:https://bao.internal:8200/labvault", "mount path and the key name are missing"),
        ("transit:https://bao.internal:8200/transit/labvault/", "are missing"),
        ("transit:https://bao.internal:8200/transit//labvault", "letters, digits"),
        ("transit:https://bao.internal:8200/transit/lab vault", "letters, digits"),
        ("transit:https://bao.internal:8200/transit/../labvault", "letters, digits"),
        ("transit:https://bao.internal:99999/transit/labvault", "malformed"),
        ("transit:https://root:s3cret@bao.internal/transit/labvault", "no credentials"),
        ("transit:https://bao.internal/transit/labvault?token=x", "no credentials"),
        ("transit:http://bao.internal:8200/transit/labvault", "only allowed to a loopback"),
        ("transit:http://10.0.0.8:8200/transit/labvault", "only allowed to a loopback"),
    ],
)
def test_bad_transit_specs_say_what_is_wrong(
    monkeypatch: pytest.MonkeyPatch, spec: str, problem: str
) -> None:
    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", spec)
    monkeypatch.setenv("LABVAULT_TRANSIT_TOKEN_FILE", "/run/secrets/bao-token")
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    message = str(caught.value)
    assert "LABVAULT_KEY_PROVIDER" in message
    assert problem in message
    assert "s3cret" not in message


def test_a_transit_provider_reads_its_options_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", TRANSIT)
    monkeypatch.setenv("LABVAULT_TRANSIT_ROLE_ID", "role-1")
    monkeypatch.setenv("LABVAULT_TRANSIT_SECRET_ID_FILE", str(tmp_path / "secret-id"))
    monkeypatch.setenv("LABVAULT_TRANSIT_CA_FILE", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("LABVAULT_TRANSIT_NAMESPACE", "lab")
    monkeypatch.setenv("LABVAULT_TRANSIT_TIMEOUT_SECONDS", "2.5")
    monkeypatch.setenv("LABVAULT_TRANSIT_RETRIES", "1")
    monkeypatch.setenv("LABVAULT_TRANSIT_DERIVATION_KEY", "labvault-derive")
    settings = load_settings()
    assert settings.transit_role_id == "role-1"
    assert settings.transit_secret_id_file == tmp_path / "secret-id"
    assert settings.transit_ca_file == tmp_path / "ca.pem"
    assert (settings.transit_namespace, settings.transit_approle_mount) == ("lab", "approle")
    assert (settings.transit_timeout_seconds, settings.transit_retries) == (2.5, 1)
    assert settings.transit_derivation_key == "labvault-derive"


def test_the_inline_transit_token_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", TRANSIT)
    monkeypatch.setenv("LABVAULT_TRANSIT_TOKEN", "s.very-secret-token")
    settings = load_settings()
    assert settings.transit_token is not None
    assert settings.transit_token.get_secret_value() == "s.very-secret-token"
    assert "very-secret" not in repr(settings)


@pytest.mark.parametrize(
    ("variables", "problem"),
    [
        ({}, "needs one way to authenticate"),
        (
            {"LABVAULT_TRANSIT_TOKEN": "t", "LABVAULT_TRANSIT_TOKEN_FILE": "/run/t"},
            "needs one way to authenticate",
        ),
        ({"LABVAULT_TRANSIT_ROLE_ID": "r"}, "needs both LABVAULT_TRANSIT_ROLE_ID"),
        ({"LABVAULT_TRANSIT_SECRET_ID_FILE": "/run/s"}, "needs both LABVAULT_TRANSIT_ROLE_ID"),
        (
            {"LABVAULT_TRANSIT_TOKEN_FILE": "/run/t", "LABVAULT_TRANSIT_CLIENT_CERT_FILE": "/c"},
            "LABVAULT_TRANSIT_CLIENT_KEY_FILE",
        ),
        (
            {"LABVAULT_TRANSIT_TOKEN_FILE": "/run/t", "LABVAULT_TRANSIT_DERIVATION_KEY": "a/b"},
            "LABVAULT_TRANSIT_DERIVATION_KEY",
        ),
        ({"LABVAULT_TRANSIT_TOKEN_FILE": "/run/t", "LABVAULT_TRANSIT_RETRIES": "50"}, "RETRIES"),
    ],
    ids=["none", "two", "role-only", "secret-only", "cert-only", "bad-name", "retries"],
)
def test_transit_credentials_and_options_are_checked(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], problem: str
) -> None:
    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", TRANSIT)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=problem):
        load_settings()


def test_transit_credentials_are_not_required_by_the_file_provider() -> None:
    assert load_settings().transit_token is None


def test_production_with_transit_has_no_key_file_to_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABVAULT_ENVIRONMENT", "production")
    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", TRANSIT)
    monkeypatch.setenv("LABVAULT_TRANSIT_TOKEN_FILE", "/run/secrets/bao-token")
    assert load_settings().key_provider == TRANSIT


def test_the_previous_key_provider_takes_the_same_syntax(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", TRANSIT)
    monkeypatch.setenv("LABVAULT_PREVIOUS_KEY_PROVIDER", "file:")
    monkeypatch.setenv("LABVAULT_TRANSIT_TOKEN_FILE", "/run/secrets/bao-token")
    assert load_settings().previous_key_provider == "file:"
    monkeypatch.setenv("LABVAULT_PREVIOUS_KEY_PROVIDER", "vault:old")
    with pytest.raises(ConfigurationError, match="LABVAULT_PREVIOUS_KEY_PROVIDER"):
        load_settings()
    monkeypatch.setenv("LABVAULT_PREVIOUS_KEY_PROVIDER", TRANSIT)
    with pytest.raises(ConfigurationError, match="must differ"):
        load_settings()


def test_every_key_provider_setting_is_described() -> None:
    names = [n for n in Settings.model_fields if n.startswith(("transit_", "previous_key"))]
    assert len(names) == 14
    for name in names:
        assert Settings.model_fields[name].description, name


def test_the_previous_key_provider_cannot_be_another_transit_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Transit blobs ("vault:v<n>:...") do not name their key: the two could not be told apart.
    monkeypatch.setenv("LABVAULT_KEY_PROVIDER", TRANSIT)
    monkeypatch.setenv("LABVAULT_PREVIOUS_KEY_PROVIDER", TRANSIT.replace("/labvault", "/old"))
    monkeypatch.setenv("LABVAULT_TRANSIT_TOKEN_FILE", "/run/secrets/bao-token")
    with pytest.raises(ConfigurationError, match="rotating the key instead"):
        load_settings()
