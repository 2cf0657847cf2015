"""Provider.require_verified_email (in-band registration: email verification).

SQLite adds a column by rebuilding the table (create, copy, drop, rename), which it refuses
while a view (accounts' dovecot_users) names the table. So on SQLite every view is saved,
dropped around the change and re-created exactly as it was; PostgreSQL adds the column in
place and needs none of this.
"""

from django.db import migrations, models

_saved_views: list[str] = []


def drop_views(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT name, sql FROM sqlite_master WHERE type = 'view'")
        views = cursor.fetchall()
        _saved_views[:] = [sql for _name, sql in views]
        for name, _sql in views:
            cursor.execute(f'DROP VIEW "{name}"')


def restore_views(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    with schema_editor.connection.cursor() as cursor:
        for sql in _saved_views:
            cursor.execute(sql)
    _saved_views.clear()


class Migration(migrations.Migration):

    dependencies = [
        ('providers', '0001_initial'),
    ]

    operations = [
        migrations.RunPython(drop_views, restore_views),
        migrations.AddField(
            model_name='provider',
            name='require_verified_email',
            field=models.BooleanField(default=False, help_text='New accounts from the registration API stay pending until the code mailed to their email address is confirmed.', verbose_name='require a verified email address'),
        ),
        migrations.RunPython(restore_views, drop_views),
    ]
