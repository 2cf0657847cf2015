"""portal.dbviews: migrations that re-create the dovecot_users view keep it and its grants."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest
from django.core.management import call_command
from django.db import connection

from accounts.models import MailAccount, MailboxState
from accounts.services.accounts import create_account
from providers.models import Provider

PASSWORD = "Balcony-at-midnight-42"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def reader_role() -> Iterator[str]:
    """A PostgreSQL login role holding SELECT on dovecot_users, as the mail server's does."""
    if connection.vendor != "postgresql":
        pytest.skip("grants exist on PostgreSQL only; the SQLite view is checked below")
    role = f"mailportal_reader_{secrets.token_hex(4)}"  # roles are shared by the whole cluster
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {role} LOGIN")
        cursor.execute(f"GRANT SELECT ON dovecot_users TO {role}")
    yield role
    with connection.cursor() as cursor:
        cursor.execute(f"REVOKE ALL ON dovecot_users FROM {role}")
        cursor.execute(f"DROP ROLE {role}")


def view_sql() -> str:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_get_viewdef('dovecot_users'::regclass)")
        else:
            cursor.execute("SELECT sql FROM sqlite_master WHERE name = 'dovecot_users'")
        row = cursor.fetchone()
    return str(row[0]) if row else ""


def test_migrating_the_view_away_and_back_keeps_the_mail_servers_grant(reader_role: str) -> None:
    call_command("migrate", "accounts", "0002", verbosity=0)
    assert "mailbox_state" not in view_sql()
    call_command("migrate", "accounts", verbosity=0)

    assert "mailbox_state" in view_sql()
    with connection.cursor() as cursor:
        cursor.execute("SELECT has_table_privilege(%s, 'dovecot_users', 'SELECT')", [reader_role])
        assert cursor.fetchone() == (True,)


def test_migrating_the_view_away_and_back_restores_it_on_any_database(
    make_provider: Callable[..., Provider],
) -> None:
    call_command("migrate", "accounts", "0002", verbosity=0)
    call_command("migrate", "providers", "0002", verbosity=0)  # rebuilds a table under it
    call_command("migrate", verbosity=0)
    make_provider()
    for name in ("juliet", "romeo"):
        create_account(
            domain="example.org", local_part=name, password=PASSWORD, created_via="admin"
        )
    MailAccount.objects.filter(local_part="romeo").update(mailbox_state=MailboxState.CREATING)

    with connection.cursor() as cursor:
        cursor.execute("SELECT username, password FROM dovecot_users")
        rows = cursor.fetchall()

    assert [username for username, _hash in rows] == ["juliet@example.org"]
    assert rows[0][1].startswith("{ARGON2ID}$argon2id$")
