"""PostgreSQL roles: what the application's role may do, and checks that it is not the owner.

Two roles (docs/deployment.md):

- the **owner** owns the schema: it runs migrations, grants, and creates organizations.
  Row-level security does not restrict it (the policies are ENABLEd, not FORCEd).
- the **application role** (``LABVAULT_DATABASE_URL``) logs in, is neither superuser nor
  BYPASSRLS nor the owner (nor a member of it), and holds only the privileges below, so
  every tenant-owned row it touches goes through the policies of migration 0008.

Privileges are derived from the live schema: every table with a ``tenant_id`` column gets
plain DML; every other table must be declared in :data:`APP_TABLE_PRIVILEGES`, or
:func:`grant_app_role` refuses (a new shared table needs a decision, not a default).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from sqlalchemy import Connection, text

TENANT_TABLE_PRIVILEGES: Final = ("SELECT", "INSERT", "UPDATE", "DELETE")
APP_TABLE_PRIVILEGES: Final[dict[str, tuple[str, ...]]] = {
    # The tenant list: read to find the deployment's organization. Inserting one is
    # harmless (an empty tenant holds nothing, and the policies compare ids, not names);
    # UPDATE and DELETE are not: deleting an organization would cascade through every
    # tenant table, and foreign-key cascades are not subject to row-level security.
    "organizations": ("SELECT", "INSERT"),
    # `labvault` checks that the schema is up to date before it serves.
    "alembic_version": ("SELECT",),
    # Append-only for the application: insert events, number pending ones (the policies
    # restrict that to seq IS NULL), never change their content, never delete.
    "audit_events": ("SELECT", "INSERT", "UPDATE (seq, leaf_hash, seal)"),
    "audit_tree_nodes": ("SELECT", "INSERT"),
    "audit_checkpoints": ("SELECT", "INSERT"),
    "audit_log_state": ("SELECT", "UPDATE (tree_size, sequenced_us)"),
}
_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class RoleError(Exception):
    """The application role is missing or unfit; the message says why and what to do."""


@dataclass(frozen=True)
class Grant:
    table: str
    privileges: tuple[str, ...]


def check_role_name(role: str) -> str:
    if not _ROLE_NAME.fullmatch(role):
        raise RoleError(
            f"{role!r} is not a plain role name (lowercase letters, digits, underscores)"
        )
    return role


def planned_grants(connection: Connection) -> list[Grant]:
    """The application role's privileges on every table of the current schema."""
    rows = connection.execute(
        text(
            "SELECT c.relname, bool_or(a.attname = 'tenant_id') "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
            "AND NOT a.attisdropped "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
            "GROUP BY c.relname ORDER BY c.relname"
        )
    ).all()
    grants, undeclared = [], []
    for table, has_tenant in rows:
        if table in APP_TABLE_PRIVILEGES:
            grants.append(Grant(table, APP_TABLE_PRIVILEGES[table]))
        elif has_tenant:
            grants.append(Grant(table, TENANT_TABLE_PRIVILEGES))
        else:
            undeclared.append(table)
    if undeclared:
        raise RoleError(
            "no privileges are declared for the shared table(s) "
            f"{', '.join(undeclared)}: add them to APP_TABLE_PRIVILEGES in "
            "labvault/core/db_roles.py"
        )
    return grants


def role_problems(connection: Connection, role: str) -> list[str]:
    """Why ``role`` would escape row-level security (empty: it would not)."""
    found = connection.execute(
        text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :role"),
        {"role": role},
    ).first()
    if found is None:
        return [f"the role {role} does not exist"]
    problems = []
    if found.rolsuper:
        problems.append(f"{role} is a superuser")
    if found.rolbypassrls:
        problems.append(f"{role} has BYPASSRLS")
    owned = connection.execute(
        text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
            "AND pg_has_role(:role, c.relowner, 'USAGE') ORDER BY c.relname LIMIT 3"
        ),
        {"role": role},
    ).scalars()
    names = list(owned)
    if names:
        problems.append(
            f"{role} owns (or inherits the owner of) {', '.join(names)}: "
            "row-level security does not apply to the owner"
        )
    return problems


def current_role_problems(connection: Connection) -> list[str]:
    """:func:`role_problems` for the connection's own role; nothing to say on SQLite."""
    if connection.dialect.name != "postgresql":
        return []
    role = connection.execute(text("SELECT current_user")).scalar_one()
    return role_problems(connection, str(role))


def grant_app_role(connection: Connection, role: str) -> list[Grant]:
    """Give ``role`` exactly the application's privileges (idempotent), as the owner.

    Refuses a role that would escape row-level security. Everything else it held on the
    schema's tables is revoked first, so re-running after a migration keeps it exact.
    """
    if connection.dialect.name != "postgresql":
        raise RoleError("database roles exist on PostgreSQL only")
    check_role_name(role)
    problems = role_problems(connection, role)
    if problems:
        hint = (
            f" (create it with: CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS "
            "NOCREATEDB NOCREATEROLE PASSWORD '...')"
            if problems[0].endswith("does not exist")
            else ""
        )
        raise RoleError("; ".join(problems) + hint)
    grants = planned_grants(connection)
    quoted = connection.dialect.identifier_preparer.quote(role)
    connection.execute(text(f"GRANT USAGE ON SCHEMA {_current_schema(connection)} TO {quoted}"))
    for grant in grants:
        table = connection.dialect.identifier_preparer.quote(grant.table)
        connection.execute(text(f"REVOKE ALL ON TABLE {table} FROM {quoted}"))
        privileges = ", ".join(grant.privileges)
        connection.execute(text(f"GRANT {privileges} ON TABLE {table} TO {quoted}"))
    return grants


def _current_schema(connection: Connection) -> str:
    schema = connection.execute(text("SELECT current_schema()")).scalar_one()
    return connection.dialect.identifier_preparer.quote(str(schema))
