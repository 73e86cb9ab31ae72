"""The Alembic migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from labvault.core.db import create_db_engine
from labvault.core.migrate import current_revision, head_revision, is_up_to_date, upgrade
from labvault.models import Base

TENANT_OWNED = {
    "data_keys",
    "index_keys",
    "sites",
    "patients",
    "staff_members",
    "staff_sites",
    "accounts",
    "account_dependents",
    "appointments",
    "slot_claims",
    "preregistrations",
    "patient_documents",
    "identity_checks",
    "break_glass_grants",
    "security_alerts",
    "account_sessions",
    "one_time_codes",
    "totp_credentials",
    "recovery_codes",
    "known_devices",
    "webauthn_credentials",
    "exams",
    "site_schedules",
    "site_closures",
    "legal_holds",
    "sensitive_exam_codes",
    "service_clients",
    "service_client_sites",
    "service_tokens",
    "result_messages",
    "result_orders",
    "result_reports",
    "result_observations",
    "result_shares",
    "result_report_versions",
    "result_observation_versions",
    "read_budget_limits",
    "read_budget_reads",
    "honey_sets",
    "honey_marks",
    "anomaly_findings",
    "unlock_requests",
    "export_records",
}
AUDIT_POSITIONS = {"audit_tree_nodes", "audit_checkpoints", "audit_log_state"}
"""Keyed by position in the log (tree level and index, tree size): sequential by nature,
they identify no person and no object outside the log."""


def test_migrated_schema_matches_the_models(database_url: str) -> None:
    engine = create_db_engine(database_url)
    try:
        assert is_up_to_date(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_upgrade_is_idempotent(database_url: str) -> None:
    engine = create_db_engine(database_url)
    try:
        upgrade(engine)
        assert current_revision(engine) == head_revision(engine)
    finally:
        engine.dispose()


def test_every_tenant_owned_table_carries_tenant_id_and_random_ids(database_url: str) -> None:
    engine = create_db_engine(database_url)
    try:
        inspector = inspect(engine)
        tables = set(inspector.get_table_names()) - {"alembic_version"}
        assert tables == TENANT_OWNED | AUDIT_POSITIONS | {"organizations", "audit_events"}
        for table in TENANT_OWNED:
            columns = {c["name"]: c for c in inspector.get_columns(table)}
            assert "tenant_id" in columns, table
            assert columns["tenant_id"]["nullable"] is False, table
        for table in tables - AUDIT_POSITIONS:
            pk = inspector.get_pk_constraint(table)["constrained_columns"]
            for name in pk:
                type_name = str(
                    next(c["type"] for c in inspector.get_columns(table) if c["name"] == name)
                )
                assert type_name.upper() in {"UUID", "CHAR(32)"}, (table, name, type_name)
    finally:
        engine.dispose()
