"""The view the mail server reads (deploy/dovecot/): active accounts in Dovecot's form.

`password` is the stored argon2id hash with Django's "argon2" prefix replaced by Dovecot's
"{ARGON2ID}" scheme (accounts/passwords.py). Only active accounts with an argon2id hash are
listed, so a disabled or deleted account stops authenticating with its next login.
The same SQL runs on PostgreSQL and SQLite. PostgreSQL refuses to change the type of a
column a view uses: a later migration that alters these columns drops and re-creates it.
"""

from django.db import migrations

VIEW = """
CREATE VIEW dovecot_users AS
SELECT a.local_part || '@' || d.name AS username,
       a.local_part AS local_part,
       d.name AS domain,
       '{ARGON2ID}' || substr(a.password, 7) AS password,
       COALESCE(a.quota_mb, p.quota_mb) AS quota_mb
FROM accounts_mailaccount a
JOIN providers_providerdomain d ON d.id = a.domain_id
JOIN providers_provider p ON p.id = d.provider_id
WHERE a.status = 'active' AND a.password LIKE 'argon2$argon2id$%'
"""


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("providers", "0001_initial"),
    ]

    operations = [
        migrations.RunSQL(VIEW, reverse_sql="DROP VIEW dovecot_users"),
    ]
