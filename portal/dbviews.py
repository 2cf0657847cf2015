"""Migrations that change tables under a SQL view: drop it, change, re-create, keep its grants.

Two database facts make this necessary. SQLite changes most columns by rebuilding the table
(create, copy, drop, rename), which it refuses while a view names the table. PostgreSQL
refuses to change the type of a column a view uses, and a dropped view loses its grants:
the mail server's role (deploy/dovecot/README.md: `GRANT SELECT ON dovecot_users TO
dovecot`) would lose access after an upgrade. So a migration that touches such a table
wraps its operations:

    operations = around_view("dovecot_users", old_sql=OLD, new_sql=NEW, operations=[...])

Forwards it drops the view (remembering its grants on PostgreSQL), runs the operations,
creates `new_sql` and grants the same rights again; backwards the same with `old_sql`.

A migration of another app that only adds or changes columns of a table some view reads
(e.g. providers_provider) need not know the views:

    operations = keep_sqlite_views([...])

saves every view's SQL on SQLite, drops them around the operations and re-creates them
unchanged (PostgreSQL adds columns in place, views untouched).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.operations.base import Operation

# PostgreSQL's table privileges, the only words a re-issued GRANT may contain.
_PRIVILEGES = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"}
)


def view_grants(schema_editor: BaseDatabaseSchemaEditor, view: str) -> list[tuple[str, str]]:
    """(grantee, privilege) pairs granted on `view` to roles other than its owner.

    Empty on SQLite (no grants) and when the view does not exist. Grantees come back quoted
    as SQL identifiers (`regrole` output), PUBLIC as the keyword.
    """
    if schema_editor.connection.vendor != "postgresql":
        return []
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT CASE WHEN acl.grantee = 0 THEN 'PUBLIC' ELSE acl.grantee::regrole::text END,
                   acl.privilege_type
            FROM pg_class c, aclexplode(c.relacl) AS acl
            WHERE c.oid = to_regclass(%s) AND acl.grantee <> c.relowner
            ORDER BY 1, 2
            """,
            [view],
        )
        return [(str(grantee), str(privilege)) for grantee, privilege in cursor.fetchall()]


def drop_view(schema_editor: BaseDatabaseSchemaEditor, view: str) -> list[tuple[str, str]]:
    """Drop `view` if it exists; return its grants (see view_grants) to re-apply later."""
    grants = view_grants(schema_editor, view)
    schema_editor.execute(f"DROP VIEW IF EXISTS {schema_editor.quote_name(view)}")
    return grants


def create_view(
    schema_editor: BaseDatabaseSchemaEditor, view: str, sql: str, grants: Sequence[tuple[str, str]]
) -> None:
    """Run the CREATE VIEW `sql` and grant `grants` on `view` again."""
    schema_editor.execute(sql, params=None)  # None: a literal % in the SQL stays as it is
    for grantee, privilege in grants:
        if privilege not in _PRIVILEGES:
            raise ValueError(f"unexpected privilege {privilege!r} on {view}")
        # grantee is regrole output: already a quoted identifier (or PUBLIC).
        schema_editor.execute(f"GRANT {privilege} ON {schema_editor.quote_name(view)} TO {grantee}")


def around_view(
    view: str, *, old_sql: str, new_sql: str, operations: Sequence[Operation]
) -> list[Operation]:
    """`operations` wrapped in dropping and re-creating `view`, grants kept (module docstring)."""
    saved: list[tuple[str, str]] = []

    def drop(apps: Any, schema_editor: BaseDatabaseSchemaEditor) -> None:
        saved[:] = drop_view(schema_editor, view)

    def create_new(apps: Any, schema_editor: BaseDatabaseSchemaEditor) -> None:
        create_view(schema_editor, view, new_sql, saved)

    def create_old(apps: Any, schema_editor: BaseDatabaseSchemaEditor) -> None:
        create_view(schema_editor, view, old_sql, saved)

    return [
        migrations.RunPython(drop, create_old),
        *operations,
        migrations.RunPython(create_new, drop),
    ]


def keep_sqlite_views(operations: Sequence[Operation]) -> list[Operation]:
    """`operations` with every SQLite view dropped around them and restored unchanged."""
    saved: list[str] = []

    def drop_all(apps: Any, schema_editor: BaseDatabaseSchemaEditor) -> None:
        if schema_editor.connection.vendor != "sqlite":
            return
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT name, sql FROM sqlite_master WHERE type = 'view'")
            views = cursor.fetchall()
        saved[:] = [sql for _name, sql in views]
        for name, _sql in views:
            schema_editor.execute(f"DROP VIEW {schema_editor.quote_name(name)}")

    def restore_all(apps: Any, schema_editor: BaseDatabaseSchemaEditor) -> None:
        if schema_editor.connection.vendor != "sqlite":
            return
        for sql in saved:
            schema_editor.execute(sql, params=None)
        saved.clear()

    return [
        migrations.RunPython(drop_all, restore_all),
        *operations,
        migrations.RunPython(restore_all, drop_all),
    ]
