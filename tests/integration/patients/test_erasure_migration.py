"""Migration 0013 on a populated database, both backends: ``patients.data_key_id`` becomes
nullable without rebuilding the table (on SQLite a rebuild would fire the ON DELETE CASCADE
of appointments and every other table pointing at patients), and it goes back down while no
record is erased; once one is, the downgrade refuses and changes nothing."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, text

from access_world import World, build_world
from labvault.core.access.principals import SystemPrincipal
from labvault.core.db import create_db_engine, transaction
from labvault.core.migrate import alembic_config, current_revision, upgrade
from labvault.core.runtime import Runtime
from labvault.patients.erasure import KeylessKeyring, erase_patient
from labvault.patients.models import ErasureRequester

COUNTED = ("patients", "appointments", "data_keys", "account_dependents", "identity_checks")


def _downgrade(engine: Engine, revision: str) -> None:
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def _counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table: int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in COUNTED
        }


def _data_key_id_nullable(engine: Engine) -> bool:
    columns = {c["name"]: c for c in inspect(engine).get_columns("patients")}
    return bool(columns["data_key_id"]["nullable"])


@pytest.fixture
def world(runtime: Runtime) -> World:
    return build_world(runtime)


def test_0013_keeps_every_row_both_ways(world: World, admin_database_url: str) -> None:
    owner = create_db_engine(admin_database_url)
    try:
        before = _counts(owner)
        assert before["appointments"] > 0
        assert _data_key_id_nullable(owner)
        _downgrade(owner, "0012")
        assert current_revision(owner) == "0012"
        assert not _data_key_id_nullable(owner)
        assert "legal_holds" not in inspect(owner).get_table_names()
        assert _counts(owner) == before
        upgrade(owner)
        assert _data_key_id_nullable(owner)
        assert _counts(owner) == before, "no row lost to a cascade"
    finally:
        owner.dispose()


def test_0013_cannot_be_undone_once_a_record_is_erased(
    world: World, admin_database_url: str
) -> None:
    with transaction(world.sessions) as session:
        keyring = KeylessKeyring(session, world.tenant, SystemPrincipal("test:migration"))
        erase_patient(session, keyring, world.patients["tomorrow"], ErasureRequester.CLI)
    owner = create_db_engine(admin_database_url)
    try:
        before = _counts(owner)
        head = current_revision(owner)
        with pytest.raises(RuntimeError, match="erased patient records exist"):
            _downgrade(owner, "0012")
        # One transaction: the later migrations undone on the way down come back too.
        assert current_revision(owner) == head
        assert _data_key_id_nullable(owner)
        assert _counts(owner) == before
    finally:
        owner.dispose()
