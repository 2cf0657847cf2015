"""Accounts remember the onboarding token that created them and their lifetime; sheet jobs.

Two nullable columns are added to accounts_mailaccount, which the dovecot_users view
reads: keep_sqlite_views drops and restores the view around them on SQLite (PostgreSQL
adds the columns in place, view and grants untouched). The view itself is unchanged.
"""

import django.db.models.deletion
import django.db.models.expressions
from django.conf import settings
from django.db import migrations, models

from portal.dbviews import keep_sqlite_views


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0003_mailbox_state'),
        ('providers', '0006_onboarding_tokens'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = keep_sqlite_views([
        migrations.AddField(
            model_name='mailaccount',
            name='expires_at',
            field=models.DateTimeField(blank=True, help_text='Temporary accounts: disabled at this moment and deleted a grace period later (accounts.services.lifetime). Empty: permanent.', null=True, verbose_name='lifetime ends'),
        ),
        migrations.AddField(
            model_name='mailaccount',
            name='onboarding_token',
            field=models.ForeignKey(blank=True, editable=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='accounts', to='providers.onboardingtoken'),
        ),
        migrations.CreateModel(
            name='SheetJob',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('account_ids', models.JSONField(default=list)),
                ('state', models.CharField(choices=[('queued', 'queued'), ('running', 'running'), ('done', 'ready to download'), ('failed', 'failed')], default='queued', max_length=10)),
                ('total', models.PositiveIntegerField(default=0)),
                ('done', models.PositiveIntegerField(default=0)),
                ('failed', models.PositiveIntegerField(default=0)),
                ('problems', models.TextField(blank=True)),
                ('content', models.BinaryField(null=True)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('updated_at', models.DateTimeField(auto_now=True)),
                ('expires_at', models.DateTimeField()),
                ('created_by', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'verbose_name': 'onboarding sheet',
                'ordering': ['-created_at'],
                'constraints': [models.CheckConstraint(condition=models.Q(('done__lte', django.db.models.expressions.CombinedExpression(models.F('total'), '-', models.F('failed')))), name='sheetjob_progress_within_total')],
            },
        ),
    ])
