"""Onboarding tokens (DCACCOUNT), and the approval help text.

A new table, plus a help text: wrapped in keep_sqlite_views all the same
(CONTRIBUTING.md), since the help text alters a field of providers_provider, which the
dovecot_users view reads.
"""

import django.core.validators
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from portal.dbviews import keep_sqlite_views


class Migration(migrations.Migration):

    dependencies = [
        ('providers', '0005_registration_pages'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = keep_sqlite_views([
        migrations.AlterField(
            model_name='provider',
            name='require_approval',
            field=models.BooleanField(default=False, help_text='New accounts from the public front doors (registration pages, API) cannot log in anywhere until an administrator approves them in the account list. QR onboarding tokens (DCACCOUNT) are refused for such a provider: they hand out credentials that must work at once.', verbose_name="require an administrator's approval"),
        ),
        migrations.CreateModel(
            name='OnboardingToken',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(help_text='For you: e.g. “spring workshop 2025”.', max_length=100, unique=True)),
                ('prefix', models.CharField(blank=True, help_text='New addresses are this prefix and random letters, e.g. tmp. gives tmp.k3x9qa7m2w.', max_length=32, verbose_name='address prefix')),
                ('token_sha256', models.CharField(editable=False, max_length=64, unique=True)),
                ('max_uses', models.PositiveIntegerField(default=1, help_text='How many accounts the code may create; 1 is a single-use invitation.', validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(100000)], verbose_name='maximum uses')),
                ('use_count', models.PositiveIntegerField(default=0, editable=False, verbose_name='uses so far')),
                ('expires_at', models.DateTimeField(blank=True, help_text='Empty: the code never expires.', null=True, verbose_name='valid until')),
                ('account_lifetime', models.DurationField(blank=True, help_text='Empty: the accounts are permanent. Otherwise each account is disabled this long after its creation, and deleted a grace period later.', null=True)),
                ('revoked_at', models.DateTimeField(blank=True, editable=False, null=True)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('updated_at', models.DateTimeField(auto_now=True)),
                ('created_by', models.ForeignKey(blank=True, editable=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('domain', models.ForeignKey(help_text='Accounts are created in this domain (hosted providers only).', on_delete=django.db.models.deletion.CASCADE, related_name='onboarding_tokens', to='providers.providerdomain')),
            ],
            options={
                'verbose_name': 'onboarding token',
                'ordering': ['-created_at'],
                'constraints': [models.CheckConstraint(condition=models.Q(('use_count__lte', models.F('max_uses'))), name='onboardingtoken_uses_within_max'), models.CheckConstraint(condition=models.Q(('max_uses__gte', 1)), name='onboardingtoken_max_uses_gte_1')],
            },
        ),
    ])
