"""Mailbox state (creating / ready / deleting), the "awaiting approval" status, and the view.

Rows that exist already were created with their mailbox inside one transaction: they are
`ready`. New rows start as `creating` (accounts.services.accounts). dovecot_users now lists
only `ready` accounts; it is dropped around the table change and re-created with the mail
server's grants kept (portal/dbviews.py).
"""

from django.db import migrations, models

from portal.dbviews import around_view

OLD_VIEW = """
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

NEW_VIEW = """
CREATE VIEW dovecot_users AS
SELECT a.local_part || '@' || d.name AS username,
       a.local_part AS local_part,
       d.name AS domain,
       '{ARGON2ID}' || substr(a.password, 7) AS password,
       COALESCE(a.quota_mb, p.quota_mb) AS quota_mb
FROM accounts_mailaccount a
JOIN providers_providerdomain d ON d.id = a.domain_id
JOIN providers_provider p ON p.id = d.provider_id
WHERE a.status = 'active' AND a.mailbox_state = 'ready'
  AND a.password LIKE 'argon2$argon2id$%'
"""


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0002_dovecot_users_view'),
        ('providers', '0004_provider_require_approval'),
    ]

    operations = around_view(
        "dovecot_users",
        old_sql=OLD_VIEW,
        new_sql=NEW_VIEW,
        operations=[
            migrations.RemoveConstraint(
                model_name='mailaccount',
                name='mailaccount_status_valid',
            ),
            # Existing rows: ready. The default for new rows follows in the next operation.
            migrations.AddField(
                model_name='mailaccount',
                name='mailbox_state',
                field=models.CharField(choices=[('creating', 'being created'), ('ready', 'ready'), ('deleting', 'being deleted')], default='ready', max_length=10),
            ),
            migrations.AlterField(
                model_name='mailaccount',
                name='mailbox_state',
                field=models.CharField(choices=[('creating', 'being created'), ('ready', 'ready'), ('deleting', 'being deleted')], default='creating', max_length=10),
            ),
            migrations.AlterField(
                model_name='mailaccount',
                name='status',
                field=models.CharField(choices=[('active', 'active'), ('disabled', 'disabled'), ('pending', 'pending verification'), ('approval', 'awaiting approval')], default='active', max_length=10),
            ),
            migrations.AddIndex(
                model_name='mailaccount',
                index=models.Index(condition=models.Q(('mailbox_state', 'ready'), _negated=True), fields=['mailbox_state', 'updated_at'], name='mailaccount_unfinished'),
            ),
            migrations.AddConstraint(
                model_name='mailaccount',
                constraint=models.CheckConstraint(condition=models.Q(('status__in', ['active', 'disabled', 'pending', 'approval'])), name='mailaccount_status_valid'),
            ),
            migrations.AddConstraint(
                model_name='mailaccount',
                constraint=models.CheckConstraint(condition=models.Q(('mailbox_state__in', ['creating', 'ready', 'deleting'])), name='mailaccount_mailbox_state_valid'),
            ),
        ],
    )
