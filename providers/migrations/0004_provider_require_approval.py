"""Provider.require_approval: new accounts wait for an administrator (RELIABILITY.md check 4).

SQLite rebuilds the table to add the column, which it refuses while accounts' dovecot_users
view names it: the views are kept around the change (portal/dbviews.py).
"""

from django.db import migrations, models

from portal.dbviews import keep_sqlite_views


class Migration(migrations.Migration):

    dependencies = [
        ('providers', '0003_suggestions'),
    ]

    operations = keep_sqlite_views([
        migrations.AddField(
            model_name='provider',
            name='require_approval',
            field=models.BooleanField(default=False, help_text='New accounts from the public front doors (registration pages, API, QR tokens) cannot log in anywhere until an administrator approves them in the account list.', verbose_name="require an administrator's approval"),
        ),
    ])
